"""The resident pandoc keeps the limits of a per-file one (issue #10, issue #13 part 2).

A content bomb (200 KB of stacked emphasis openers) under a lowered heap cap
ends ``resource_limit_exceeded`` or, when pandoc's GC thrashes at the cap
instead, ``timeout`` (the daemon's cap is ``PANDOC_HEAP_MB``). A pandoc that hangs is killed at
the time-out (``timeout``), one that dies mid-job ends it ``converter_failed``;
either way the next job gets a fresh process and succeeds, and one that died
while idle is replaced without the next job noticing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from converters.errors import ConverterFailed, ResourceLimitExceeded, SirError, Timeout
from converters.pandoc_resident import ResidentPandoc
from tests.fixtures.bombs import make_emphasis_md

pytestmark = pytest.mark.integration


@pytest.fixture
def pandoc() -> Iterator[ResidentPandoc]:
    resident = ResidentPandoc(heap_mb=16, timeout=60)
    try:
        yield resident
    finally:
        resident.close()


def _docx_of(pandoc: ResidentPandoc, text: str) -> bytes:
    return pandoc.to_docx(text, "markdown", lambda src: None)


def _document_xml(docx: bytes) -> str:
    with zipfile.ZipFile(BytesIO(docx)) as zf:
        return zf.read("word/document.xml").decode("utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until_dead(pid: int) -> None:
    """Until the kernel says the process is gone or a zombie (its parent reaps it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still running")


def test_a_content_bomb_ends_at_the_heap_cap_or_the_time_out(
    tmp_path: Path, pandoc: ResidentPandoc
) -> None:
    # Resident (``pandoc lua``), a bomb near the cap mostly makes pandoc's GC
    # thrash instead of failing at once as a per-file pandoc did: the time-out
    # ends it then. Either way the job ends with a stable code, never retried.
    source = make_emphasis_md(tmp_path / "emphasis.md")
    pandoc.timeout = 5
    with pytest.raises((ResourceLimitExceeded, Timeout)) as caught:
        _docx_of(pandoc, source.read_text(encoding="utf-8"))
    assert isinstance(caught.value, SirError) and caught.value.retryable is False
    pandoc.timeout = 60
    # the next job gets a fresh pandoc with the same small heap, and fits in it
    assert "some" in _document_xml(_docx_of(pandoc, "# Title\n\n*some* _emphasis_\n"))
    assert pandoc.starts == 2


def test_one_process_serves_job_after_job(pandoc: ResidentPandoc) -> None:
    for n in range(5):
        assert f"job {n}" in _document_xml(_docx_of(pandoc, f"job {n}\n"))
    html = pandoc.to_html("# A heading\n\ntext\n", "fallback")
    assert "<title>A heading</title>" in html
    assert pandoc.starts == 1


def test_a_hung_pandoc_times_out_and_is_replaced(pandoc: ResidentPandoc) -> None:
    _docx_of(pandoc, "warm\n")
    hung = pandoc.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # answers nothing from now on
    pandoc.timeout = 1
    try:
        with pytest.raises(Timeout):
            _docx_of(pandoc, "never answered\n")
    finally:
        if _alive(hung):
            os.kill(hung, signal.SIGKILL)
    assert not _alive(hung)  # killed and reaped, not left stopped
    pandoc.timeout = 60
    assert "again" in _document_xml(_docx_of(pandoc, "again\n"))
    assert pandoc.pid != hung


def test_a_pandoc_that_dies_mid_job_fails_the_job_and_is_replaced(
    pandoc: ResidentPandoc,
) -> None:
    _docx_of(pandoc, "warm\n")
    doomed = pandoc.pid
    assert doomed is not None
    os.kill(doomed, signal.SIGSTOP)  # the job is sent, then pandoc is killed under it
    timer = threading.Timer(0.5, os.kill, (doomed, signal.SIGKILL))
    timer.start()
    try:
        with pytest.raises(ConverterFailed, match="pandoc exited -9"):
            _docx_of(pandoc, "killed under way\n")
    finally:
        timer.join()
    assert "next" in _document_xml(_docx_of(pandoc, "next\n"))
    assert pandoc.pid != doomed


def test_a_pandoc_that_died_while_idle_is_replaced_silently(pandoc: ResidentPandoc) -> None:
    _docx_of(pandoc, "warm\n")
    gone = pandoc.pid
    assert gone is not None
    os.kill(gone, signal.SIGKILL)
    _wait_until_dead(gone)
    assert "fine" in _document_xml(_docx_of(pandoc, "fine\n"))
    assert pandoc.pid != gone
    assert pandoc.starts == 2
