"""Lanes of warm worker processes, with timeouts, recycling and crash replacement.

The main process never converts anything. Each lane (gpu, cpu) owns a bounded
queue and N slots; each slot keeps one warm ``python -m daemon.worker`` process
and feeds it one job at a time. A job past its timeout kills the worker (the job
fails with ``timeout``); a worker that dies mid-job fails it with
``worker_crashed`` (retryable); a worker is recycled after a number of jobs or
when its memory passes the ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from converters.base import Lane
from converters.errors import Timeout, WorkerCrashed
from daemon.config import LaneSettings
from daemon.metrics import Metrics

__all__ = ["LanePool", "WorkerProcess", "WorkerReply"]

log = structlog.get_logger("sir_convert_a_lot.workers")

START_TIMEOUT_SECONDS = 600.0
_LINE_LIMIT = 16 * 1024 * 1024

WorkerReply = dict[str, Any]


class WorkerProcess:
    """One worker subprocess speaking JSON lines."""

    def __init__(self, lane: Lane, hello: dict[str, Any]) -> None:
        self.lane = lane
        self.hello = hello
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}
        self.jobs_done = 0
        self.last_rss_mb = 0.0
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
                sys.executable,
                "-m",
                "daemon.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                limit=_LINE_LIMIT,
                start_new_session=True,
                pass_fds=(child_end.fileno(),),
            )
            channel_fd = child_end.fileno()
        finally:
            child_end.close()
        await self._send({**self.hello, "fd_channel": channel_fd})
        self.ready = await asyncio.wait_for(self._receive(), START_TIMEOUT_SECONDS)
        return self.ready

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def _receive(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise WorkerCrashed(f"{self.lane.value} worker exited with status {code}")
        reply: dict[str, Any] = json.loads(line)
        return reply

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
        try:
            if drop_fd is not None:
                self._send_drop_fd(drop_fd)
            await self._send(job)
            reply = await asyncio.wait_for(self._receive(), timeout)
        except TimeoutError:
            await self.kill()
            raise Timeout(f"conversion did not finish within {timeout:.0f} s") from None
        except (BrokenPipeError, ConnectionResetError):
            await self.kill()
            raise WorkerCrashed(f"{self.lane.value} worker died during the job") from None
        self.jobs_done += 1
        self.last_rss_mb = float(reply.get("rss_mb", 0.0))
        return reply

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
    drop_fd: int | None = None  # the item's own duplicate; the slot loop closes it

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
        self.metrics = metrics
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self.slots = [SlotState(i) for i in range(settings.workers)]
        self.outstanding = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[int, WorkerProcess] = {}
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

    def ready_info(self) -> dict[str, Any]:
        """The newest warm-up report of any worker (problems, device, probe)."""
        for slot in self.slots:
            if slot.info:
                return slot.info
        return {}

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot_loop(s)) for s in self.slots]

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
            timeout or self.settings.job_timeout_seconds,
            on_start,
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

    async def _ensure_worker(self, slot: SlotState) -> WorkerProcess:
        worker = self._workers.get(slot.index)
        if worker is not None and worker.proc is not None and worker.proc.returncode is None:
            return worker
        backoff = 1.0
        while True:
            worker = WorkerProcess(self.lane, self.hello)
            slot.warm = False
            try:
                info = await worker.start()
            except (WorkerCrashed, TimeoutError, OSError, json.JSONDecodeError) as exc:
                slot.last_error = str(exc)
                log.error("worker_start_failed", lane=self.lane.value, error=str(exc))
                await worker.kill()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self.metrics.worker_starts.labels(self.lane.value).inc()
            slot.pid, slot.info, slot.warm, slot.last_error = worker.pid, info, True, None
            self._workers[slot.index] = worker
            log.info(
                "worker_ready",
                lane=self.lane.value,
                pid=worker.pid,
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

    async def _slot_loop(self, slot: SlotState) -> None:
        await self._ensure_worker(slot)
        while True:
            item = await self.queue.get()
            self.metrics.queue_depth.labels(self.lane.value).set(self.queue.qsize())
            if item.future.cancelled():
                item.close_drop_fd()
                continue
            worker = await self._ensure_worker(slot)
            if item.on_start is not None:
                try:
                    item.on_start()
                except Exception as exc:  # e.g. a full disk: the job's owner decides
                    if not item.future.done():
                        item.future.set_exception(exc)
                    item.close_drop_fd()
                    continue
            slot.busy_since, slot.job_id = time.monotonic(), str(item.job.get("job_id"))
            in_flight = self.metrics.in_flight.labels(self.lane.value)
            in_flight.inc()
            try:
                reply = await worker.run(item.job, item.timeout, item.drop_fd)
            except Timeout as exc:
                item.future.set_exception(exc)
                await self._replace(slot, "timeout")
                continue
            except WorkerCrashed as exc:
                item.future.set_exception(exc)
                await self._replace(slot, "crash")
                continue
            finally:
                item.close_drop_fd()
                in_flight.dec()
                slot.busy_since, slot.job_id = None, None
            if not item.future.cancelled():
                item.future.set_result(reply)
            if worker.last_rss_mb > self.settings.memory_ceiling_mb:
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
