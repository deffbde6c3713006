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
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from converters.base import Lane
from converters.errors import ResourceLimitExceeded, SirError, Timeout, WorkerCrashed
from daemon.config import LaneSettings
from daemon.memwatch import SAMPLE_SECONDS, GroupSampler
from daemon.metrics import Metrics
from daemon.wire import LINE_LIMIT, WireError, decode, encode

__all__ = ["LanePool", "WorkerProcess", "WorkerReply"]

log = structlog.get_logger("sir_convert_a_lot.workers")

START_TIMEOUT_SECONDS = 600.0
# A worker that dies with its group this close to the ceiling died of memory
# (the kernel's OOM killer or the hard cap got there between two samples).
_NEAR_CEILING = 0.9
_SLOT_RESTART_SECONDS = 1.0
# A worker that ends a job above this share of the ceiling is replaced, before a
# leak grows it into a kill in the middle of someone's job.
_RECYCLE_SHARE = 0.75

WorkerReply = dict[str, Any]


class WorkerProcess:
    """One worker subprocess speaking JSON lines (daemon/wire.py)."""

    # The command; tests point it at a fake worker that speaks the same protocol.
    argv: tuple[str, ...] = (sys.executable, "-m", "daemon.worker")

    def __init__(
        self,
        lane: Lane,
        hello: dict[str, Any],
        *,
        memory_ceiling_mb: int | None = None,
        nice: int = 0,
    ) -> None:
        self.lane = lane
        self.hello = hello
        self.memory_ceiling_mb = memory_ceiling_mb
        self.nice = nice
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}
        self.jobs_done = 0
        self.last_rss_mb = 0.0
        self.peak_rss_mb = 0.0  # of the process group, during the last job
        # Carries each job's drop folder descriptor (SCM_RIGHTS) to the worker.
        self.fd_channel: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> dict[str, Any]:
        self.fd_channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fd_channel.setblocking(False)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                limit=LINE_LIMIT,
                start_new_session=True,
                pass_fds=(child_end.fileno(),),
            )
            channel_fd = child_end.fileno()
        finally:
            child_end.close()
        if self.nice:
            # Set before the worker imports anything: its threads and its pandoc inherit it.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.nice)
        await self._send({**self.hello, "fd_channel": channel_fd})
        self.ready = await asyncio.wait_for(self._receive(reply=False), START_TIMEOUT_SECONDS)
        return self.ready

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(encode(message))
        await self.proc.stdin.drain()

    async def _receive(self, *, reply: bool = True) -> dict[str, Any]:
        """The next message. Anything unreadable is the worker's crash, never ours."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readline()
            if not line:
                code = await self.proc.wait()
                raise WorkerCrashed(f"{self.lane.value} worker exited with status {code}")
            return decode(line, reply=reply)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            # ValueError: a line past LINE_LIMIT (the reader's own), or WireError.
            what = str(exc) if isinstance(exc, WireError) else f"{type(exc).__name__}: {exc}"
            raise WorkerCrashed(
                f"{self.lane.value} worker sent an unreadable reply ({what[:200]})"
            ) from None

    async def _watch_memory(self, ceiling_mb: int) -> float:
        """Return the group's RSS (MB) once it passes ``ceiling_mb``; sample until then."""
        assert self.proc is not None
        sampler = GroupSampler(self.proc.pid)
        try:
            while True:
                rss = sampler.sample()
                if rss > ceiling_mb:
                    return rss
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            self.peak_rss_mb = sampler.peak_mb

    def _send_drop_fd(self, drop_fd: int) -> None:
        """Hand the drop folder descriptor over, right before the job line."""
        assert self.fd_channel is not None
        try:
            socket.send_fds(self.fd_channel, [b"D"], [drop_fd])
        except OSError:  # a full or closed channel: the worker is not listening
            raise WorkerCrashed(f"{self.lane.value} worker took no descriptor") from None

    async def run(
        self, job: dict[str, Any], timeout: float, drop_fd: int | None = None
    ) -> WorkerReply:
        self.peak_rss_mb = 0.0
        try:
            if drop_fd is not None:
                self._send_drop_fd(drop_fd)
            await self._send(job)
        except (BrokenPipeError, ConnectionResetError):
            await self.kill()
            raise WorkerCrashed(f"{self.lane.value} worker died during the job") from None
        receive = asyncio.ensure_future(self._receive())
        waiting: set[asyncio.Future[Any]] = {receive}
        watch: asyncio.Future[float] | None = None
        if self.memory_ceiling_mb:
            watch = asyncio.ensure_future(self._watch_memory(self.memory_ceiling_mb))
            waiting.add(watch)
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        if receive in done:
            try:
                reply: WorkerReply = receive.result()
            except WorkerCrashed as exc:
                await self.kill()
                ceiling = self.memory_ceiling_mb
                if ceiling and self.peak_rss_mb >= _NEAR_CEILING * ceiling:
                    raise ResourceLimitExceeded(
                        f"the worker died at {self.peak_rss_mb:.0f} MB, at the lane's "
                        f"memory_ceiling_mb ({ceiling}): {exc.message}"
                    ) from None
                raise
            self.jobs_done += 1
            self.last_rss_mb = float(reply.get("rss_mb", 0.0) or 0.0)
            return reply
        if watch is not None and watch in done:
            rss, noticed = watch.result(), time.monotonic()
            await self.kill()
            log.warning(
                "worker_memory_kill",
                lane=self.lane.value,
                job_id=job.get("job_id"),
                rss_mb=round(rss),
                ceiling_mb=self.memory_ceiling_mb,
                kill_seconds=round(time.monotonic() - noticed, 3),
            )
            raise ResourceLimitExceeded(
                f"the conversion used {rss:.0f} MB, past the lane's memory_ceiling_mb "
                f"({self.memory_ceiling_mb}); the worker was killed"
            )
        await self.kill()
        route = f"{job.get('source')}->{job.get('target')}"
        raise Timeout(f"conversion did not finish within its {route} budget of {timeout:.0f} s")

    async def kill(self) -> None:
        """SIGKILL the worker's process group: the worker and its children (pandoc).

        Also when the worker itself is already gone: a child it left behind would
        otherwise go on writing into the job folder that the retry reuses.
        """
        if self.fd_channel is not None:
            self.fd_channel.close()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, 9)
        await self.proc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        if self.fd_channel is not None:
            self.fd_channel.close()
        if self.proc is None:
            return
        if self.proc.returncode is not None:
            await self.kill()  # sweep children of a worker that died
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill()


@dataclass
class _Item:
    job: dict[str, Any]
    future: asyncio.Future[WorkerReply]
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
    info: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    express: bool = False  # serves only small jobs of cheap routes (docs/performance.md)
    dead: bool = False  # its task died; restarting


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


class LanePool:
    def __init__(
        self,
        lane: Lane,
        settings: LaneSettings,
        hello: dict[str, Any],
        metrics: Metrics,
        queue_size: int,
    ) -> None:
        self.lane = lane
        self.settings = settings
        self.hello = {**hello, "lane": lane.value}
        if lane is Lane.CPU and settings.hard_memory_factor > 0:
            self.hello["data_limit_mb"] = int(
                settings.memory_ceiling_mb * settings.hard_memory_factor
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

    def ready_info(self) -> dict[str, Any]:
        """The newest warm-up report of any worker (problems, device, probe).

        Express workers warm only their routes, so theirs is the last resort.
        """
        for slot in sorted(self.slots, key=lambda s: s.express):
            if slot.info:
                return slot.info
        return {}

    def budget(self, job: dict[str, Any]) -> float:
        """The job's time budget: its route's base plus a share per MB, capped by the lane."""
        route = f"{job.get('source')}->{job.get('target')}"
        return self.settings.budget_seconds(route, int(self._input_mb(job) * 2**20))

    def _input_mb(self, job: dict[str, Any]) -> float:
        path = job.get("input_path")
        try:
            return os.stat(str(path)).st_size / 2**20 if path else 0.0
        except OSError:
            return 0.0

    def _is_express(self, job: dict[str, Any]) -> bool:
        s = self.settings
        route = f"{job.get('source')}->{job.get('target')}"
        return (
            s.express_workers > 0
            and route in s.express_routes
            and self._input_mb(job) * 2**20 <= s.express_max_bytes
        )

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot_runner(s)) for s in self.slots]

    async def run(
        self,
        job: dict[str, Any],
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
        drop_fd: int | None = None,
    ) -> WorkerReply:
        """Queue a job and wait for its reply. ``on_start`` runs when a worker takes it.

        ``drop_fd``, a descriptor of the job's drop folder, is sent to the worker
        with the job (``"drop_fd": true`` in the job line). The caller keeps its
        descriptor and closes it after ``run`` returns; the queue holds a
        duplicate, so a caller that gives up early cannot leave a closed (or
        reused) number behind for the worker to receive.
        """
        loop = asyncio.get_running_loop()
        item = _Item(
            {**job, "drop_fd": drop_fd is not None},
            loop.create_future(),
            timeout or self.budget(job),
            on_start,
            express=self._is_express(job),
            drop_fd=os.dup(drop_fd) if drop_fd is not None else None,
        )
        self.outstanding += 1
        try:
            await self.queue.put(item)
            self.metrics.queue_depth.labels(self.lane.value).set(self.queue.qsize())
            return await item.future
        finally:
            self.outstanding -= 1

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, seconds: float) -> None:
        """Let queued and in-flight jobs finish within ``seconds``, then stop workers."""
        self._accepting = False
        deadline = time.monotonic() + seconds
        while self.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.close()

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
            hello = {**hello, "routes": list(self.settings.express_routes)}
        return WorkerProcess(
            self.lane,
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
                warm_seconds=info.get("warm_seconds"),
                device=info.get("device"),
            )
            return worker

    async def _replace(self, slot: SlotState, reason: str) -> None:
        slot.warm = False  # before the first await: other slots see it at once
        worker = self._workers.pop(slot.index, None)
        if worker is not None:
            await worker.stop(grace=2.0)
        self.metrics.worker_restarts.labels(self.lane.value, reason).inc()
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
                log.exception("slot_job_error", lane=self.lane.value, job_id=item.job.get("job_id"))
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
                item.on_start()
            except Exception as exc:  # e.g. a full disk: the job's owner decides
                if not item.future.done():
                    item.future.set_exception(exc)
                return
        timeout = item.timeout
        if slot.express:
            timeout = min(timeout, self.settings.express_seconds)
        slot.busy_since, slot.job_id = time.monotonic(), str(item.job.get("job_id"))
        in_flight = self.metrics.in_flight.labels(self.lane.value)
        in_flight.inc()
        try:
            reply = await worker.run(item.job, timeout, item.drop_fd)
        except Timeout as exc:
            if timeout < item.timeout:
                # Too slow for the express slot: start over on a regular one.
                item.express = False
                await self.queue.put(item)
                log.info("express_overrun", lane=self.lane.value, job_id=item.job.get("job_id"))
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
        if not item.future.done():
            item.future.set_result(reply)
        if (
            reply.get("code") == ResourceLimitExceeded.code
            or worker.last_rss_mb > _RECYCLE_SHARE * self.settings.memory_ceiling_mb
        ):
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
