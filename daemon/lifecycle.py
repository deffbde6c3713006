"""The life of one dropped file, top to bottom.

    detected → settled → claimed → routed → converted (in a worker) → published → archived
                                       ↘ failed (input to failed/, with <name>.error.json)

Every arrow that changes the data root is durable (see ``durable`` and
``publish``), and ``recover`` finishes or resumes whatever a crash interrupted,
so each input ends up exactly once in outbox/ (with its sidecar) or failed/.
The last step, a job's sidecar and its publishing, is ``daemon/outcomes.py``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import structlog

from converters.base import ConvertOptions, Lane
from converters.errors import (
    InputTooLarge,
    NotRegularFile,
    OptionsInvalid,
    SirError,
)
from converters.registry import Registry
from daemon import faults
from daemon.announce import JobAnnouncer
from daemon.config import ProfileSettings
from daemon.errors import CrashLoop, InputStillChanging, WorkerCrashed
from daemon.events import Journal
from daemon.jobs import Job, JobStore
from daemon.layout import DataRoot, ResolvedRoute
from daemon.metrics import Metrics
from daemon.names import readable
from daemon.open_writers import WriterProbe
from daemon.options import resolve_options
from daemon.outcomes import Outcomes
from daemon.publish import Publisher
from daemon.reuse import Reuse
from daemon.sidecar import (
    ServiceInfo,
)
from daemon.storage import is_storage_error, storage_trouble, wait_for_storage
from daemon.wire import JobReply, JobRequest
from daemon.workers import LanePool

__all__ = ["Lifecycle"]

log = structlog.get_logger("sir_convert_a_lot.lifecycle")


class Lifecycle:
    def __init__(
        self,
        settings: ProfileSettings,
        registry: Registry,
        pools: dict[Lane, LanePool],
        metrics: Metrics,
        service: ServiceInfo,
        *,
        journal: Journal | None = None,
        probe: WriterProbe | None = None,
    ) -> None:
        """``journal``: the events journal, for the daemon only (``check`` and
        ``convert`` write none); ``probe``: asks, at each claim, whether the file
        is still open for writing (daemon/open_writers.py)."""
        self.settings = settings
        self.root = DataRoot(settings.data_root)
        self.store = JobStore(
            self.root,
            settings.name,
            max_input_bytes=settings.limits.max_input_bytes,
            probe=probe,
        )
        self.publisher = Publisher(
            self.root, self.store, delete_on_success=settings.on_success == "delete"
        )
        self.announce = JobAnnouncer(self.root, journal, settings.default_targets)
        self.publisher.on_commit = self.announce.finished
        self.registry = registry
        self.pools = pools
        self.metrics = metrics
        self.service = service
        self.reuse = Reuse(settings, self.root, self.store, metrics, service)
        self.outcomes = Outcomes(
            settings,
            self.publisher,
            reuse=self.reuse,
            pools=pools,
            metrics=metrics,
            service=service,
        )
        self.failures = self.outcomes.failures  # for /status
        self.successes = self.outcomes.successes
        self.active: dict[str, Job] = {}

    # -- 1. claim ----------------------------------------------------------------

    def lane_for(self, relative_path: Path) -> Lane:
        """Which lane a not-yet-claimed inbox path will need (for back-pressure)."""
        try:
            resolved = self.root.resolve(
                self.root.inbox_relative(relative_path), self.settings.default_targets
            )
            return self.registry.get(resolved.source, resolved.target).lane
        except SirError:
            return Lane.CPU  # it will fail fast, cheaply

    def claim(self, path: Path, detected_at: datetime) -> Job | None:
        """Take the settled file out of the inbox (blocking: run it in a thread).

        One walk from the inbox descriptor down to the file's folder, never
        following a link, serves the claim's rename, the options files and the
        drop folder the worker will read resources from. A file some process
        still holds open for writing raises ``StillOpen`` and stays in the inbox.
        Once the file is in the job folder, this returns the job whatever else
        fails: a job that exists must reach a task, or it would sit unseen in
        .state until a restart.
        """
        relative = self.root.inbox_relative(path)
        levels = self.store.open_levels(relative)
        if levels is None:
            return None  # the folder was swapped or removed: nothing to claim there
        try:
            job = self.store.claim(relative, levels[-1], detected_at)
            if job is not None:
                self._pin(job, levels)
                self.announce.claimed(job)
        finally:
            for fd in levels:
                os.close(fd)
        return job

    def _pin(self, job: Job, levels: list[int] | None) -> None:
        """Pin what the conversion will read: the drop folder's descriptor, the
        options (with private copies of the files they name), the input's facts."""
        try:
            if levels is None:
                # Recovery, and the drop folder is gone: the document keeps only itself.
                job.drop_fd = os.open(job.input_dir, os.O_RDONLY | os.O_DIRECTORY)
                job.options = self.settings.options
                notify_url = None
            else:
                job.drop_fd = os.dup(levels[-1])
                job.options, notify_url = resolve_options(
                    self.settings.options,
                    levels,
                    job.record.relative,
                    job.options_dir,
                    self.settings.limits,
                    notify=self.settings.notify,
                )
            if job.record.notify_url is None:  # decided once; saved with the input's facts
                job.record.notify_url = notify_url or ""
        except SirError as exc:
            job.options_error = exc
        except Exception as exc:
            log.exception("options_unreadable", job_id=job.id)
            job.options_error = OptionsInvalid(f"the options could not be read: {exc!r}"[:500])
        try:
            self.store.fill_input_facts(job)
        except OSError as exc:  # a full disk: the facts are filled in before publishing
            log.warning("input_facts_deferred", job_id=job.id, error=str(exc))

    def repin(self, job: Job) -> None:
        """After a restart: walk to the drop folder again (blocking)."""
        job.release()
        levels = self.store.open_levels(job.record.relative)
        try:
            self._pin(job, levels)
        finally:
            for fd in levels or []:
                os.close(fd)

    # -- 2..5. route, convert, publish ---------------------------------------------

    async def process(self, job: Job) -> None:
        """Convert and publish one job. A full or read-only data root pauses the job
        (it stays in .state) until writes work again, then resumes it from the step
        its record names; the input is never failed for it."""
        self.active[job.id] = job
        try:
            while True:
                try:
                    if job.record.phase in ("publishing", "failing"):
                        await self.outcomes.finish_recorded(job)
                    else:
                        await self._process_once(job)
                    return
                except OSError as exc:
                    if not is_storage_error(exc):
                        raise
                    log.warning("job_paused_by_storage", job_id=job.id, error=str(exc))
                await wait_for_storage(self.root, self.settings.min_free_disk_mb, job.id)
                job.reload()
        finally:
            self.active.pop(job.id, None)
            self.reuse.release(job)
            job.release()

    async def _process_once(self, job: Job) -> None:
        bound = log.bind(job_id=job.id, profile=self.settings.name, input=job.record.relative_path)
        resolved: ResolvedRoute | None = None
        started: datetime | None = None
        try:
            self._refuse_unsafe_entry(job)
            if job.record.input_sha256 is None:
                await asyncio.to_thread(self.store.fill_input_facts, job)
            self._refuse_oversized(job)
            resolved = self.root.resolve(job.record.relative, self.settings.default_targets)
            bound = bound.bind(route=resolved.route)
            converter = self.registry.get(resolved.source, resolved.target)
            if job.options_error is not None:
                raise job.options_error
            options = job.options or self.settings.options
            started = datetime.now(UTC)
            # The same input converted the same way before: its output, verified.
            reply = await self.reuse.lookup(
                job, resolved, converter, options, self.pools[converter.lane]
            )
            if reply is None:
                reply = await self._convert(job, resolved, converter.lane, options)
        except SirError as exc:
            trouble = await asyncio.to_thread(
                storage_trouble, self.root, self.settings.min_free_disk_mb
            )
            if trouble is not None:
                # The worker most likely ran into the same full or read-only disk.
                raise OSError(errno.ENOSPC, f"{exc.code} while {trouble}") from exc
            bound.warning("job_failed", code=exc.code, error=exc.message)
            await self.outcomes.fail(job, exc, resolved, started)
        else:
            await self.outcomes.succeed(job, resolved, converter.lane, reply, started)
            bound.info(
                "job_succeeded",
                output=job.record.output_relative,
                seconds=reply.convert_seconds,
            )

    def _refuse_unsafe_entry(self, job: Job) -> None:
        """Only regular files with one link are read. Others are never opened."""
        st = os.lstat(job.input_path)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a symbolic link"
                if stat.S_ISLNK(st.st_mode)
                else "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a special file"
            )
            raise NotRegularFile(
                f"{job.record.relative.name} is {kind}; only regular files are converted"
            )
        if st.st_nlink > 1:
            raise NotRegularFile(
                f"{job.record.relative.name} has {st.st_nlink} hard links; "
                "copy the file into the inbox instead of linking it"
            )

    def _refuse_oversized(self, job: Job) -> None:
        """The size limit, from the claim's fstat, before any worker reads a byte."""
        limit = self.settings.limits.max_input_bytes
        size = job.record.input_size
        if size is not None and size > limit:
            raise InputTooLarge(
                f"{readable(job.record.relative.name)} is {size} bytes, the limit is {limit}",
                size=size,
                limit=limit,
            )

    async def _convert(
        self, job: Job, resolved: ResolvedRoute, lane: Lane, options: ConvertOptions
    ) -> JobReply:
        """Run the job in a worker. A worker lost mid-job is retried up to max_attempts."""
        pool = self.pools[lane]
        if pause := faults.delay_seconds("dispatch"):
            await asyncio.sleep(pause)
        while True:
            if job.work_dir.exists():
                shutil.rmtree(job.work_dir)
            job.work_dir.mkdir()
            self.metrics.queue_wait_seconds.labels(resolved.route).observe(
                max(0.0, (datetime.now(UTC) - job.record.detected_at).total_seconds())
            )
            payload = JobRequest(
                job_id=job.id,
                source=resolved.source,
                target=resolved.target,
                input_path=str(job.input_path),
                output_path=str(job.work_dir / resolved.output_relative.name),
                options=options,
            )
            try:
                # The drop folder as the claim's walk opened it: resources are read
                # beneath this descriptor, whatever happened to the path since.
                reply = await pool.run(
                    payload, on_start=lambda: self._count_attempt(job), drop_fd=job.drop_fd
                )
            except WorkerCrashed:
                if job.record.attempts >= self.settings.max_attempts:
                    raise
                await asyncio.to_thread(self.announce.retried, job, "worker_crashed")
                log.warning(
                    "job_retry_after_worker_loss", job_id=job.id, attempt=job.record.attempts
                )
                continue
            if reply.error is not None:
                raise reply.error.error()
            if job.record.input_size is not None and await asyncio.to_thread(
                self.store.input_changed, job
            ):
                # A writer still had the file open and went on writing after it
                # settled: this result is of a half-written file. Wait, convert again.
                if job.record.attempts >= self.settings.max_attempts:
                    raise InputStillChanging(
                        "the file kept changing while it was converted; "
                        "drop it again once it is complete"
                    )
                log.warning("input_changed_during_conversion", job_id=job.id)
                await asyncio.sleep(self.settings.settle_seconds)
                await asyncio.to_thread(self.store.fill_input_facts, job)
                continue
            return reply

    @staticmethod
    def _count_attempt(job: Job) -> None:
        """A worker took the job: count it, durably, for crash-loop detection."""
        job.record.attempts += 1
        job.taken_at = datetime.now(UTC)  # the sidecar's started_at: queueing ends here
        # Survives the daemon's own crash (the kernel has it); a power cut may undo
        # it, which costs at most one more attempt.
        job.save(sync_dir=False)

    # -- recovery --------------------------------------------------------------------

    def recover(self) -> list[Job]:
        """Finish what a crash interrupted. Returns the jobs that must be converted again."""
        self.reuse.open()
        for leftover in self.root.tmp.glob("*"):
            leftover.unlink(missing_ok=True)
        resume: list[Job] = []
        for job in self.store.load_all():
            phase = job.record.phase
            has_input = job.has_input
            log.info("recovering_job", job_id=job.id, phase=phase, input=job.record.relative_path)
            if phase in ("publishing", "failing"):
                try:
                    if phase == "publishing":
                        self.publisher.finish_success(job)
                    else:
                        self.publisher.finish_failure(job)
                except OSError as exc:
                    if not is_storage_error(exc):
                        raise
                    resume.append(job)  # process() finishes it once the disk takes writes
            elif not has_input:
                # The claim rename never happened: the file is still in the inbox.
                self.store.finish(job)
            else:
                if phase == "claiming":
                    job.record.phase = "claimed"
                    job.save()
                self.repin(job)
                self.announce.claimed(job)  # if the crash came before it
                if 0 < job.record.attempts < self.settings.max_attempts:
                    self.announce.retried(job, "daemon_restarted")
                resume.append(job)
        return resume

    def crash_looped(self, job: Job) -> SirError | None:
        if job.record.phase != "claimed":
            return None  # converted already; only its renames are left
        if job.record.attempts >= self.settings.max_attempts:
            return CrashLoop(
                f"the daemon stopped {job.record.attempts} times while converting this file"
            )
        return None

    async def fail_now(self, job: Job, error: SirError) -> None:
        await self.outcomes.fail(job, error, None, None)
