"""A multi-page PDF through the real daemon publishes a set: Markdown, pictures, JSON, chunks.

The layout model is the picture variant of the tiny test model (one picture
region a page). Long mode only: the chaos suite's short run already publishes
sets (docx → md with a picture, JSON and chunks) through the daemon.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.chaos_support import long_mode
from tests.fixtures.daemon import Daemon, sha
from tests.fixtures.office_docs import make_text_pdf

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not long_mode(), reason="long mode: SIR_CONVERT_A_LOT_TEST_LONG=1"),
]

OPTIONS = '[options]\npage_markers = true\nalso = ["json", "chunks"]\n'


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.timeout(300)
def test_a_pdf_publishes_its_set_and_a_second_one_takes_one_suffix(
    tmp_path: Path, docling_picture_artifacts: Path
) -> None:
    daemon = Daemon(tmp_path, models_dir=docling_picture_artifacts)
    staging = tmp_path / "staging"
    staging.mkdir()
    try:
        daemon.start()
        folder = daemon.inbox / "to-md" / "papers"
        folder.mkdir(parents=True)
        (folder / ".sir-convert-a-lot.toml").write_text(OPTIONS)
        for round_ in (1, 2):
            make_text_pdf(staging / "report.pdf", pages=3)
            os.replace(staging / "report.pdf", folder / "report.pdf")
            name = "report" if round_ == 1 else "report~2"
            car = daemon.sidecar(f"to-md/papers/{name}.md")
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()

    outbox = daemon.outbox / "to-md" / "papers"
    files = _listing(outbox)
    print("\n".join(files))
    print((outbox / "report.md.meta.json").read_text())
    first = json.loads((outbox / "report.md.meta.json").read_text())
    for car_ in (first, car):
        listed = [entry["path"] for entry in car_["output"]["artifacts"]]
        for entry in car_["output"]["artifacts"]:
            assert entry["sha256"] == sha(daemon.outbox / entry["path"])
        assert car_["output"]["pages"] == [1, 2, 3]
        kinds = [entry["kind"] for entry in car_["output"]["artifacts"]]
        assert kinds == ["main", "images", "images", "images", "json", "chunks"], listed
    # The second report takes one suffix for its whole set, links included.
    assert "report~2.images/figure-001.png" in files
    assert "report~2.docling.json" in files and "report~2.chunks.jsonl" in files
    text = (outbox / "report~2.md").read_text()
    assert "](report~2.images/figure-001.png)" in text
    assert text.startswith("<!-- page 1 -->")
    assert "output_name_collision" in car["warnings"]
    assert len(files) == 2 * 7  # md, 3 pictures, json, chunks, sidecar — twice
