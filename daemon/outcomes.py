"""The end of a job: its sidecar, published (outbox/ or failed/) under one lock,
counted in the metrics and remembered for /status and the status page.

``Lifecycle`` decides *whether* a job succeeded; this module writes *what* that
means: the ``Sidecar`` (timings, converter, acceleration, reuse), the
``Publisher``'s durable renames (one job at a time), and the notes of recent
successes and failures.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from converters.base import AccelerationInfo, Lane
from converters.errors import NotRegularFile, SirError, UnsupportedRoute
from daemon.config import ProfileSettings
from daemon.jobs import Job
from daemon.layout import ResolvedRoute
from daemon.metrics import Metrics
from daemon.names import lossless_b64, readable
from daemon.publish import Publisher
from daemon.reuse import Reuse
from daemon.sidecar import (
    ConverterInfo,
    ErrorInfo,
    InputInfo,
    RouteInfo,
    ServiceInfo,
    Sidecar,
    Timings,
    error_details,
)
from daemon.wire import JobReply
from daemon.workers import LanePool

__all__ = ["FailureNote", "Outcomes", "SuccessNote"]

log = structlog.get_logger("sir_convert_a_lot.outcomes")


@dataclass(frozen=True)
class FailureNote:
    """A recent failure, for /status."""

    job_id: str
    relative_path: str
    code: str
    message: str
    at: str


@dataclass(frozen=True)
class SuccessNote:
    """A recent success, for /status and the status page."""

    job_id: str
    relative_path: str
    output: str
    route: str
    convert_seconds: float | None
    reused: bool
    at: str


class Outcomes:
    """Publishes jobs' results, one at a time (``lock``), and keeps the recent ones."""

    def __init__(
        self,
        settings: ProfileSettings,
        publisher: Publisher,
        *,
        reuse: Reuse,
        pools: dict[Lane, LanePool],
        metrics: Metrics,
        service: ServiceInfo,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.reuse = reuse
        self.pools = pools
        self.metrics = metrics
        self.service = service
        self.failures: collections.deque[FailureNote] = collections.deque(maxlen=50)
        self.successes: collections.deque[SuccessNote] = collections.deque(maxlen=50)
        self.lock = asyncio.Lock()
        # Told each job id whose outcome is published (the engine marks it done).
        self.settled: Callable[[str], None] | None = None

    async def finish_recorded(self, job: Job) -> None:
        """The remaining renames of a job whose publishing or failing was interrupted."""
        async with self.lock:
            if job.record.phase == "publishing":
                await asyncio.to_thread(self.publisher.finish_success, job)
            else:
                await asyncio.to_thread(self.publisher.finish_failure, job)
        log.info("job_finished_after_pause", job_id=job.id, phase=job.record.phase)

    def sidecar(
        self,
        job: Job,
        resolved: ResolvedRoute | None,
        started: datetime | None,
        status: str,
    ) -> Sidecar:
        now = datetime.now(UTC)
        started = job.taken_at or started
        queue_seconds = (started - job.record.detected_at).total_seconds() if started else None
        return Sidecar(
            status="succeeded" if status == "succeeded" else "failed",
            job_id=job.id,
            profile=self.settings.name,
            route=RouteInfo(source=resolved.source, target=resolved.target) if resolved else None,
            input=InputInfo(
                name=readable(job.record.relative.name),
                relative_path=readable(job.record.relative_path),
                relative_path_b64=lossless_b64(job.record.relative_path),
                sha256=job.record.input_sha256,
                size_bytes=job.record.input_size,
            ),
            timings=Timings(
                detected_at=job.record.detected_at,
                started_at=started,
                finished_at=now,
                queue_seconds=round(queue_seconds, 4) if queue_seconds is not None else None,
            ),
            service=self.service,
            attempts=max(1, job.record.attempts),
        )

    async def succeed(
        self,
        job: Job,
        resolved: ResolvedRoute,
        lane: Lane,
        reply: JobReply,
        started: datetime | None,
    ) -> None:
        route = resolved.route
        sidecar = self.sidecar(job, resolved, started, "succeeded")
        sidecar.timings.convert_seconds = reply.convert_seconds
        sidecar.input.pages = reply.pages
        sidecar.warnings = list(reply.warnings)
        sidecar.converter = ConverterInfo(name=str(reply.converter), versions=dict(reply.versions))
        info = self.pools[lane].ready_info()
        reused = self.reuse.hit(job)  # its final event is job_reused (announce.py)
        sidecar.reused_from = reused.reused_from if reused else None
        sidecar.acceleration = AccelerationInfo(
            policy=self.settings.gpu_policy,
            device=reply.device,
            runtime_kind=(info.runtime_kind if info else None) if lane is Lane.GPU else "none",
            device_name=info.device_name if info and reply.device == "cuda" else None,
        )
        if reply.worker_host is not None:  # converted by an engine worker node
            sidecar.service = sidecar.service.model_copy(update={"worker_host": reply.worker_host})
            sidecar.acceleration = sidecar.acceleration.model_copy(
                update={"runtime_kind": reply.runtime_kind, "device_name": reply.device_name}
            )
        output = job.work_dir / resolved.output_relative.name
        if reused is None:
            await self.reuse.keep(job, reply, sidecar.timings.finished_at, output)
        async with self.lock:
            await asyncio.to_thread(
                functools.partial(
                    self.publisher.stage_success,
                    pages=reply.pages_converted,
                    pdf_variant=reply.pdf_variant,
                ),
                job,
                output,
                resolved.output_relative,
                sidecar,
            )
            await asyncio.to_thread(self.publisher.finish_success, job)
        if self.settled is not None:
            self.settled(job.id)
        self.metrics.job_finished(route, "succeeded", "")
        if reused is None:  # a reused job converted nothing
            self.metrics.convert_seconds.labels(route).observe(reply.convert_seconds or 0.0)
            if reply.pages:
                self.metrics.pages.labels(route).inc(reply.pages)
        self.metrics.last_success.set(time.time())
        self.successes.append(
            SuccessNote(
                job.id,
                readable(job.record.relative_path),
                readable(job.record.output_relative or ""),
                route,
                reply.convert_seconds,
                reused is not None,
                datetime.now(UTC).isoformat(),
            )
        )

    async def fail(
        self,
        job: Job,
        error: SirError,
        resolved: ResolvedRoute | None,
        started: datetime | None,
    ) -> None:
        sidecar = self.sidecar(job, resolved, started, "failed")
        sidecar.error = ErrorInfo(
            code=error.code,
            message=readable(error.message),
            retryable=error.retryable,
            details=error_details(error.details),
        )
        async with self.lock:
            await asyncio.to_thread(self.publisher.stage_failure, job, sidecar)
            await asyncio.to_thread(self.publisher.finish_failure, job)
        if self.settled is not None:
            self.settled(job.id)
        route = resolved.route if resolved else "unknown"
        self.metrics.job_finished(route, "failed", error.code)
        if error.code in (NotRegularFile.code, UnsupportedRoute.code):
            self.metrics.files_refused.labels(error.code).inc()
        self.failures.append(
            FailureNote(
                job.id,
                readable(job.record.relative_path),
                error.code,
                readable(error.message),
                datetime.now(UTC).isoformat(),
            )
        )
