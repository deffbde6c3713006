"""A job's events, as the lifecycle tells them to the journal (``daemon/events``).

Event ids are derived from the job id and what happened, so recovery may call
the same method again after a crash: ``Journal.append_once`` keeps one ``seq``
per event. Final events are written by ``Publisher`` right after the sidecar's
rename is durable and *before* the job folder is removed, so a crash between
the two leaves the job in .state, where recovery finds it and writes the event
it may lack.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
        return f"{resolved.source}->{resolved.target}"

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
        """The job's sidecar is published and durable: its final event (idempotent)."""
        if self.journal is None:
            return
        since = job.record.detected_at
        name = readable(job.record.relative_path)
        route = self._route(job)
        if job.record.phase == "publishing":
            relative = readable(job.record.output_relative or "")
            sidecar = self._published_sidecar(
                self.root.outbox / f"{job.record.output_relative}{META_SUFFIX}"
            )
            reused = sidecar.get("reused_from") if sidecar else None
            reused_from = str(reused["job_id"]) if isinstance(reused, dict) else None
            kind = EventKind.JOB_SUCCEEDED if reused_from is None else EventKind.JOB_REUSED
            self.journal.append_once(
                kind,
                event_id(job.id, kind),
                since=since,
                reused_from=reused_from,
                job_id=job.id,
                input=name,
                route=route,
                attempt=job.record.attempts,
                path=f"outbox/{relative}",
                sidecar=f"outbox/{relative}{META_SUFFIX}",
                notify_url=job.record.notify_url or None,
            )
            return
        relative = readable(job.record.failed_relative or "")
        self.journal.append_once(
            EventKind.JOB_FAILED,
            event_id(job.id, EventKind.JOB_FAILED),
            since=since,
            job_id=job.id,
            input=name,
            route=route,
            attempt=job.record.attempts,
            path=f"failed/{relative}",
            sidecar=f"failed/{relative}{ERROR_SUFFIX}",
            code=self._error_code(job),
            notify_url=job.record.notify_url or None,
        )

    def _published_sidecar(self, path: Path) -> dict[str, Any] | None:
        """A sidecar the daemon just published (read back, never following a link)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        try:
            value = json.loads(data)
        except ValueError:
            log.warning("sidecar_unreadable", path=str(path))
            return None
        return value if isinstance(value, dict) else None

    def _error_code(self, job: Job) -> str | None:
        """The code from the error sidecar the daemon just published."""
        if job.record.failed_relative is None:
            return None
        sidecar = self._published_sidecar(
            self.root.failed / f"{job.record.failed_relative}{ERROR_SUFFIX}"
        )
        error = sidecar.get("error") if sidecar else None
        code = error.get("code") if isinstance(error, dict) else None
        return str(code) if code is not None else None


class StateAnnouncer:
    """The daemon's own events: intake, readiness, start and stop. Each is said
    once per change; a write that fails (a full disk) is logged and dropped."""

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal
        self.run_id = uuid.uuid4().hex[:12]  # one per daemon start
        self._count = 0
        self._intake: str | None = None
        self._ready: bool | None = None

    def _say(self, kind: EventKind, **fields: object) -> None:
        if self.journal is None:
            return
        self._count += 1
        try:
            self.journal.append(kind, f"{self.run_id}:{kind}:{self._count}", **fields)
        except OSError as exc:
            log.warning("event_not_written", kind=str(kind), error=str(exc))

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
