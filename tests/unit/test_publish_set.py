"""Publishing a set of artifacts: one collision suffix, the sidecar last, recovery completes it.

The real Publisher on a real data root; a crash is a move that raises part-way
(the process would have died there), after which recovery's call of
``finish_success`` must complete the set exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import pytest

from daemon import publish
from daemon.durable import tagged_name
from daemon.jobs import Job, JobStore
from daemon.layout import DataRoot
from daemon.publish import Publisher
from daemon.sidecar import InputInfo, ServiceInfo, Sidecar, Timings, companion_paths

MARKDOWN = "# Report\n\n![Image](report.images/figure-001.png)\n\nText.\n"


def _sidecar() -> Sidecar:
    now = datetime.now(UTC)
    return Sidecar(
        status="succeeded",
        job_id="20261130T000000-000000000000",
        profile="p",
        route=None,
        input=InputInfo(name="report.pdf", relative_path="report.pdf", sha256=None, size_bytes=1),
        timings=Timings(detected_at=now, finished_at=now),
        service=ServiceInfo(revision="r", host="h", version="v"),
    )


def _job(tmp_path: Path) -> tuple[DataRoot, Publisher, Job, Path]:
    root = DataRoot(tmp_path / "root")
    root.create()
    store = JobStore(root, "p", max_input_bytes=1 << 20)
    source = root.inbox / "to-md" / "report.pdf"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"%PDF-1.4 fake")
    levels = store.open_levels(PurePosixPath("to-md/report.pdf"))
    assert levels is not None
    job = store.claim(PurePosixPath("to-md/report.pdf"), levels[-1], datetime.now(UTC))
    for fd in levels:
        os.close(fd)
    assert job is not None
    job.work_dir.mkdir()
    output = job.work_dir / "report.md"
    output.write_text(MARKDOWN)
    companions = companion_paths(output)
    companions["images"].mkdir()
    (companions["images"] / "figure-001.png").write_bytes(b"\x89PNG fake picture")
    companions["json"].write_text('{"name": "report"}')
    companions["chunks"].write_text('{"text": "Text."}\n')
    return root, Publisher(root, store, delete_on_success=False), job, output


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_set_is_published_with_the_sidecar_listing_every_file(tmp_path: Path) -> None:
    root, publisher, job, output = _job(tmp_path)
    publisher.stage_success(job, output, PurePosixPath("to-md/report.md"), _sidecar(), pages=[1])
    publisher.finish_success(job)
    folder = root.outbox / "to-md"
    assert sorted(p.name for p in folder.iterdir()) == [
        "report.chunks.jsonl",
        "report.docling.json",
        "report.images",
        "report.md",
        "report.md.meta.json",
    ]
    car = json.loads((folder / "report.md.meta.json").read_text())
    listed = {a["path"]: a for a in car["output"]["artifacts"]}
    assert [a["kind"] for a in car["output"]["artifacts"]] == ["main", "images", "json", "chunks"]
    assert car["output"]["path"] == "to-md/report.md" == car["output"]["artifacts"][0]["path"]
    assert car["output"]["pages"] == [1]
    for relative, entry in listed.items():
        assert entry["sha256"] == _sha(root.outbox / relative)
        assert entry["size_bytes"] == (root.outbox / relative).stat().st_size
    assert "to-md/report.images/figure-001.png" in listed
    assert (folder / "report.md").read_text() == MARKDOWN
    assert (root.archive / "to-md" / "report.pdf").exists()
    assert not job.folder.exists()


def test_one_taken_name_moves_the_whole_set_to_one_suffix(tmp_path: Path) -> None:
    root, publisher, job, output = _job(tmp_path)
    taken = root.outbox / "to-md" / "report.images"
    taken.mkdir(parents=True)  # only the pictures' folder name is taken
    sidecar = _sidecar()
    publisher.stage_success(job, output, PurePosixPath("to-md/report.md"), sidecar)
    publisher.finish_success(job)
    folder = root.outbox / "to-md"
    assert {p.name for p in folder.iterdir()} >= {
        "report~2.md",
        "report~2.md.meta.json",
        "report~2.images",
        "report~2.docling.json",
        "report~2.chunks.jsonl",
    }
    assert not (folder / "report.md").exists() and not any(taken.iterdir())
    # The Markdown links the published folder, and the sidecar hashes that text.
    text = (folder / "report~2.md").read_text()
    assert "](report~2.images/figure-001.png)" in text
    car = json.loads((folder / "report~2.md.meta.json").read_text())
    assert car["output"]["sha256"] == _sha(folder / "report~2.md")
    assert "output_name_collision" in car["warnings"]


@pytest.mark.parametrize("crash_after", [1, 2, 3, 4])
def test_a_crash_between_moves_never_shows_a_sidecar_early_and_recovery_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_after: int
) -> None:
    root, publisher, job, output = _job(tmp_path)
    publisher.stage_success(job, output, PurePosixPath("to-md/report.md"), _sidecar())
    real_move = publish.durable_move
    moves: list[Path] = []

    def dying_move(src: Path, dst: Path) -> None:
        if len(moves) == crash_after:
            raise SystemExit("killed")  # the process dies before this rename
        real_move(src, dst)
        moves.append(dst)

    monkeypatch.setattr(publish, "durable_move", dying_move)
    with pytest.raises(SystemExit):
        publisher.finish_success(job)
    folder = root.outbox / "to-md"
    assert not (folder / "report.md.meta.json").exists()  # no commit marker yet
    monkeypatch.setattr(publish, "durable_move", real_move)

    # Recovery: the record says publishing; the remaining renames are done.
    again = JobStore(root, "p", max_input_bytes=1 << 20).load_all()
    assert [j.record.phase for j in again] == ["publishing"]
    Publisher(root, publisher.store, delete_on_success=False).finish_success(again[0])
    car = json.loads((folder / "report.md.meta.json").read_text())
    for entry in car["output"]["artifacts"]:
        assert entry["sha256"] == _sha(root.outbox / entry["path"])
    assert len(list(folder.iterdir())) == 5  # no ~2 twins
    assert not job.folder.exists()


def test_a_name_at_the_length_limit_still_publishes_its_set(tmp_path: Path) -> None:
    root, publisher, job, _ = _job(tmp_path)
    long_name = "é" * 100 + "x" * 50 + ".md"  # 253 bytes: its companions would not fit
    shutil.rmtree(job.work_dir)
    job.work_dir.mkdir()
    main = job.work_dir / long_name
    companions = companion_paths(main)
    main.write_text(f"![Image]({quote(companions['images'].name, safe='')}/figure-001.png)\n")
    companions["images"].mkdir()
    (companions["images"] / "figure-001.png").write_bytes(b"\x89PNG")
    companions["chunks"].write_text("{}\n")
    # The first name is taken: the set becomes ~2, its stem shorter than in work/.
    taken = root.outbox / "to-md" / tagged_name(long_name, 1, room=10)
    taken.parent.mkdir(parents=True, exist_ok=True)
    taken.write_text("an older result")
    publisher.stage_success(job, main, PurePosixPath(f"to-md/{long_name}"), _sidecar())
    publisher.finish_success(job)
    car_path = next((root.outbox / "to-md").glob("*~2.md.meta.json"))
    car = json.loads(car_path.read_text())
    names = [PurePosixPath(a["path"]).parts[1] for a in car["output"]["artifacts"]]
    assert all(len(os.fsencode(name)) <= 255 for name in [*names, car_path.name])
    published = root.outbox / car["output"]["path"]
    images = names[1]
    assert images.endswith("~2.images") and images != companions["images"].name
    assert f"]({quote(images, safe='')}/figure-001.png)" in published.read_text()
    for entry in car["output"]["artifacts"]:
        assert entry["sha256"] == _sha(root.outbox / entry["path"])
