"""Scan cost with a big, idle inbox.

What is honest here: idle files that the daemon would convert are not idle
(they become jobs), so the idle files are ones the daemon keeps in the inbox on
purpose and never converts: images beside documents (``*.png``, an asset
extension). Every rescan still lists and stats each of them and runs the
ignore rules on each, which is the real cost of a big inbox of idle files.

Measured three ways:

* ``scan_inbox`` alone (the directory walk) on the tree, warm page cache;
* ``Service.rescan`` (walk and ignore rules in the helper process, the changes
  applied in the event loop) from this process, on the same tree: the first
  call (which records every ignored path), later ones, and the event-loop part
  alone;
* the real daemon started with the tree in its inbox: time until its listener
  answers (the start-up scan runs before it opens) against an empty inbox,
  main-process CPU while it rescans every few seconds, and pick-up latency of
  files renamed in meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from ops.bench_lib import procfs
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.drops import Observer
from ops.bench_lib.plan import Bench
from ops.bench_lib.stats import median, summary

__all__ = ["make_idle_tree", "measure_scan", "time_scan_inbox", "time_service_rescan"]

PER_FOLDER = 1000
DAEMON_RESCAN_SECONDS = 5.0


def make_idle_tree(inbox: Path, count: int) -> float:
    """``count`` empty ``*.png`` files in folders of 1000 under ``inbox``; seconds taken."""
    started = time.monotonic()
    for i in range(count):
        folder = inbox / "assets" / f"batch-{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img-{i:06d}.png").touch()
    return time.monotonic() - started


def time_scan_inbox(inbox: Path, reps: int) -> tuple[list[float], int]:
    from daemon.layout import normalize_extension
    from daemon.watcher import scan_inbox

    sources = {"pdf", "docx", "pptx", "xlsx", "html", "md", "htm", "markdown"}
    seconds: list[float] = []
    found = 0
    for _ in range(reps):
        started = time.monotonic()
        found = sum(
            1
            for _ in scan_inbox(
                inbox, lambda n: n.startswith("."), lambda n: normalize_extension(n) in sources
            )
        )
        seconds.append(time.monotonic() - started)
    return seconds, found


def time_service_rescan(root: Path, reps: int) -> dict[str, Any]:
    """The daemon's own ``Service.rescan`` on ``root/inbox``, with its helper process
    as the daemon runs it: the first call (the helper reports every ignored path),
    later calls, and of those the part that runs in the event loop (``apply_scan``:
    it holds up the supervisor's ticks while it runs)."""
    from daemon.config import ProfileSettings, Settings
    from daemon.intake import RESCAN_TIMEOUT_SECONDS
    from daemon.service import Service

    profile = ProfileSettings(name="eval", data_root=root, service_revision="bench")
    settings = Settings(profiles={"eval": profile})

    async def run() -> dict[str, Any]:
        service = Service(settings, profile)
        service.intake.start_scanner()
        try:
            started = time.monotonic()
            await service.intake.rescan()
            first = time.monotonic() - started
            later: list[float] = []
            in_loop: list[float] = []
            for _ in range(reps):
                started = time.monotonic()
                await service.intake.rescan()
                later.append(time.monotonic() - started)
                assert service.intake.scanner is not None
                reply, _ = await service.intake.scanner.scan(RESCAN_TIMEOUT_SECONDS)
                started = time.monotonic()
                service.intake.apply_scan(reply)
                in_loop.append(time.monotonic() - started)
        finally:
            await service.intake.stop_scanner()
        return {"first": first, "later": median(later), "in_loop": median(in_loop)}

    return asyncio.run(run())


def _latency_during_rescans(bench: Bench, daemon: BenchDaemon, drops: int) -> dict[str, Any]:
    observer = Observer(daemon)
    rng = random.Random(99)  # noqa: S311 (timing jitter, not secrets)
    data = bench.corpus.templates["html_small"].read_bytes()
    claims: list[float] = []
    try:
        for i in range(drops):
            name = f"scan-lat-{i:04d}.html"
            staged = daemon.staging / name
            staged.write_bytes(data)
            time.sleep(rng.uniform(0.0, 0.3))
            done = observer.rename_in([staged], "md")
            answer = observer.answer(name, "md", timeout=120)
            if answer.claimed_at is not None:
                claims.append(answer.claimed_at - done)
    finally:
        observer.close()
    return summary(claims)


def measure_scan(bench: Bench, *, empty_listening_seconds: float | None) -> dict[str, Any]:
    count = bench.plan.scan_files
    reps = max(3, bench.plan.reps)
    tree_root = bench.folder("scan/tree")
    bench.log(f"scan: creating {count} idle asset files")
    create_seconds = make_idle_tree(tree_root / "inbox", count)
    walk, found = time_scan_inbox(tree_root / "inbox", reps)
    bench.log("scan: Service.rescan in this process")
    rescan = time_service_rescan(tree_root, reps)
    later = rescan["later"]
    result: dict[str, Any] = {
        "idle_files": count,
        "idle_file_kind": "png images, assets kept in the inbox and never converted",
        "create_seconds": round(create_seconds, 2),
        "scan_inbox_seconds": round(median(walk), 3),
        "scan_inbox_entries": found,
        "service_rescan_first_seconds": round(rescan["first"], 3),
        "service_rescan_seconds": round(later, 3),
        "service_rescan_in_event_loop_seconds": round(rescan["in_loop"], 3),
        "service_rescan_us_per_file": round(1e6 * later / count, 2) if count else None,
        "service_rescan_100k_seconds_estimate": round(later * 100_000 / count, 2)
        if count
        else None,
        "reps": reps,
    }
    if bench.plan.name == "smoke":
        return result

    daemon = BenchDaemon(
        bench.folder("scan/daemon"),
        models_dir=bench.models_dir,
        extra=f"rescan_interval_seconds = {DAEMON_RESCAN_SECONDS}\n",
    )
    bench.log(f"scan: starting a daemon with {count} idle files in its inbox")
    make_idle_tree(daemon.inbox, count)
    daemon.start()
    try:
        cpu0, t0 = procfs.cpu_seconds(daemon.pid) or 0.0, time.monotonic()
        bench.log("scan: pick-up latency while the daemon rescans the idle files")
        during = _latency_during_rescans(bench, daemon, max(10, bench.plan.latency_renames // 2))
        window = max(0.0, 3 * DAEMON_RESCAN_SECONDS - (time.monotonic() - t0))
        time.sleep(window)
        cpu1, t1 = procfs.cpu_seconds(daemon.pid) or 0.0, time.monotonic()
        rss = procfs.rss_mb(daemon.pid)
    finally:
        daemon.stop()
    result["daemon"] = {
        "rescan_interval_seconds": DAEMON_RESCAN_SECONDS,
        "listening_seconds": round(daemon.listening_seconds or 0.0, 2),
        "listening_seconds_empty_inbox": round(empty_listening_seconds, 2)
        if empty_listening_seconds is not None
        else None,
        "ready_seconds": round(daemon.ready_seconds or 0.0, 2),
        "main_cpu_fraction": round((cpu1 - cpu0) / (t1 - t0), 3),
        "window_seconds": round(t1 - t0, 1),
        "main_rss_mb": rss,
        "pickup_to_claim_during_rescans": during,
    }
    return result
