"""The ingest side without a database: the size cap, and the drop-folder snapshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from converters.base import Lane
from daemon.config import ProfileSettings
from daemon.errors import InputTooLargeForEngine
from daemon.metrics import Metrics
from daemon.wire import JobRequest

pytest.importorskip("procrastinate")

pytestmark = pytest.mark.unit


def _pool(tmp_path: Path, cap: int):  # type: ignore[no-untyped-def]
    from daemon.engine.ingest import make_engine_pools

    profile = ProfileSettings(
        name="eval",
        data_root=tmp_path / "root",
        engine_url="postgresql://sca@db.invalid/sca",
        local_lanes=(Lane.CPU,),
        engine_max_input_bytes=cap,
    )
    _client, pools = make_engine_pools(profile, Metrics("eval"))
    assert set(pools) == {Lane.GPU, Lane.CPU}
    return pools[Lane.GPU]


def test_an_input_over_the_engine_cap_fails_with_its_own_code(tmp_path: Path) -> None:
    source = tmp_path / "big.pdf"
    source.write_bytes(b"%PDF" + b"0" * 100)
    job = JobRequest(
        job_id="j", source="pdf", target="md", input_path=str(source), output_path="o.md"
    )
    with pytest.raises(InputTooLargeForEngine) as caught:
        _pool(tmp_path, 50)._read(job, None)
    assert caught.value.code == "input_too_large_for_engine"
    assert caught.value.details == {"size": 104, "limit": 50}
    data, drop = _pool(tmp_path, 1000)._read(job, None)
    assert data == source.read_bytes() and drop == {}


def test_the_snapshot_reads_assets_beneath_the_folder_only(tmp_path: Path) -> None:
    from daemon.engine.snapshot import read_snapshot, write_snapshot

    folder = tmp_path / "drop"
    (folder / "img" / "deep" / "deeper").mkdir(parents=True)
    (folder / "doc.md").write_text("# doc")
    (folder / "img" / "a.png").write_bytes(b"png-a")
    (folder / "img" / "deep" / "b.css").write_bytes(b"css")
    (folder / "img" / "deep" / "deeper" / "c.png").write_bytes(b"too deep")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    os.link(folder / "img" / "a.png", folder / "hard.png")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        snap = read_snapshot(fd, ("png", "css"), budget=1000)
        small = read_snapshot(fd, ("png", "css"), budget=4)
    finally:
        os.close(fd)
    # No link followed, no hard-linked file, not the document, two levels only.
    assert snap == {"img/deep/b.css": b"css"}
    assert small == {"img/deep/b.css": b"css"}
    out = tmp_path / "rebuilt"
    out.mkdir()
    write_snapshot(out, {**snap, "../escape.png": b"x", "/abs.png": b"y"})
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "img/deep/b.css"
    ]
    assert not (tmp_path / "escape.png").exists()


def test_a_local_lane_spills_to_the_engine_only_when_its_slots_are_busy(tmp_path: Path) -> None:
    from daemon.engine.ingest import make_engine_pools
    from daemon.engine.spill import SpillPool
    from daemon.wire import Hello
    from daemon.workers import LanePool

    profile = ProfileSettings(
        name="eval",
        data_root=tmp_path / "root",
        engine_url="postgresql://sca@db.invalid/sca",
        engine_max_outstanding=2,
        cpu={"workers": 2, "express_workers": 0},  # type: ignore[arg-type]
    )
    assert profile.engine_lanes == ()  # both lanes local: the engine takes the overflow
    metrics = Metrics("eval")
    _client, remote = make_engine_pools(profile, metrics)
    hello = Hello(lane=Lane.CPU, gpu_policy="cpu", limits=profile.limits)
    local = LanePool(profile.cpu, hello, metrics, profile.queue_size)
    pool = SpillPool(local, remote[Lane.CPU])
    assert pool.prefers_local()
    local.outstanding = 2  # both local slots busy
    assert not pool.prefers_local()
    remote[Lane.CPU].outstanding = 2  # and the engine's share is full: queue locally
    assert pool.prefers_local()
    assert pool.has_room() and pool.summary()["engine"]["engine"] is True  # type: ignore[index]
