"""The daemon process for one profile: wiring, the supervisor loop, readiness, and shutdown.
(What waits in the inbox and whether intake is paused: ``daemon/intake.py``.)

The supervisor loop ticks every 50 ms: it lets settled files through, claims
them while their lane has room and intake is not paused, and starts one task
per claimed job. Scans run at start-up and then every
``rescan_interval_seconds``. Once a second the loop re-evaluates readiness:
that decides whether intake is paused (a full or unwritable data root stops
new claims) and what systemd is told, with or without the HTTP listener.

Everything outside this module (the HTTP app, ``check``, ``convert``, the
bench) uses the public methods below, never the lifecycle or the lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog

from converters.base import Lane
from converters.errors import SirError
from converters.registry import Registry, default_registry
from daemon.announce import StateAnnouncer
from daemon.automation import AutomationTasks, open_journal
from daemon.config import ProfileSettings, Settings
from daemon.event_reader import JournalReader
from daemon.ignore import IgnoreRules
from daemon.intake import Intake
from daemon.jobs import Job
from daemon.layout import DataRoot
from daemon.lifecycle import Lifecycle
from daemon.metrics import Metrics
from daemon.names import readable
from daemon.notify import Notifier
from daemon.open_writers import StillOpen, WriterProbe
from daemon.readiness import CheckResult, Readiness
from daemon.revision import service_info
from daemon.settle import Arrival, SettleTracker
from daemon.status import status_report
from daemon.watcher import InboxWatcher
from daemon.workers import LanePool

__all__ = ["Service"]

log = structlog.get_logger("sir_convert_a_lot.service")

TICK_SECONDS = 0.05
REFRESH_SECONDS = 1.0


class Service:
    def __init__(
        self,
        settings: Settings,
        profile: ProfileSettings,
        notifier: Notifier | None = None,
        *,
        journal: bool = False,
    ) -> None:
        """``notifier``: systemd's socket, and ``journal``: the events journal,
        webhooks and retention, for the daemon only (``check`` and ``convert``
        say nothing to systemd and write no events)."""
        self.all_settings = settings
        self.settings = profile
        self.root = DataRoot(profile.data_root)
        self.registry: Registry = default_registry()
        self.metrics = Metrics(profile.name)
        self.info = service_info(profile)
        self.metrics.build_info.info(
            {"version": self.info.version, "revision": self.info.revision, "profile": profile.name}
        )
        self.pools = {
            lane: LanePool.for_profile(profile, lane, self.metrics) for lane in (Lane.GPU, Lane.CPU)
        }
        # The shared job engine, only when configured: nothing of it is imported otherwise.
        self.engine: Any = None
        if profile.engine_url is not None:
            from daemon.engine.ingest import make_engine_pools
            from daemon.engine.spill import SpillPool

            self.engine, remote = make_engine_pools(profile, self.metrics)
            # EnginePool and SpillPool have LanePool's public face (run, has_room, ...):
            # a lane in local_lanes converts here and spills its overflow to the
            # engine; the others go to the engine only.
            for lane, engine_pool in remote.items():
                self.pools[lane] = cast(
                    LanePool,
                    SpillPool(self.pools[lane], engine_pool)
                    if lane in profile.local_lanes
                    else engine_pool,
                )
        self.journal = open_journal(profile, self.root, self.metrics) if journal else None
        self.announce = StateAnnouncer(self.journal)
        self.lifecycle = Lifecycle(
            profile,
            self.registry,
            self.pools,
            self.metrics,
            self.info,
            journal=self.journal,
            probe=WriterProbe(),
        )
        self.automation = (
            AutomationTasks(profile, self.root, self.journal, self.metrics)
            if self.journal is not None
            else None
        )
        if self.engine is not None:
            self.lifecycle.outcomes.settled = self.engine.settled
        self.ignore = IgnoreRules(
            profile.all_ignore_patterns, profile.ignore_dirs, profile.asset_extensions
        )
        self.watcher = InboxWatcher(
            self.root.inbox,
            polling=profile.observer == "polling",
            polling_interval=profile.polling_interval_seconds,
        )
        self.tracker = SettleTracker(
            profile.settle_seconds, require_close=self.watcher.reports_closes
        )
        self.notifier = notifier or Notifier(None, None)
        self.started_at = datetime.now(UTC)
        self.heartbeat = time.monotonic()
        self.stopping = asyncio.Event()
        self.readiness = Readiness(self)
        self.intake = Intake(
            self.root,
            self.ignore,
            self.tracker,
            self.metrics,
            sources={r.source for r in self.registry.routes()} | {"htm", "markdown"},
            lane_of=self.lifecycle.lane_for,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._rescan_task: asyncio.Task[None] | None = None
        self.stuck: dict[str, str] = {}  # job id -> input, jobs that could not even fail

    @property
    def intake_paused_reason(self) -> str | None:
        """Why no file is claimed (readiness's latest verdict), None while intake runs."""
        return self.intake.paused_reason

    @property
    def last_rescan(self) -> float | None:
        return self.intake.last_rescan

    # -- the supervisor loop --------------------------------------------------------------

    async def _claim_ready(self) -> None:
        if self.intake_paused_reason or not any(p.has_room() for p in self.pools.values()):
            return  # nothing could be claimed; waiting files keep their place
        now = time.monotonic()
        ready = self.tracker.due(now, self.intake.stat)
        for path in ready:
            lane = self.intake.lane_for(path)
            if self.intake_paused_reason or not self.pools[lane].has_room():
                # Leave it in the inbox; it is seen again on the next tick.
                self.tracker.put_back(path, now)
                continue
            detected = self.intake.detected_at(path)
            try:
                job = await asyncio.to_thread(self.lifecycle.claim, path, detected)
            except StillOpen:
                self.intake.still_open(path, detected)
                continue
            except OSError as exc:
                log.error("claim_failed", input=str(path), error=str(exc))
                self.tracker.observe(path, Arrival.SCANNED, now)
                continue
            except Exception:
                # Never let one entry stop the loop. It stays where it is, ignored
                # until it is gone (rules in docs/security.md); the rest goes on.
                log.exception("claim_crashed", input=str(path))
                self.metrics.internal_errors.labels("claim").inc()
                self.intake.ignore_for_good(path)
                continue
            if job is not None:
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, job: Job) -> None:
        try:
            await self.lifecycle.process(job)
        except Exception as exc:
            # No exception may leave a job unaccounted for: fail it with
            # internal_error, visibly. If even that fails, it stays in .state
            # (recovered on restart) and /status lists it as stuck.
            log.exception("job_crashed_in_supervisor", job_id=job.id)
            self.metrics.internal_errors.labels("job").inc()
            if job.record.phase in ("publishing", "failing"):
                # Its outcome is decided and partly visible: only recovery's
                # idempotent renames may finish it, never a second outcome.
                self.stuck[job.id] = readable(job.record.relative_path)
                return
            try:
                await self.lifecycle.fail_now(
                    job, SirError(f"unexpected {type(exc).__name__} in the daemon: {exc}"[:500])
                )
            except Exception:
                log.exception("job_stuck", job_id=job.id)
                self.stuck[job.id] = readable(job.record.relative_path)

    async def _background_rescan(self) -> None:
        try:
            await self.intake.rescan()
        except Exception:
            log.exception("rescan_failed")
            self.metrics.internal_errors.labels("rescan").inc()

    def _update_gauges(self) -> None:
        self.metrics.pending_files.set(len(self.tracker))
        self.metrics.pending_held_open.set(self.tracker.held_count())
        oldest = self.tracker.oldest()
        ages = [time.monotonic() - oldest] if oldest is not None else []
        for job in self.lifecycle.active.values():
            ages.append((datetime.now(UTC) - job.record.detected_at).total_seconds())
        self.metrics.oldest_waiting.set(max(ages, default=0.0))

    async def _supervise(self) -> None:
        next_rescan = time.monotonic() + self.settings.rescan_interval_seconds
        next_refresh = time.monotonic()
        while not self.stopping.is_set():
            self.heartbeat = time.monotonic()
            self.notifier.watchdog()
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + REFRESH_SECONDS
                try:
                    self.refresh()
                except Exception:
                    # One bad round must not stop the next: it also resumes intake.
                    log.exception("readiness_refresh_failed")
            try:
                await self._claim_ready()
                due = time.monotonic() >= next_rescan or self.intake.rescan_requested
                if due and (self._rescan_task is None or self._rescan_task.done()):
                    # In the background: claims go on while the helper walks.
                    self.intake.rescan_requested = False
                    next_rescan = time.monotonic() + self.settings.rescan_interval_seconds
                    self._rescan_task = asyncio.create_task(self._background_rescan())
                self._update_gauges()
            except Exception:
                # The loop is the daemon's heartbeat: it must outlive any one bug.
                log.exception("supervisor_tick_failed")
                self.metrics.internal_errors.labels("supervisor").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), TICK_SECONDS)

    # -- readiness, health, status (what the HTTP app and `check` show) ---------------------

    def evaluate(self, *, force: bool = False) -> tuple[bool, list[CheckResult]]:
        """Every readiness check (cached for a second unless ``force``). Intake follows
        at once, whoever asked: a failing blocker (full or unwritable data root,
        another profile's data root) pauses claims until it passes again."""
        ready, results = self.readiness.evaluate(force=force)
        self.announce.intake(self.intake.pause_for(results))
        self.announce.readiness(ready, [r.code for r in results if not r.ok])
        return ready, results

    def refresh(self) -> None:
        """Once a second from the supervisor: re-run every check, then tell systemd.

        READY=1 means "started": recovery is done, the lanes and the watcher run,
        and (the supervisor starts after the listener) health is served. Whether
        files are taken is readiness's business, said on every STATUS= line, so a
        host waiting for its GPU or its disk stays up and says why instead of
        being restarted every TimeoutStartSec (docs/health.md).
        """
        ready, results = self.evaluate(force=True)
        if self.stopping.is_set():
            return  # STOPPING=1 and STATUS=draining were sent; say nothing that contradicts them
        self.notifier.status_or_ready(self._summary(ready, results))

    def _summary(self, ready: bool, results: list[CheckResult]) -> str:
        counts = f"pending {len(self.tracker)}, active {len(self.lifecycle.active)}"
        if ready:
            return f"ready; {counts}"
        failing = ", ".join(r.code for r in results if not r.ok)
        if self.intake_paused_reason is not None:
            return f"not taking files ({failing}); {counts}"
        return f"not ready ({failing}); {counts}"

    def events_reader(self, after: int) -> JournalReader | None:
        """A reader of the events journal after seq ``after`` (None without a journal)."""
        if self.journal is None:
            return None
        return JournalReader(self.journal.folder, after=after)

    def identity(self) -> dict[str, Any]:
        """Who answers: profile, revision, version, uptime."""
        return {
            "profile": self.settings.name,
            "revision": self.info.revision,
            "version": self.info.version,
            "started_at": self.started_at.isoformat(),
            "uptime_seconds": round((datetime.now(UTC) - self.started_at).total_seconds(), 3),
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the supervisor loop ticked within ``heartbeat_timeout_seconds``."""
        age = time.monotonic() - self.heartbeat
        alive = age <= self.settings.heartbeat_timeout_seconds
        body = {
            "status": "ok" if alive else "wedged",
            "heartbeat_age_seconds": round(age, 3),
            **self.identity(),
        }
        return alive, body

    def status(self) -> dict[str, Any]:
        """The queue, in-flight jobs, lanes and recent failures (/status)."""
        return status_report(
            self.identity(),
            self.pools,
            self.lifecycle,
            pending_in_inbox=len(self.tracker),
            stuck=self.stuck,
        )

    # -- start and stop ---------------------------------------------------------------------

    async def start_lanes(self, lanes: Iterable[Lane] | None = None) -> None:
        """Create and adopt the data root, then start the lanes' workers (all by
        default). Enough for ``check`` and ``convert``; ``start`` does more."""
        await asyncio.to_thread(self.root.create)
        self.root.adopt(self.settings.name)
        for lane in self.pools if lanes is None else set(lanes):
            await self.pools[lane].start()
        if self.engine is not None:
            await self.engine.start()  # once; it serves every engine lane

    async def wait_warm(self, timeout: float) -> bool:
        """Wait until every started lane has warm workers, ``timeout`` at most."""
        deadline = time.monotonic() + timeout
        while not all(p.warm for p in self.pools.values()) or (
            self.engine is not None and not self.engine.available
        ):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    def lane_for(self, path: Path) -> Lane:
        """Which lane an inbox path will need."""
        return self.lifecycle.lane_for(path)

    async def convert_now(self, path: Path, document_folder: Path | None = None) -> None:
        """Claim one file already in the inbox and convert it to the end (``convert``):
        the daemon's own path, without the watcher or the supervisor.

        ``document_folder``: where the document's images and stylesheets are
        read from instead of its inbox folder (``convert`` passes the folder of
        the file the user named; the user trusts their own folders).
        """
        try:
            job = await asyncio.to_thread(self.lifecycle.claim, path, datetime.now(UTC))
        except StillOpen:
            raise SirError(
                f"{path} is still open for writing by another process: "
                "convert it once it is written"
            ) from None
        if job is None:
            raise SirError(f"{path} could not be claimed")
        if document_folder is not None:
            job.release()
            job.drop_fd = os.open(document_folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        await self.lifecycle.process(job)

    async def start(self) -> None:
        """Start the daemon: recover, start the lanes and the watcher, scan once."""
        # First of all, so that a SIGTERM during start-up still drains cleanly.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await asyncio.to_thread(self.root.create)
        self.root.adopt(self.settings.name)
        if self.automation is not None:
            self.automation.prepare()  # the webhook cursor starts before recovery's events
        recovered = await asyncio.to_thread(self.lifecycle.recover)
        for job in recovered:
            error = self.lifecycle.crash_looped(job)
            if error is not None:
                await self.lifecycle.fail_now(job, error)
            else:
                self._spawn(job)
        await self.start_lanes()
        self.watcher.start(loop, self.intake.on_event, self.intake.request_rescan)
        self.intake.start_scanner()
        await self.intake.rescan()
        self.announce.started(len(recovered))
        if self.automation is not None:
            self.automation.start()
        log.info(
            "service_started",
            profile=self.settings.name,
            data_root=str(self.root.root),
            revision=self.info.revision,
            observer=self.settings.observer,
        )

    async def run_forever(self) -> None:
        """Supervise until SIGTERM (or ``request_stop``), then shut down.

        Started once the HTTP listener is up: its first refresh sends READY=1.
        """
        supervisor = asyncio.create_task(self._supervise())
        await self.stopping.wait()
        await self.shutdown()
        await supervisor

    def request_stop(self) -> None:
        self.stopping.set()

    async def shutdown(self, drain_seconds: float | None = None) -> None:
        """The one way down (daemon, ``check``, ``convert``): stop claiming, let
        in-flight jobs finish within ``drain_seconds`` (the profile's by default),
        stop the workers, and leave the rest in .state for the next start."""
        self.stopping.set()
        self.notifier.stopping()
        self.announce.stopping(len(self.lifecycle.active))
        seconds = self.settings.drain_seconds if drain_seconds is None else drain_seconds
        log.info("draining", in_flight=len(self.lifecycle.active), seconds=seconds)
        self.watcher.stop()
        if self._rescan_task is not None:
            self._rescan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rescan_task
        await self.intake.stop_scanner()
        for pool in self.pools.values():
            pool.stop_accepting()
        deadline = time.monotonic() + seconds
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for pool in self.pools.values():
            await pool.close()
        for task in list(self._tasks):
            task.cancel()
        if self.engine is not None:
            await self.engine.close()
        if self.automation is not None:
            await self.automation.stop()
        await asyncio.to_thread(self.announce.close)
        if self.journal is not None:
            self.journal.close()
        # Jobs still claimed stay in .state and are resumed after the restart.
        log.info("stopped", unfinished=len(self._tasks))
