"""The loopback HTTP listener: /healthz, /readyz, /metrics and /status.

An aiohttp app factory with typed ``web.AppKey`` state. The readiness refresher
runs as a ``cleanup_ctx`` background task: it keeps the gauges current, sends
READY=1 to systemd the first time /readyz would pass, and STATUS= lines after.
Requests are not logged line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.names import readable
from daemon.readiness import Readiness

if TYPE_CHECKING:
    from daemon.service import Service

__all__ = ["READINESS", "SERVICE", "make_app", "status_payload"]

log = structlog.get_logger("sir_convert_a_lot.http")

SERVICE: web.AppKey[Service] = web.AppKey("service")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
REFRESH_SECONDS = 1.0


def _identity(service: Service) -> dict[str, Any]:
    return {
        "profile": service.settings.name,
        "revision": service.info.revision,
        "version": service.info.version,
        "started_at": service.started_at.isoformat(),
        "uptime_seconds": round((datetime.now(UTC) - service.started_at).total_seconds(), 3),
    }


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    age = time.monotonic() - service.heartbeat
    alive = age <= service.settings.heartbeat_timeout_seconds
    body = {
        "status": "ok" if alive else "wedged",
        "heartbeat_age_seconds": round(age, 3),
        **_identity(service),
    }
    return web.json_response(body, status=200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    ready, results = request.app[READINESS].evaluate()
    body = {
        "ready": ready,
        "reasons": [
            {"code": r.code, "message": r.message, "details": r.details}
            for r in results
            if not r.ok
        ],
        "checks": [r.as_dict() for r in results],
        **_identity(request.app[SERVICE]),
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request.app[READINESS].evaluate()
    payload = generate_latest(service.metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def status_payload(service: Service) -> dict[str, Any]:
    now = time.monotonic()
    in_flight = []
    for lane, pool in service.pools.items():
        for slot in pool.slots:
            if slot.job_id is not None and slot.busy_since is not None:
                job = service.lifecycle.active.get(slot.job_id)
                in_flight.append(
                    {
                        "job_id": slot.job_id,
                        "file": readable(job.record.relative_path) if job else None,
                        "lane": lane.value,
                        "worker_pid": slot.pid,
                        "running_seconds": round(now - slot.busy_since, 3),
                    }
                )
    running = {item["job_id"] for item in in_flight}
    waiting = [j for j in service.lifecycle.active.values() if j.id not in running]
    # A job being published or failed is done converting: it is not "queued".
    queued = [
        {"job_id": job.id, "file": readable(job.record.relative_path)}
        for job in waiting
        if job.record.phase in ("claiming", "claimed")
    ]
    finishing = [
        {"job_id": job.id, "file": readable(job.record.relative_path), "phase": job.record.phase}
        for job in waiting
        if job.record.phase not in ("claiming", "claimed")
    ]
    return {
        **_identity(service),
        "pending_in_inbox": len(service.tracker),
        "queue": queued,
        "in_flight": in_flight,
        "finishing": finishing,
        "lanes": {
            lane.value: {
                "workers": len(pool.slots),
                "warm": pool.warm,
                "queue_depth": pool.queue.qsize(),
                "outstanding": pool.outstanding,
            }
            for lane, pool in service.pools.items()
        },
        "recent_failures": [vars(f) for f in reversed(service.lifecycle.failures)],
        # Jobs an unexpected error left in .state; recovery finishes them on restart.
        "stuck": [{"job_id": k, "file": v} for k, v in service.stuck.items()],
    }


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_payload(request.app[SERVICE]))


def _refresh(service: Service, readiness: Readiness) -> None:
    """Re-run every check (which pauses or resumes intake), and tell systemd."""
    ready, _ = readiness.evaluate(force=True)
    if service.stopping.is_set():
        return  # STOPPING=1 and STATUS=draining were sent; say nothing that contradicts them
    summary = (
        f"{'ready' if ready else 'not ready'}; pending {len(service.tracker)}, "
        f"active {len(service.lifecycle.active)}"
    )
    if ready and not service.notifier.ready_sent:
        service.notifier.ready(summary)
    else:
        service.notifier.status(summary)


async def _refresher(app: web.Application) -> AsyncIterator[None]:
    service, readiness = app[SERVICE], app[READINESS]

    async def loop() -> None:
        while True:
            try:
                _refresh(service, readiness)
            except Exception:
                # One bad round must not end the loop: it also resumes intake and sends READY=1.
                log.exception("readiness_refresh_failed")
            await asyncio.sleep(REFRESH_SECONDS)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app[READINESS] = Readiness(service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.cleanup_ctx.append(_refresher)
    return app
