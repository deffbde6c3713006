"""One worker subprocess: start it, hand it a job, watch its time and memory, kill it.

The handle a lane slot keeps (daemon/workers.py). It speaks the typed wire
(daemon/wire.py): ``Hello`` in, ``Ready`` out, then a ``JobRequest`` and a
``JobReply`` per job, with the job's drop folder descriptor passed on a
private socket (SCM_RIGHTS) right before the job line. Whatever the worker
sends that cannot be read as the expected message is the worker's crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from typing import Any, TypeVar

import structlog

from converters.base import Lane
from converters.errors import Timeout
from daemon.errors import ResourceLimitExceeded, WorkerCrashed
from daemon.memwatch import SAMPLE_SECONDS, GroupSampler
from daemon.wire import LINE_LIMIT, Hello, JobReply, JobRequest, Ready, WireError, decode, encode

__all__ = ["START_TIMEOUT_SECONDS", "WorkerProcess"]

log = structlog.get_logger("sir_convert_a_lot.workers")

START_TIMEOUT_SECONDS = 600.0
# A worker that dies with its group this close to the ceiling died of memory
# (the kernel's OOM killer or the hard cap got there between two samples).
_NEAR_CEILING = 0.9

_R = TypeVar("_R", Ready, JobReply)


class WorkerProcess:
    """One worker subprocess speaking JSON lines (daemon/wire.py)."""

    # The command; tests point it at a fake worker that speaks the same protocol.
    argv: tuple[str, ...] = (sys.executable, "-m", "daemon.worker")

    def __init__(
        self, hello: Hello, *, memory_ceiling_mb: int | None = None, nice: int = 0
    ) -> None:
        self.lane: Lane = hello.lane
        self.hello = hello
        self.memory_ceiling_mb = memory_ceiling_mb
        self.nice = nice
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: Ready | None = None
        self.jobs_done = 0
        self.last_rss_mb = 0.0
        self.peak_rss_mb = 0.0  # of the process group, during the last job
        self._sampler: GroupSampler | None = None
        # Carries each job's drop folder descriptor (SCM_RIGHTS) to the worker.
        self.fd_channel: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> Ready:
        self.fd_channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fd_channel.setblocking(False)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                "--parent",  # lets a worker whose daemon died during its start-up notice
                str(os.getpid()),
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
        await self._send(self.hello.model_copy(update={"fd_channel": channel_fd}))
        self.ready = await asyncio.wait_for(self._receive(Ready), START_TIMEOUT_SECONDS)
        return self.ready

    async def _send(self, message: Hello | JobRequest) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(encode(message))
        await self.proc.stdin.drain()

    async def _receive(self, model: type[_R]) -> _R:
        """The next message. Anything unreadable is the worker's crash, never ours."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readline()
            if not line:
                code = await self.proc.wait()
                raise WorkerCrashed(f"{self.lane.value} worker exited with status {code}")
            return decode(line, model)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            # ValueError: a line past LINE_LIMIT (the reader's own), or WireError.
            what = str(exc) if isinstance(exc, WireError) else f"{type(exc).__name__}: {exc}"
            raise WorkerCrashed(
                f"{self.lane.value} worker sent an unreadable reply ({what[:200]})"
            ) from None

    async def _watch_memory(self, ceiling_mb: int) -> float:
        """Return the group's RSS (MB) once it passes ``ceiling_mb``; sample until then."""
        assert self.proc is not None
        if self._sampler is None or self._sampler.pgid != self.proc.pid:
            # One per worker process, kept across its jobs: finding the group's
            # members reads every /proc/<pid>/stat, once a second at most, not
            # at the start of every job (it was most of the main process's CPU
            # on small jobs: ops/bench, docs/performance.md).
            self._sampler = GroupSampler(self.proc.pid)
        sampler = self._sampler
        sampler.peak_mb = 0.0
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

    async def run(self, job: JobRequest, timeout: float, drop_fd: int | None = None) -> JobReply:
        self.peak_rss_mb = 0.0
        try:
            if drop_fd is not None:
                self._send_drop_fd(drop_fd)
            await self._send(job)
        except (BrokenPipeError, ConnectionResetError):
            await self.kill()
            raise WorkerCrashed(f"{self.lane.value} worker died during the job") from None
        receive = asyncio.ensure_future(self._receive(JobReply))
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
                reply = receive.result()
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
            self.last_rss_mb = reply.rss_mb or 0.0
            return reply
        if watch is not None and watch in done:
            rss, noticed = watch.result(), time.monotonic()
            await self.kill()
            log.warning(
                "worker_memory_kill",
                lane=self.lane.value,
                job_id=job.job_id,
                rss_mb=round(rss),
                ceiling_mb=self.memory_ceiling_mb,
                kill_seconds=round(time.monotonic() - noticed, 3),
            )
            raise ResourceLimitExceeded(
                f"the conversion used {rss:.0f} MB, past the lane's memory_ceiling_mb "
                f"({self.memory_ceiling_mb}); the worker was killed"
            )
        await self.kill()
        raise Timeout(f"conversion did not finish within its {job.route} budget of {timeout:.0f} s")

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
