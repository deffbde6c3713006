"""Worker memory over many jobs, with and without recycling.

Two fresh daemons get the same jobs (docx→md through docling and html→pdf
through WeasyPrint, alternating, both in the CPU lane): one never recycles its
workers, one recycles them after ``recycle_after_jobs``. The RSS of every
worker is sampled from /proc while the jobs drain, against the number of jobs
answered so far.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ops.bench_lib import procfs
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.plan import Bench

__all__ = ["measure_memory"]

NEVER = 1_000_000_000
SAMPLE_SECONDS = 0.2
MIX = (("docx_small", "to-md"), ("html_small", "to-pdf"))


def _cpu_lane(recycle: int) -> str:
    return (
        "[profiles.eval.cpu]\n"
        f"workers = 2\njob_timeout_seconds = 300\nrecycle_after_jobs = {recycle}\n"
    )


def _one(bench: Bench, label: str, recycle: int) -> dict[str, Any]:
    jobs = bench.plan.memory_jobs
    daemon = BenchDaemon(
        bench.folder(f"memory/{label}"), models_dir=bench.models_dir, extra=_cpu_lane(recycle)
    )
    bench.log(f"memory ({label}): {jobs} jobs, recycle_after_jobs = {recycle}")
    daemon.start()
    try:
        initial = {pid: procfs.cpu_seconds(pid) or 0.0 for pid in daemon.worker_pids()}
        warm = {pid: procfs.rss_mb(pid) for pid in initial}
        staged: list[tuple[str, str]] = []
        for kind, folder in MIX:
            (daemon.inbox / folder).mkdir(parents=True, exist_ok=True)
            for copy in bench.corpus.copies(kind, jobs // len(MIX), daemon.staging, f"m-{kind}"):
                staged.append((str(copy), folder))
        staged.sort(key=lambda item: os.path.basename(item[0]).rsplit("-", 1)[-1])
        for path, folder in staged:
            os.rename(path, daemon.inbox / folder / os.path.basename(path))
        samples: list[tuple[int, dict[int, float]]] = []
        deadline = time.monotonic() + max(900.0, jobs * 2.0)
        answered = 0
        while time.monotonic() < deadline and answered < len(staged):
            answered = sum(daemon.answered(folder) for _, folder in MIX)
            rss = {pid: procfs.rss_mb(pid) for pid in daemon.worker_pids()}
            samples.append((answered, {p: r for p, r in rss.items() if r is not None}))
            if not daemon.alive():
                raise RuntimeError(f"daemon exited:\n{daemon.tail()}")
            time.sleep(SAMPLE_SECONDS)
        # The GPU-lane worker gets none of these jobs: it is the first worker whose
        # CPU time did not grow. Everything else is a CPU-lane worker (or its successor).
        grown: dict[int, float] = {}
        for pid, cpu in initial.items():
            now = procfs.cpu_seconds(pid)
            # A worker that is gone was recycled: a CPU-lane worker.
            grown[pid] = now - cpu if now is not None else float("inf")
        idle = min(grown, key=lambda pid: grown[pid]) if grown else None
        restarts = daemon.restarts()
    finally:
        daemon.stop()
    cpu_samples = [(done, {p: r for p, r in rss.items() if p != idle}) for done, rss in samples]
    return _shape(
        label=label,
        recycle=recycle,
        jobs=jobs,
        answered=answered,
        warm=warm,
        idle_pid=idle,
        samples=cpu_samples,
        restarts=restarts,
    )


def _shape(
    *,
    label: str,
    recycle: int,
    jobs: int,
    answered: int,
    warm: dict[int, float | None],
    idle_pid: int | None,
    samples: list[tuple[int, dict[int, float]]],
    restarts: dict[str, float],
) -> dict[str, Any]:
    # One mark per fifth of the jobs: the largest CPU-worker RSS seen in that
    # window (a window max is not fooled by a worker sampled while starting).
    marks: list[dict[str, float | int]] = []
    # A worker still starting (below half the warm RSS) says nothing about growth.
    floor = 0.5 * max((v for k, v in warm.items() if k != idle_pid and v), default=0.0)
    usable = [
        (done, kept)
        for done, rss in samples
        if (kept := {p: r for p, r in rss.items() if r >= floor})
    ]
    low = 0
    for fraction in (0.2, 0.4, 0.6, 0.8, 1.0):
        high = int(jobs * fraction)
        window = [max(rss.values()) for done, rss in usable if low <= done <= high]
        if window:
            marks.append({"jobs_done": high, "max_worker_rss_mb": max(window)})
        low = high
    seen = {pid for _, rss in usable for pid in rss}
    peak = max((max(rss.values()) for _, rss in usable), default=0.0)
    first = float(marks[0]["max_worker_rss_mb"]) if marks else 0.0
    last = float(marks[-1]["max_worker_rss_mb"]) if marks else 0.0
    return {
        "label": label,
        "recycle_after_jobs": None if recycle >= NEVER else recycle,
        "jobs": jobs,
        "answered": answered,
        "cpu_worker_processes_seen": len(seen),
        "worker_restarts": restarts,
        "cpu_worker_rss_at_start_mb": sorted(
            (v for k, v in warm.items() if k != idle_pid and v is not None), reverse=True
        ),
        "gpu_worker_rss_mb": warm.get(idle_pid) if idle_pid is not None else None,
        "series": marks,
        "peak_worker_rss_mb": peak,
        "growth_mb": round(last - first, 1),
    }


def measure_memory(bench: Bench) -> dict[str, Any]:
    return {
        "route_mix": "docx->md (docling) and html->pdf (weasyprint), alternating, cpu lane",
        "sample_seconds": SAMPLE_SECONDS,
        "without_recycling": _one(bench, "no-recycle", NEVER),
        "with_recycling": _one(bench, "recycle", bench.plan.memory_recycle),
    }
