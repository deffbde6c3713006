"""Lanes of warm worker processes, with time budgets, memory caps and crash replacement.

The main process never converts anything. Each lane (gpu, cpu) owns a bounded
queue and N slots; each slot keeps one warm ``python -m daemon.worker`` process
and feeds it one job at a time. A job past its route's time budget kills the
worker (the job fails ``timeout``); a worker whose process group passes the
lane's ``memory_ceiling_mb`` during a job is killed (``resource_limit_exceeded``);
neither is retried on another worker unless ``retry_killed_jobs`` is set. A
worker that dies mid-job, or sends a line that cannot be read, fails it with
``worker_crashed`` (retryable). A worker is recycled after a number of jobs or
when its memory after a job passes the ceiling. No exception ends a slot: one
that escapes a job is the job's ``internal_error``, and a slot task that dies
anyway is restarted and shown as ``dead_slots`` in readiness until it is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from converters.base import Lane
from converters.errors import SirError, Timeout
from daemon.config import ProfileSettings
from daemon.errors import ResourceLimitExceeded, WorkerCrashed
from daemon.lane_settings import LaneSettings
from daemon.metrics import Metrics
from daemon.wire import Hello, JobReply, JobRequest, Ready
from daemon.worker_process import WorkerProcess

__all__ = ["InFlight", "LanePool", "SlotState"]

log = structlog.get_logger("sir_convert_a_lot.workers")

_SLOT_RESTART_SECONDS = 1.0
# A worker that ends a job above this share of the ceiling is replaced, before a
# leak grows it into a kill in the middle of someone's job.
_RECYCLE_SHARE = 0.75


@dataclass
class _Item:
    job: JobRequest
    future: asyncio.Future[JobReply]
    timeout: float
    on_start: Callable[[], None] | None = None
    enqueued: float = field(default_factory=time.monotonic)
    express: bool = False
    started: bool = False
    drop_fd: int | None = None  # the item's own duplicate; closed once the job is done

    def close_drop_fd(self) -> None:
        if self.drop_fd is not None:
            fd, self.drop_fd = self.drop_fd, None
            os.close(fd)


@dataclass
class SlotState:
    index: int
    pid: int | None = None
    warm: bool = False
    busy_since: float | None = None
    job_id: str | None = None
    info: Ready | None = None
    last_error: str | None = None
    express: bool = False  # serves only small jobs of cheap routes (docs/performance.md)
    dead: bool = False  # its task died; restarting
    jobs_done: int = 0  # by the current worker
    # Workers of this slot replaced since start, by reason (recycle, memory, timeout...).
    replaced: dict[str, int] = field(default_factory=dict)


class _LaneQueue:
    """Two FIFO queues: small jobs of cheap routes (express) and the rest.

    Express slots take only express jobs; the other slots take the oldest
    express job first, then the rest, so a small file never waits behind a
    batch of heavy ones for more than one job's time.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._express: collections.deque[_Item] = collections.deque()
        self._main: collections.deque[_Item] = collections.deque()
        self._changed = asyncio.Condition()

    def qsize(self) -> int:
        return len(self._express) + len(self._main)

    async def put(self, item: _Item) -> None:
        async with self._changed:
            (self._express if item.express else self._main).append(item)
            self._changed.notify_all()

    async def get(self, *, express_only: bool) -> _Item:
        async with self._changed:
            await self._changed.wait_for(
                lambda: bool(self._express) or (not express_only and bool(self._main))
            )
            return self._express.popleft() if self._express else self._main.popleft()


@dataclass(frozen=True)
class InFlight:
    """A job a worker is converting right now, for /status."""

    job_id: str
    lane: Lane
    worker_pid: int | None
    running_seconds: float


class LanePool:
    def __init__(
        self,
        settings: LaneSettings,
        hello: Hello,
        metrics: Metrics,
        queue_size: int,
    ) -> None:
        """``hello`` names the lane; the CPU lane adds its hard memory cap to it."""
        self.lane = hello.lane
        self.settings = settings
        self.hello = hello
        if self.lane is Lane.CPU and settings.hard_memory_factor > 0:
            self.hello = hello.model_copy(
                update={
                    "data_limit_mb": int(settings.memory_ceiling_mb * settings.hard_memory_factor)
                }
            )
        self.metrics = metrics
        self.queue = _LaneQueue(queue_size)
        self.slots = [SlotState(i) for i in range(settings.workers)] + [
            SlotState(settings.workers + i, express=True) for i in range(settings.express_workers)
        ]
        self.outstanding = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[int, WorkerProcess] = {}
        self._current: dict[int, _Item] = {}
        self._accepting = True

    @classmethod
    def for_profile(cls, profile: ProfileSettings, lane: Lane, metrics: Metrics) -> LanePool:
        """The lane's pool as a profile configures it (the daemon's and a worker node's)."""
        return cls(
            profile.gpu if lane is Lane.GPU else profile.cpu,
            Hello(
                lane=lane,
                gpu_policy=profile.gpu_policy,
                models_dir=str(profile.models_dir) if profile.models_dir else None,
                limits=profile.limits,
            ),
            metrics,
            profile.queue_size,
        )

    # -- public ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.queue.maxsize + len(self.slots)

    def has_room(self) -> bool:
        return self._accepting and self.outstanding < self.capacity

    @property
    def warm(self) -> bool:
        return all(slot.warm for slot in self.slots)

    def dead_slots(self) -> list[int]:
        """Slots whose task died (or ended) and is not back yet: shown by readiness."""
        ended = {i for i, task in enumerate(self._tasks) if task.done()}
        return [s.index for s in self.slots if s.dead or s.index in ended]

    def ready_info(self) -> Ready | None:
        """The newest warm-up report of any worker (problems, device, probe).

        Express workers warm only their routes, so theirs is the last resort.
        """
        for slot in sorted(self.slots, key=lambda s: s.express):
            if slot.info is not None:
                return slot.info
        return None

    def in_flight(self) -> list[InFlight]:
        """The jobs this lane's workers are converting now."""
        now = time.monotonic()
        return [
            InFlight(slot.job_id, self.lane, slot.pid, round(now - slot.busy_since, 3))
            for slot in self.slots
            if slot.job_id is not None and slot.busy_since is not None
        ]

    def summary(self) -> dict[str, object]:
        """The lane's line in /status."""
        return {
            "workers": len(self.slots),
            "warm": self.warm,
            "queue_depth": self.queue.qsize(),
            "outstanding": self.outstanding,
        }

    def worker_stats(self) -> list[dict[str, object]]:
        """One line per slot for /status and the status page: its worker, how many
        jobs that worker did, and how often the slot's worker was replaced."""
        return [
            {
                "slot": slot.index,
                "express": slot.express,
                "pid": slot.pid,
                "warm": slot.warm,
                "busy": slot.job_id is not None,
                "jobs_done": slot.jobs_done,
                "recycles": slot.replaced.get("recycle", 0),
                "replaced": dict(sorted(slot.replaced.items())),
            }
            for slot in self.slots
        ]

    def budget(self, job: JobRequest) -> float:
        """The job's time budget: its route's base plus a share per MB, capped by the lane."""
        return self.settings.budget_seconds(job.route, int(self._input_mb(job) * 2**20))

    def _input_mb(self, job: JobRequest) -> float:
        try:
            return os.stat(job.input_path).st_size / 2**20 if job.input_path else 0.0
        except OSError:
            return 0.0

    def _is_express(self, job: JobRequest) -> bool:
        s = self.settings
        return (
            s.express_workers > 0
            and job.route in s.express_routes
            and self._input_mb(job) * 2**20 <= s.express_max_bytes
        )

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot_runner(s)) for s in self.slots]

    async def run(
        self,
        job: JobRequest,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
        drop_fd: int | None = None,
    ) -> JobReply:
        """Queue a job and wait for its reply. ``on_start`` runs when a worker takes it.

        ``drop_fd``, a descriptor of the job's drop folder, is sent to the worker
        with the job (``"drop_fd": true`` in the job line). The caller keeps its
        descriptor and closes it after ``run`` returns; the queue holds a
        duplicate, so a caller that gives up early cannot leave a closed (or
        reused) number behind for the worker to receive.
        """
        loop = asyncio.get_running_loop()
        item = _Item(
            job.model_copy(update={"drop_fd": drop_fd is not None}),
            loop.create_future(),
            timeout or self.budget(job),
            on_start,
            express=self._is_express(job),
            drop_fd=os.dup(drop_fd) if drop_fd is not None else None,
        )
        with self.holding():
            await self.queue.put(item)
            self.metrics.queue_depth.labels(self.lane.value).set(self.queue.qsize())
            return await item.future

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Count a job of this lane as outstanding while it is queued or running, or
        waits without a worker (for an identical job to finish, daemon/reuse.py), so
        intake's back-pressure sees it."""
        self.outstanding += 1
        try:
            yield
        finally:
            self.outstanding -= 1

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(w.stop(grace=5.0) for w in self._workers.values()))
        self._workers.clear()

    # -- slots ---------------------------------------------------------------------

    def _new_worker(self, slot: SlotState) -> WorkerProcess:
        hello = self.hello
        if slot.express:  # no docling, no torch: warms in a second or two
            hello = hello.model_copy(update={"routes": list(self.settings.express_routes)})
        return WorkerProcess(
            hello,
            memory_ceiling_mb=self.settings.memory_ceiling_mb,
            nice=0 if slot.express else self.settings.regular_nice,
        )

    async def _ensure_worker(self, slot: SlotState) -> WorkerProcess:
        worker = self._workers.get(slot.index)
        if worker is not None and worker.proc is not None and worker.proc.returncode is None:
            return worker
        backoff = 1.0
        while True:
            worker = self._new_worker(slot)
            slot.warm = False
            try:
                info = await worker.start()
            except (WorkerCrashed, TimeoutError, OSError) as exc:
                slot.last_error = str(exc)
                log.error("worker_start_failed", lane=self.lane.value, error=str(exc))
                await worker.kill()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self.metrics.worker_starts.labels(self.lane.value).inc()
            slot.pid, slot.info, slot.warm, slot.last_error = worker.pid, info, True, None
            slot.dead = False
            self._workers[slot.index] = worker
            log.info(
                "worker_ready",
                lane=self.lane.value,
                pid=worker.pid,
                express=slot.express,
                warm_seconds=info.warm_seconds,
                device=info.device,
            )
            return worker

    async def _replace(self, slot: SlotState, reason: str) -> None:
        slot.warm = False  # before the first await: other slots see it at once
        worker = self._workers.pop(slot.index, None)
        if worker is not None:
            await worker.stop(grace=2.0)
        self.metrics.worker_restarts.labels(self.lane.value, reason).inc()
        slot.replaced[reason] = slot.replaced.get(reason, 0) + 1
        slot.jobs_done = 0
        log.info("worker_replaced", lane=self.lane.value, reason=reason)
        await self._ensure_worker(slot)

    async def _slot_runner(self, slot: SlotState) -> None:
        """Run the slot's loop for good: a loop that dies is logged, shown and restarted."""
        while True:
            try:
                await self._slot_loop(slot)
            except Exception as exc:
                slot.dead, slot.warm = True, False
                slot.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.metrics.slot_errors.labels(self.lane.value, "slot").inc()
                self.metrics.dead_slots.labels(self.lane.value).inc()
                log.exception("slot_died", lane=self.lane.value, slot=slot.index)
                item = self._current.pop(slot.index, None)
                if item is not None and not item.future.done():
                    item.future.set_exception(self._internal(exc))
                worker = self._workers.pop(slot.index, None)
                if worker is not None:
                    with contextlib.suppress(Exception):
                        await worker.kill()
                await asyncio.sleep(_SLOT_RESTART_SECONDS)
                self.metrics.dead_slots.labels(self.lane.value).dec()

    def _internal(self, exc: BaseException) -> SirError:
        what = f"{type(exc).__name__}: {exc}"[:500]
        return SirError(f"the {self.lane.value} lane failed on this job: {what}")

    async def _slot_loop(self, slot: SlotState) -> None:
        await self._ensure_worker(slot)
        while True:
            item = await self.queue.get(express_only=slot.express)
            self.metrics.queue_depth.labels(self.lane.value).set(self.queue.qsize())
            if item.future.done():  # cancelled while queued
                item.close_drop_fd()
                continue
            self._current[slot.index] = item
            try:
                await self._serve(slot, item)
            except Exception as exc:
                # Contained: the job fails internal_error, the slot goes on.
                log.exception("slot_job_error", lane=self.lane.value, job_id=item.job.job_id)
                self.metrics.slot_errors.labels(self.lane.value, "job").inc()
                if not item.future.done():
                    item.future.set_exception(self._internal(exc))
                await self._replace(slot, "error")
            finally:
                self._current.pop(slot.index, None)
                if item.future.done():  # not handed back to the queue (express overrun)
                    item.close_drop_fd()

    def _fail_killed(self, item: _Item, exc: SirError) -> None:
        """A job killed for time or memory: not retried, unless the profile asks for it."""
        if item.future.done():
            return
        if self.settings.retry_killed_jobs:
            exc = WorkerCrashed(f"{exc.code}: {exc.message} (retried: retry_killed_jobs)")
        item.future.set_exception(exc)

    async def _serve(self, slot: SlotState, item: _Item) -> None:
        worker = await self._ensure_worker(slot)
        if item.on_start is not None and not item.started:
            item.started = True  # once: a job moved off the express slot is one attempt
            try:
                # In a thread: it writes the job record, which must not stall the loop.
                await asyncio.to_thread(item.on_start)
            except Exception as exc:  # e.g. a full disk: the job's owner decides
                if not item.future.done():
                    item.future.set_exception(exc)
                return
        timeout = item.timeout
        if slot.express:
            timeout = min(timeout, self.settings.express_seconds)
        slot.busy_since, slot.job_id = time.monotonic(), item.job.job_id
        in_flight = self.metrics.in_flight.labels(self.lane.value)
        in_flight.inc()
        try:
            reply = await worker.run(item.job, timeout, item.drop_fd)
        except Timeout as exc:
            if timeout < item.timeout:
                # Too slow for the express slot: start over on a regular one.
                item.express = False
                await self.queue.put(item)
                log.info("express_overrun", lane=self.lane.value, job_id=item.job.job_id)
                await self._replace(slot, "express_overrun")
                return
            self._fail_killed(item, exc)
            await self._replace(slot, "timeout")
            return
        except ResourceLimitExceeded as exc:
            self._fail_killed(item, exc)
            await self._replace(slot, "memory")
            return
        except WorkerCrashed as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            await self._replace(slot, "crash")
            return
        finally:
            in_flight.dec()
            slot.busy_since, slot.job_id = None, None
        slot.jobs_done = worker.jobs_done
        if not item.future.done():
            item.future.set_result(reply)
        if (
            reply.error is not None and reply.error.code == ResourceLimitExceeded.code
        ) or worker.last_rss_mb > _RECYCLE_SHARE * self.settings.memory_ceiling_mb:
            await self._replace(slot, "memory")
        elif worker.jobs_done >= self.settings.recycle_after_jobs and all(
            other.warm for other in self.slots if other is not slot
        ):
            # Never more than one slot of a lane warming up for a recycle: the
            # workers share the jobs evenly, so they reach the limit together,
            # and recycling them at once stopped the lane for a warm-up (ops/bench).
            # A deferred recycle is retried after the next job; the memory
            # ceiling above still applies.
            await self._replace(slot, "recycle")
