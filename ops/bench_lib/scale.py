"""Scale: many small files dropped at once into a fresh daemon.

Measures the time to drain them all, the peak resident memory of the main
process and of the workers (sampled from /proc, plus the kernel's high-water
marks), the main process's CPU time, and checks that every input was answered
exactly once (a sidecar in outbox/ or failed/, nothing left in the inbox or in
.state/jobs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ops.bench_lib import procfs
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.plan import Bench

__all__ = ["measure_scale"]

KIND = "html_small"  # the cheapest real route: the daemon's own costs dominate
SAMPLE_SECONDS = 0.25


def _names(folder: Path, suffix: str) -> set[str]:
    try:
        return {e.name[: -len(suffix)] for e in os.scandir(folder) if e.name.endswith(suffix)}
    except FileNotFoundError:
        return set()


def measure_scale(bench: Bench) -> dict[str, Any]:
    count = bench.plan.scale_files
    daemon = BenchDaemon(bench.folder("scale"), models_dir=bench.models_dir)
    bench.log(f"scale: starting a fresh daemon for {count} files")
    daemon.start()
    try:
        inbox = daemon.inbox / "to-md"
        inbox.mkdir(parents=True, exist_ok=True)
        staged = bench.corpus.copies(KIND, count, daemon.staging, "s")
        main_cpu_before = procfs.cpu_seconds(daemon.pid) or 0.0
        main_rss_idle = procfs.rss_mb(daemon.pid)
        bench.log(f"scale: renaming {count} files into the inbox at once")
        t0 = time.monotonic()
        for path in staged:
            os.rename(path, inbox / path.name)
        rename_seconds = time.monotonic() - t0
        peak_main = 0.0
        peak_workers: dict[int, float] = {}
        answered = 0
        last_progress = t0
        deadline = t0 + max(1800.0, count * 0.5)
        while time.monotonic() < deadline:
            rss = procfs.rss_mb(daemon.pid)
            peak_main = max(peak_main, rss or 0.0)
            for pid in daemon.worker_pids():
                peak_workers[pid] = max(peak_workers.get(pid, 0.0), procfs.rss_mb(pid) or 0.0)
            now_answered = daemon.answered("to-md")
            if now_answered != answered:
                answered, last_progress = now_answered, time.monotonic()
            if answered >= count:
                break
            if not daemon.alive():
                raise RuntimeError(f"daemon exited during the scale run:\n{daemon.tail()}")
            time.sleep(SAMPLE_SECONDS)
        drain_seconds = last_progress - t0
        hwm_main = procfs.peak_rss_mb(daemon.pid) or 0.0
        for pid in daemon.worker_pids():
            peak_workers[pid] = max(peak_workers.get(pid, 0.0), procfs.peak_rss_mb(pid) or 0.0)
        main_cpu = (procfs.cpu_seconds(daemon.pid) or 0.0) - main_cpu_before
        restarts = daemon.restarts()
    finally:
        daemon.stop()
    inputs = {p.name.rsplit(".", 1)[0] for p in staged}
    ok = _names(daemon.outbox / "to-md", ".md.meta.json")
    failed = _names(daemon.failed / "to-md", ".html.error.json")
    left_in_inbox = sum(1 for _ in os.scandir(inbox))
    left_in_state = sum(1 for _ in os.scandir(daemon.root / ".state" / "jobs"))
    lost = sorted(inputs - ok - failed)
    return {
        "route": "html->md",
        "input_kind": KIND,
        "files": count,
        "rename_seconds": round(rename_seconds, 3),
        "drain_seconds": round(drain_seconds, 2),
        "files_per_second": round(count / drain_seconds, 1) if drain_seconds > 0 else None,
        "succeeded": len(ok & inputs),
        "failed": len(failed & inputs),
        "lost": len(lost),
        "lost_examples": lost[:5],
        "left_in_inbox": left_in_inbox,
        "left_in_state": left_in_state,
        "main_rss_idle_mb": main_rss_idle,
        "main_rss_peak_sampled_mb": peak_main,
        "main_rss_peak_hwm_mb": hwm_main,
        "main_cpu_seconds": round(main_cpu, 2),
        "main_cpu_ms_per_file": round(1000 * main_cpu / count, 2),
        "worker_rss_peak_mb": sorted(peak_workers.values(), reverse=True),
        "worker_processes_seen": len(peak_workers),
        "worker_restarts": restarts,
        "sample_seconds": SAMPLE_SECONDS,
    }
