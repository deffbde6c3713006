"""A job's events, as the lifecycle tells them to the journal (``daemon/events``).

Event ids are derived from the job id and what happened, so recovery may call
the same method again after a crash: ``Journal.append_once`` keeps one ``seq``
per event. Final events are written by ``Publisher`` right after the sidecar's
rename is durable and *before* the job folder is removed, so a crash between
the two leaves the job in .state, where recovery finds it and writes the event
it may lack.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog

from converters.errors import SirError
from daemon.events import EventKind, Journal
from daemon.jobs import Job
from daemon.layout import DataRoot
from daemon.names import readable
from daemon.sidecar import ERROR_SUFFIX, META_SUFFIX

__all__ = ["JobAnnouncer", "StateAnnouncer", "event_id"]

log = structlog.get_logger("sir_convert_a_lot.announce")


def event_id(job_id: str, kind: EventKind, attempt: int | None = None) -> str:
    """The id of one occurrence: the same whenever it is written again."""
    return f"{job_id}:{kind}" + (f":{attempt}" if attempt is not None else "")


class JobAnnouncer:
    """Writes the events of jobs; does nothing without a journal (``check``, ``convert``)."""

    def __init__(
        self, root: DataRoot, journal: Journal | None, default_targets: Mapping[str, str]
    ) -> None:
        self.root = root
        self.journal = journal
        self.default_targets = default_targets

    def _route(self, job: Job) -> str | None:
        try:
            resolved = self.root.resolve(job.record.relative, self.default_targets)
        except SirError:
            return None
        return resolved.route

    def claimed(self, job: Job) -> None:
        """A claim's event. Like a retry's, it may be lost to a full disk (logged):
        final events never are, they keep the job in .state until written."""
        if self.journal is None:
            return
        try:
            self._claimed(job)
        except OSError as exc:
            log.warning("event_not_written", job_id=job.id, error=str(exc))

    def _claimed(self, job: Job) -> None:
        assert self.journal is not None
        self.journal.append_once(
            EventKind.JOB_CLAIMED,
            event_id(job.id, EventKind.JOB_CLAIMED),
            since=job.record.detected_at,
            job_id=job.id,
            input=readable(job.record.relative_path),
            route=self._route(job),
        )

    def retried(self, job: Job, reason: str) -> None:
        """The job goes to a worker again (after a worker's loss or a restart)."""
        if self.journal is None:
            return
        attempt = job.record.attempts + 1
        try:
            self._retried(job, reason, attempt)
        except OSError as exc:
            log.warning("event_not_written", job_id=job.id, error=str(exc))

    def _retried(self, job: Job, reason: str, attempt: int) -> None:
        assert self.journal is not None
        self.journal.append_once(
            EventKind.JOB_RETRIED,
            event_id(job.id, EventKind.JOB_RETRIED, attempt),
            since=job.record.detected_at,
            job_id=job.id,
            input=readable(job.record.relative_path),
            route=self._route(job),
            attempt=attempt,
            code=reason,
        )

    def finished(self, job: Job) -> None:
        """The job's sidecar is published and durable: its final event (idempotent).
        What it says was decided with the staged sidecar (``JobRecord.reused_from``,
        ``error_code``): nothing is read back from outbox/ or failed/."""
        if self.journal is None:
            return
        record = job.record
        if record.phase == "publishing":
            kind = EventKind.JOB_SUCCEEDED if record.reused_from is None else EventKind.JOB_REUSED
            place, relative, suffix = "outbox", record.output_relative, META_SUFFIX
            extra: dict[str, object] = {"reused_from": record.reused_from}
        else:
            kind, place, relative, suffix = (
                EventKind.JOB_FAILED,
                "failed",
                record.failed_relative,
                ERROR_SUFFIX,
            )
            extra = {"code": record.error_code}
        path = f"{place}/{readable(relative or '')}"
        self.journal.append_once(
            kind,
            event_id(job.id, kind),
            since=record.detected_at,
            job_id=job.id,
            input=readable(record.relative_path),
            route=self._route(job),
            attempt=record.attempts,
            path=path,
            sidecar=f"{path}{suffix}",
            notify_url=record.notify_url or None,
            **extra,
        )


class StateAnnouncer:
    """The daemon's own events: intake, readiness, start and stop. Each is said
    once per change; a write that fails (a full disk) is logged and dropped.

    Readiness is evaluated on the event loop, and a journal write fsyncs (and may
    wait for a publisher's write): the writes go to one thread of their own, in
    the order they were said. ``close`` waits for them."""

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal
        self.run_id = uuid.uuid4().hex[:12]  # one per daemon start
        self._count = 0
        self._intake: str | None = None
        self._ready: bool | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-events")

    def _say(self, kind: EventKind, **fields: object) -> None:
        if self.journal is None:
            return
        self._count += 1
        try:
            self._writer.submit(self._write, self.journal, kind, self._count, fields)
        except RuntimeError:  # said after ``close`` (a late readiness check): not written
            log.info("event_not_written", kind=str(kind), error="the daemon has stopped")

    def _write(
        self, journal: Journal, kind: EventKind, count: int, fields: dict[str, object]
    ) -> None:
        try:
            journal.append(kind, f"{self.run_id}:{kind}:{count}", **fields)
        except OSError as exc:
            log.warning("event_not_written", kind=str(kind), error=str(exc))

    def close(self) -> None:
        """Write what was said, then stop the writer thread."""
        self._writer.shutdown(wait=True)

    def intake(self, reason: str | None) -> None:
        """Intake is paused for ``reason`` (a readiness code), or runs (None)."""
        if reason == self._intake:
            return
        self._intake = reason
        if reason is None:
            self._say(EventKind.INTAKE_RESUMED)
        else:
            self._say(EventKind.INTAKE_PAUSED, code=reason)

    def readiness(self, ready: bool, reasons: list[str]) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        self._say(EventKind.READINESS_CHANGED, ready=ready, reasons=reasons)

    def started(self, recovered: int) -> None:
        self._say(EventKind.DAEMON_STARTED, message=f"{recovered} job(s) recovered")

    def stopping(self, in_flight: int) -> None:
        self._say(EventKind.DAEMON_STOPPING, message=f"{in_flight} job(s) in flight")
