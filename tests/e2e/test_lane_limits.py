"""Lane limits against the real daemon: wire caps and memory kills.

Finding 11: an error quoting a 20 MB token used to kill the slot that read it,
for good. Finding 10: a worker passing the memory ceiling *during* a job is
killed, the job ends ``resource_limit_exceeded`` after one attempt, and the
lane goes on. The content bombs, their budgets and the lane's fairness under
them are in test_content_bombs.py.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tests.e2e.chaos_support import FaultyDaemon

pytestmark = pytest.mark.e2e


def _png(width: int, height: int) -> bytes:
    """A blank RGB PNG: a few hundred KB on disk, width*height*3 bytes decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(width * 3)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def _good(daemon: FaultyDaemon, name: str) -> None:
    (daemon.inbox / "to-pdf").mkdir(parents=True, exist_ok=True)
    (daemon.inbox / "to-pdf" / f"{name}.md").write_text(f"# {name}\n\nStill converting.\n")
    car = daemon.sidecar(f"to-pdf/{name}.pdf", timeout=120)
    assert car["status"] == "succeeded"
    assert (daemon.outbox / "to-pdf" / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_an_error_quoting_a_huge_token_fails_the_job_and_the_lane_goes_on(
    tmp_path: Path,
) -> None:
    daemon = FaultyDaemon(tmp_path)
    daemon.start(wait_ready=False)
    daemon.wait_lane_warm("cpu")
    try:
        folder = daemon.inbox / "to-pdf"
        folder.mkdir(parents=True, exist_ok=True)
        token = "x" * (20 * 2**20)
        for i in range(3):  # more than the lane's slots: each one used to kill a slot
            (folder / f"viewbox-{i}.tmp").write_text(
                f'<html><body><p>hi</p><svg viewBox="0 0 {token} 10"><rect/></svg></body></html>'
            )
            (folder / f"viewbox-{i}.tmp").rename(folder / f"viewbox-{i}.html")
        for i in range(3):
            err = daemon.error(f"to-pdf/viewbox-{i}.html", timeout=240)
            assert err["error"]["code"] == "converter_failed", err
            assert err["attempts"] == 1
            assert "cut:" in err["error"]["message"]
            assert len(err["error"]["message"]) < 20_000
        _good(daemon, "after")
        _, body = daemon.get("/readyz")
        workers = next(c for c in body["checks"] if c["check"] == "workers")
        assert workers["ok"], workers
    finally:
        daemon.stop()


def test_a_worker_past_the_ceiling_during_a_job_is_killed_once(tmp_path: Path) -> None:
    # A warm CPU worker holds ~1.05 GB; decoding a 12,000 px square PNG adds ~1.1 GB.
    # No hard cap here: this is the watchdog's kill, not RLIMIT_DATA's.
    daemon = FaultyDaemon(
        tmp_path,
        extra_config=(
            "[profiles.eval.cpu]\nworkers = 1\nmemory_ceiling_mb = 1600\n"
            "hard_memory_factor = 0\nexpress_workers = 0\n"
        ),
    )
    daemon.start(wait_ready=False)
    daemon.wait_lane_warm("cpu")
    try:
        folder = daemon.inbox / "to-pdf" / "bomb"
        folder.mkdir(parents=True)
        (folder / "big.png").write_bytes(_png(12_000, 12_000))
        (folder / "page.html").write_text('<p>x</p><img src="big.png" style="width:10cm">')
        err = daemon.error("to-pdf/bomb/page.html", timeout=240)
        assert err["error"]["code"] == "resource_limit_exceeded", err
        assert err["error"]["retryable"] is False
        assert err["attempts"] == 1
        restarts = "sir_convert_a_lot_worker_restarts_total"
        kills = daemon.metric(restarts, lane="cpu", reason="memory")
        assert kills == 1
        _good(daemon, "after-memory")
    finally:
        daemon.stop()
