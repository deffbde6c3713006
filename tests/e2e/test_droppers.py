"""A hostile dropper against one real daemon: one regression test per finding of
the dropper audit (docs/security.md, "What a dropper tried").

The daemon runs with a 1.5 s pause between claim and dispatch (the ``dispatch``
fault point), so each swap a dropper makes after the claim lands while the job
waits, deterministically. Every test ends by checking that the daemon is still
healthy and converts a good file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from tests.e2e.chaos_support import FaultyDaemon

pytestmark = pytest.mark.e2e

DISPATCH_PAUSE = 1.5
SECRET_TEXT = "SECRET-PAYROLL-4711 never leaves its folder"


@dataclass
class Setup:
    daemon: FaultyDaemon
    base: Path
    secret_dir: Path  # outside the data root, the dropper cannot write here

    @property
    def secret(self) -> Path:
        return self.secret_dir / "secret.txt"

    def wait_gone(self, path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while os.path.lexists(path):
            assert time.monotonic() < deadline, f"{path} was never claimed"
            time.sleep(0.01)

    def good_file_converts(self, name: str) -> None:
        """The daemon is healthy, ready, and converts a file dropped now."""
        d = self.daemon
        src = self.base / name
        src.write_text(f"# {name}\n\nStill converting.\n")
        os.replace(src, d.inbox / "to-docx" / name)
        car = d.sidecar(f"to-docx/{Path(name).stem}.docx", timeout=120)
        assert car["status"] == "succeeded"
        assert d.get("/healthz")[0] == 200
        d.wait_ready(timeout=180)
        assert d.metric("sir_convert_a_lot_internal_errors_total") == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("droppers")
    secret_dir = base / "elsewhere"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_text(SECRET_TEXT + "\n")
    (secret_dir / "payroll.html").write_text(f"<!doctype html><p>{SECRET_TEXT}</p>\n")
    daemon = FaultyDaemon(
        base,
        models_dir=tiny_models_dir,
        env={"SIR_CONVERT_A_LOT_FAULTS": json.dumps({"delay": {"dispatch": DISPATCH_PAUSE}})},
    )
    daemon.start()
    yield Setup(daemon, base, secret_dir)
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.kill()


def _pdf_text_and_attachments(path: Path) -> str:
    doc = pdfium.PdfDocument(str(path))
    try:
        text = "".join(page.get_textpage().get_text_range() for page in doc)
        raw = path.read_bytes().decode("latin-1")
        return text + raw
    finally:
        doc.close()


def test_1_swapped_drop_folder_cannot_leak_a_file_into_a_pdf(setup: Setup) -> None:
    """Finding 1: the drop folder is swapped for a symlink after the claim."""
    d = setup.daemon
    folder = d.inbox / "to-pdf" / "x.tmp"
    folder.mkdir()
    evil = folder / "evil.html"
    staged = setup.base / "evil.html"
    staged.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<link rel='attachment' href='file://{setup.secret}'>"
        "<link rel='attachment' href='secret.txt'></head>"
        "<body><h1>Invoice</h1><img src='secret.txt'></body></html>"
    )
    os.replace(staged, evil)
    setup.wait_gone(evil)
    folder.rmdir()
    folder.symlink_to(setup.secret_dir)  # x.tmp -> a folder the dropper cannot read
    car = d.sidecar("to-pdf/x.tmp/evil.pdf")
    assert car["status"] == "succeeded"
    assert SECRET_TEXT not in _pdf_text_and_attachments(d.outbox / "to-pdf/x.tmp/evil.pdf")
    assert "local_resource_blocked" in car["warnings"]
    setup.good_file_converts("after-1.md")


def test_2_claim_through_a_swapped_parent_moves_nothing_from_elsewhere(setup: Setup) -> None:
    """Finding 2: a folder swapped for a symlink while its file settles."""
    d = setup.daemon
    # another user's archived original, and a file outside the data root
    victim_archive = d.archive / "to-md" / "hr"
    victim_archive.mkdir(parents=True)
    (victim_archive / "payroll.html").write_text(f"<p>{SECRET_TEXT} (archived)</p>\n")
    for label, target in (("outside", setup.secret_dir), ("archive", victim_archive)):
        folder = d.inbox / "to-md" / f"att-{label}.tmp"
        folder.mkdir()
        with (folder / "payroll.html").open("w") as fh:  # written in place: it settles
            fh.write("<p>harmless</p>\n")
        folder.rename(folder.with_name(f"att-{label}.old"))
        folder.symlink_to(target)
    time.sleep(4 * 0.5 + 2)  # several settle windows and a rescan
    assert (setup.secret_dir / "payroll.html").read_text().startswith("<!doctype html>")
    assert (victim_archive / "payroll.html").is_file()
    assert not list(d.outbox.rglob("att-*.tmp/payroll.md"))
    # the real file, in the folder it really is in, is converted where it is
    car = d.sidecar("to-md/att-outside.old/payroll.md")
    assert car["input"]["relative_path"] == "to-md/att-outside.old/payroll.html"
    setup.good_file_converts("after-2.md")


def test_3_non_utf8_names_convert_and_keep_their_bytes(setup: Setup) -> None:
    """Finding 3: a Latin-1 name once killed the supervisor for good."""
    d = setup.daemon
    src = setup.base / "latin1-source.md"
    src.write_text("# Café\n\nOlé.\n")
    inbox = os.fsencode(d.inbox / "to-docx")
    os.rename(src, inbox + b"/caf\xe9.md")
    out = os.fsencode(d.outbox / "to-docx") + b"/caf\xe9.docx"
    deadline = time.monotonic() + 60
    while not os.path.exists(out + b".meta.json"):
        assert time.monotonic() < deadline, d.tail()
        time.sleep(0.05)
    car = json.loads(Path(os.fsdecode(out + b".meta.json")).read_text())
    assert car["status"] == "succeeded"
    assert base64.b64decode(car["input"]["relative_path_b64"]) == b"to-docx/caf\xe9.md"
    assert car["input"]["name"] == "caf\ufffd.md"
    assert base64.b64decode(car["output"]["path_b64"]) == b"to-docx/caf\xe9.docx"
    archived = os.fsencode(d.archive / "to-docx") + b"/caf\xe9.md"
    while not os.path.exists(archived):  # archived right after the sidecar is published
        assert time.monotonic() < deadline, d.tail()
        time.sleep(0.05)
    setup.good_file_converts("after-3a.md")


def test_3_folder_replaced_by_a_file_while_settling(setup: Setup) -> None:
    """Finding 3: a folder replaced by a plain file while its file settles."""
    d = setup.daemon
    folder = d.inbox / "to-docx" / "d"
    folder.mkdir()
    (folder / "x.md").write_text("# In d\n")
    folder.rename(folder.with_name("d-moved"))
    folder.write_text("now a file")  # d is a plain file: d/x.md is ENOTDIR
    car = d.sidecar("to-docx/d-moved/x.docx", timeout=60)
    assert car["status"] == "succeeded"
    time.sleep(1.0)
    setup.good_file_converts("after-3b.md")


OPTION_FILES = {
    "dangling": None,  # a symlink with a 300-byte target
    "long-name": f'[options]\nstylesheet = "{"s" * 300}.css"\n',
    "nul": '[options]\nstylesheet = "a\\u0000b.css"\n',
    "deep": "[options]\nocr = " + "[" * 3000 + "]" * 3000 + "\n",
    "sparse": None,  # a sparse 2 GiB file
    "fifo": None,
}


def test_4_5_hostile_options_files_fail_only_their_jobs(setup: Setup) -> None:
    """Findings 4 and 5: every bad options file is options_invalid for the jobs
    below it; nothing is swallowed; the event loop never reads a giant file."""
    d = setup.daemon
    for label, body in OPTION_FILES.items():
        folder = d.inbox / "to-pdf" / f"opt-{label}"
        folder.mkdir()
        options = folder / ".sir-convert-a-lot.toml"
        if label == "dangling":
            options.symlink_to("x" * 300)
        elif label == "sparse":
            with options.open("wb") as fh:
                fh.truncate(2 * 1024**3)
        elif label == "fifo":
            os.mkfifo(options)
        else:
            assert body is not None
            options.write_text(body)
    rss_before = _rss_mb(d)
    for label in OPTION_FILES:
        staged = setup.base / f"opt-{label}.md"
        staged.write_text(f"# Options {label}\n")
        os.replace(staged, d.inbox / "to-pdf" / f"opt-{label}" / "doc.md")
    for label in OPTION_FILES:
        status, _ = d.get("/healthz")
        assert status == 200
        err = d.error(f"to-pdf/opt-{label}/doc.md", timeout=60)
        assert err["error"]["code"] == "options_invalid", (label, err["error"])
    assert _rss_mb(d) < rss_before + 100
    assert d.status()["stuck"] == []
    setup.good_file_converts("after-4.md")


def _rss_mb(d: FaultyDaemon) -> float:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _reference_docx(path: Path, marker: str) -> None:
    """pandoc's default reference docx with ``marker`` in its styles."""
    from converters._pandoc import pandoc_path

    raw = subprocess.run(
        [pandoc_path(), "--print-default-data-file", "reference.docx"],
        check=True,
        capture_output=True,
    ).stdout
    staging = path.with_suffix(".zip")
    staging.write_bytes(raw)
    with zipfile.ZipFile(staging) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "word/styles.xml":
                data = data.replace(b'w:styleId="Title"', f'w:styleId="{marker}"'.encode())
            zout.writestr(info, data)
    staging.unlink()


def test_6_a_file_named_by_the_options_is_copied_at_claim(setup: Setup) -> None:
    """Finding 6: reference_docx swapped for a symlink after the claim."""
    d = setup.daemon
    folder = d.inbox / "to-docx" / "styled"
    styles = folder / ".styles"  # a hidden folder: never picked up as a job
    styles.mkdir(parents=True)
    _reference_docx(styles / "ref.docx", "DropperOwnStyle")
    _reference_docx(setup.secret_dir / "other.docx", "SomeoneElsesStyle")
    (folder / ".sir-convert-a-lot.toml").write_text(
        '[options]\nreference_docx = ".styles/ref.docx"\n'
    )
    staged = setup.base / "styled.md"
    staged.write_text("# Styled\n\nBody.\n")
    os.replace(staged, folder / "doc.md")
    setup.wait_gone(folder / "doc.md")
    time.sleep(0.3)  # the claim's copy is done; the job waits DISPATCH_PAUSE
    (styles / "ref.docx").unlink()
    (styles / "ref.docx").symlink_to(setup.secret_dir / "other.docx")
    car = d.sidecar("to-docx/styled/doc.docx")
    assert car["status"] == "succeeded"
    with zipfile.ZipFile(d.outbox / "to-docx/styled/doc.docx") as z:
        styles = z.read("word/styles.xml")
    assert b"DropperOwnStyle" in styles
    assert b"SomeoneElsesStyle" not in styles
    setup.good_file_converts("after-6.md")


def test_7_hard_linked_resource_is_not_read(setup: Setup) -> None:
    """Finding 7: a resource hard-linked to a secret is refused like an input."""
    d = setup.daemon
    folder = d.inbox / "to-pdf" / "linked"
    folder.mkdir()
    os.link(setup.secret, folder / "sec.css")
    staged = setup.base / "linked.html"
    staged.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<link rel='attachment' href='sec.css'><link rel='stylesheet' href='sec.css'>"
        "</head><body><p>Linked</p></body></html>"
    )
    os.replace(staged, folder / "doc.html")
    car = d.sidecar("to-pdf/linked/doc.pdf")
    assert "local_resource_blocked" in car["warnings"]
    assert SECRET_TEXT not in _pdf_text_and_attachments(d.outbox / "to-pdf/linked/doc.pdf")
    setup.good_file_converts("after-7.md")


def test_9_status_escapes_names(setup: Setup) -> None:
    """Finding 9: a name with terminal escape sequences is shown as text."""
    d = setup.daemon
    name = "evil\x1b]0;owned\x07\x1b[2J.md"
    staged = setup.base / "escape.md"
    staged.write_bytes(b"")  # empty: it fails, and shows up in recent failures
    os.replace(staged, d.inbox / "to-docx" / name)
    d.error(f"to-docx/{name}", timeout=60)
    env = d.env()
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--profile", "eval"],
        env=env,
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert b"\x1b" not in done.stdout and b"\x07" not in done.stdout
    assert b"evil\\x1b]0;owned\\x07\\x1b[2J.md" in done.stdout


def test_8_planted_job_records_never_steer_the_daemon(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    """Finding 8: a job record that names a path outside the data root is
    quarantined, never followed; .state is the daemon's alone."""
    d = FaultyDaemon(tmp_path, models_dir=tiny_models_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d.layout.create()
    d.layout.adopt("eval")
    job_id = "20260101T000000-0123456789ab"
    folder = d.layout.jobs / job_id
    (folder / "input").mkdir(parents=True)
    (folder / "input" / "x.md").write_text("# planted\n")
    (folder / "sidecar.json").write_text("{}")
    (folder / "job.json").write_text(
        json.dumps(
            {
                "job_id": job_id,
                "profile": "eval",
                "relative_path": "x.md",
                "phase": "failing",
                "detected_at": "2026-01-01T00:00:00Z",
                "failed_relative": "../../elsewhere/x.md",
            }
        )
    )
    d.start()
    try:
        assert list(elsewhere.iterdir()) == []
        assert not (d.layout.jobs / job_id).exists()
        quarantined = list((d.layout.state / "quarantine").iterdir())
        assert len(quarantined) == 1 and (quarantined[0] / "input" / "x.md").is_file()
        assert (d.layout.state.stat().st_mode & 0o777) == 0o700
        assert not list(d.failed.rglob("*"))
        src = tmp_path / "ok.md"
        src.write_text("# ok\n")
        os.replace(src, d.inbox / "to-docx" / "ok.md")
        assert d.sidecar("to-docx/ok.docx")["status"] == "succeeded"
    finally:
        d.kill()
    shutil.rmtree(tmp_path / "eval-root", ignore_errors=True)
