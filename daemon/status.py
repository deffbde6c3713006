"""The /status report: queue, in-flight jobs, lanes, recent failures and stuck jobs.

Built from what the lanes and the lifecycle expose (``LanePool.in_flight`` and
``summary``, ``Lifecycle.active`` and ``failures``); ``Service.status`` calls it.
File names come from droppers: they are shown as readable text, never raw bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from converters.base import Lane
from daemon.lifecycle import Lifecycle
from daemon.names import readable
from daemon.workers import LanePool

__all__ = ["status_report"]

# Phases of a job that is still waiting for (or in) a worker.
_CONVERTING = ("claiming", "claimed")


def status_report(
    identity: dict[str, Any],
    pools: Mapping[Lane, LanePool],
    lifecycle: Lifecycle,
    *,
    pending_in_inbox: int,
    stuck: Mapping[str, str],
) -> dict[str, Any]:
    active = lifecycle.active
    now = datetime.now(UTC)

    def age(job_id: str) -> float | None:
        """Seconds since the job's file was detected."""
        job = active.get(job_id)
        return round((now - job.record.detected_at).total_seconds(), 3) if job else None

    in_flight = []
    for pool in pools.values():
        for item in pool.in_flight():
            job = active.get(item.job_id)
            in_flight.append(
                {
                    "job_id": item.job_id,
                    "file": readable(job.record.relative_path) if job else None,
                    "lane": item.lane.value,
                    "worker_pid": item.worker_pid,
                    "running_seconds": item.running_seconds,
                    "age_seconds": age(item.job_id),
                }
            )
    running = {item["job_id"] for item in in_flight}
    waiting = [j for j in active.values() if j.id not in running]
    # A job being published or failed is done converting: it is not "queued".
    queued = [
        {"job_id": job.id, "file": readable(job.record.relative_path), "age_seconds": age(job.id)}
        for job in waiting
        if job.record.phase in _CONVERTING
    ]
    finishing = [
        {"job_id": job.id, "file": readable(job.record.relative_path), "phase": job.record.phase}
        for job in waiting
        if job.record.phase not in _CONVERTING
    ]
    return {
        **identity,
        "pending_in_inbox": pending_in_inbox,
        "queue": queued,
        "in_flight": in_flight,
        "finishing": finishing,
        "lanes": {lane.value: pool.summary() for lane, pool in pools.items()},
        "workers": {lane.value: pool.worker_stats() for lane, pool in pools.items()},
        "recent_successes": [vars(s) for s in reversed(lifecycle.successes)],
        "recent_failures": [vars(f) for f in reversed(lifecycle.failures)],
        # Jobs an unexpected error left in .state; recovery finishes them on restart.
        "stuck": [{"job_id": k, "file": v} for k, v in stuck.items()],
    }
