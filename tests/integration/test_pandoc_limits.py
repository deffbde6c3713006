"""pandoc's heap cap ends a job as ``resource_limit_exceeded`` (issue #10, content bombs).

200 KB of stacked emphasis openers exhaust pandoc's heap; that used to read
``converter_failed`` with pandoc's RTS message, although it is a memory limit
that fails the same way every time. The cap is lowered here so the bomb fails
in a second; the daemon's cap is ``PANDOC_HEAP_MB``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters import _pandoc
from converters.errors import ResourceLimitExceeded
from tests.fixtures.bombs import make_emphasis_md

pytestmark = pytest.mark.integration


def test_heap_exhaustion_is_a_resource_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pandoc, "PANDOC_HEAP_MB", 16)
    source = make_emphasis_md(tmp_path / "emphasis.md")
    with pytest.raises(ResourceLimitExceeded, match="16 MB heap") as caught:
        _pandoc.run_pandoc(["-f", "markdown", "-t", "html", source.name], cwd=tmp_path)
    assert caught.value.retryable is False


def test_a_normal_document_fits_the_same_small_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pandoc, "PANDOC_HEAP_MB", 16)
    (tmp_path / "ok.md").write_text("# Title\n\n*some* _emphasis_\n")
    html = _pandoc.run_pandoc(["-f", "markdown", "-t", "html", "ok.md"], cwd=tmp_path)
    assert "<em>some</em>" in html
