"""A worker node: ``sir-convert-a-lot worker --lanes gpu,cpu``.

It needs the database only. One procrastinate worker per lane queue takes a
key, ``store.take`` bumps the job's attempt (the fencing token) and returns the
request, the input bytes and the drop-folder snapshot; the job runs in the same
warm lane workers as the embedded daemon (``LanePool``), in a private
temporary folder; ``store.accept`` hands the result in once. Stalled jobs
(their worker's heartbeat is older than ``engine_stall_seconds``: a killed,
paused or cut-off host) are moved to a new job by any live node's sweeper
(``queue.requeue_stalled``); the stalled host's late result is refused and
discarded. A listener serves /healthz, /readyz, /metrics and /status like the
daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import procrastinate
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from converters.base import Lane
from converters.errors import SirError
from daemon import faults
from daemon.config import ProfileSettings
from daemon.engine import store
from daemon.engine.connect import TASK_NAME, describe, make_app, make_pool, queue_name
from daemon.engine.queue import requeue_stalled
from daemon.engine.schema import check_schema
from daemon.engine.snapshot import write_snapshot
from daemon.errors import WorkerCrashed
from daemon.metrics import Metrics
from daemon.wire import JobReply, JobRequest
from daemon.workers import LanePool

__all__ = ["WorkerNode", "serve_worker"]

log = structlog.get_logger("sir_convert_a_lot.engine.node")

_RESTART_SECONDS = 1.0


class WorkerNode:
    def __init__(self, profile: ProfileSettings, lanes: list[Lane]) -> None:
        self.profile = profile
        self.lanes = lanes
        self.host = profile.node_name or socket.gethostname()
        self.metrics = Metrics(profile.name)
        self.pools = {lane: LanePool.for_profile(profile, lane, self.metrics) for lane in lanes}
        self.db = make_pool(profile, max_size=2 + 2 * len(lanes))
        self.app: procrastinate.App = make_app(profile)
        self.app.task(
            name=TASK_NAME,
            pass_context=False,
            retry=procrastinate.RetryStrategy(max_attempts=20, wait=2),
        )(self.handle)
        self.engine_ok = False
        self.engine_error: str | None = "not connected yet"
        self.counts = {"accepted": 0, "discarded": 0, "skipped": 0}
        self.running: dict[str, tuple[Lane, float]] = {}
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- one job -------------------------------------------------------------------

    async def handle(self, key: str) -> None:
        """The procrastinate task: take, convert, hand in (once)."""
        got = await store.take(self.db, key, self.host)
        if got is None:
            self.counts["skipped"] += 1
            log.info("engine_job_skipped", key=key, reason="has a result or is done")
            return
        taken, data, drop = got
        pool = self.pools.get(taken.lane)
        if pool is None:  # a queue this node does not serve: never routed here
            raise RuntimeError(f"lane {taken.lane.value} is not served by {self.host}")
        self.running[key] = (taken.lane, time.monotonic())
        try:
            reply, files = await self._convert(taken, data, drop, pool)
        finally:
            self.running.pop(key, None)
        accepted = await store.accept(self.db, taken, self.host, reply, files)
        outcome = "accepted" if accepted else "discarded"
        self.counts[outcome] += 1
        self.metrics.engine_results.labels(taken.lane.value, outcome).inc()
        log.info(
            f"engine_result_{outcome}",
            key=key,
            attempt=taken.attempt,
            ok=reply.ok,
            route=taken.request.route,
        )

    async def _convert(
        self, taken: store.Taken, data: bytes, drop: dict[str, bytes], pool: LanePool
    ) -> tuple[JobReply, dict[str, bytes]]:
        with tempfile.TemporaryDirectory(prefix="sir-convert-a-lot-job-") as tmp:
            folder = Path(tmp)
            request = taken.request
            # Off the loop: an input of up to engine_max_input_bytes must not stall
            # this node's heartbeats.
            source, output = await asyncio.to_thread(_stage, folder, request, data, drop)
            job = request.model_copy(
                update={"input_path": str(source), "output_path": str(output), "drop_fd": False}
            )
            if pause := faults.engine_job_delay(output.name):
                await asyncio.sleep(pause)
            if hold := faults.engine_hold_seconds():
                await asyncio.sleep(hold)  # the bench's stand-in for GPU time
                output.write_bytes(data)
                return JobReply(ok=True, converter="hold", device="cpu", worker_host=self.host), {
                    output.name: data
                }
            drop_fd = os.open(folder / "drop", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                reply = await self._run(job, pool, drop_fd)
            finally:
                os.close(drop_fd)
            info = pool.ready_info()
            reply = reply.model_copy(
                update={
                    "worker_host": self.host,
                    "runtime_kind": (info.runtime_kind if info else None)
                    if pool.lane is Lane.GPU
                    else "none",
                    "device_name": info.device_name if info and reply.device == "cuda" else None,
                }
            )
            files = await asyncio.to_thread(_output_files, folder / "out") if reply.ok else {}
            return reply, files

    async def _run(self, job: Any, pool: LanePool, drop_fd: int) -> JobReply:
        for attempt in range(1, self.profile.max_attempts + 1):
            try:
                return await pool.run(job, drop_fd=drop_fd)
            except WorkerCrashed as exc:
                if attempt >= self.profile.max_attempts:
                    return JobReply.failed(exc)
                log.warning("job_retry_after_worker_loss", job_id=job.job_id, attempt=attempt)
            except SirError as exc:
                return JobReply.failed(exc)
        raise AssertionError("unreachable")

    # -- loops ---------------------------------------------------------------------

    async def _queue_worker(self, lane: Lane) -> None:
        """procrastinate's worker for one lane queue, restarted if it ever stops."""
        stall = self.profile.engine_stall_seconds
        while not self.stopping.is_set():
            try:
                await self.app.run_worker_async(
                    queues=[queue_name(lane)],
                    name=f"{self.host}/{lane.value}",
                    concurrency=len(self.pools[lane].slots),
                    install_signal_handlers=False,
                    update_heartbeat_interval=max(0.5, stall / 4),
                    stalled_worker_timeout=stall,
                    fetch_job_polling_interval=1.0,
                    delete_jobs="successful",
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("queue_worker_restarted", lane=lane.value, error=describe(exc, 300))
            await asyncio.sleep(_RESTART_SECONDS)

    async def _sweep(self) -> None:
        """Move the jobs of stalled workers (any host) to new jobs, and watch the engine."""
        stall = self.profile.engine_stall_seconds
        while True:
            try:
                await self.app.job_manager.prune_stalled_workers(stall)
                for lane in self.lanes:
                    for job in await self.app.job_manager.get_stalled_jobs(
                        queue=queue_name(lane), task_name=TASK_NAME, seconds_since_heartbeat=stall
                    ):
                        what = await requeue_stalled(self.db, self.app, job)
                        log.warning(
                            "engine_stalled_job_moved", job=job.id, lane=lane.value, outcome=what
                        )
                depth = await store.depth(self.db)
                for name, n in depth.items():
                    self.metrics.engine_queue_depth.labels(name).set(n)
                self.engine_ok, self.engine_error = True, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.engine_ok:
                    log.warning("engine_unavailable", error=describe(exc, 300))
                self.engine_ok, self.engine_error = False, describe(exc)
            await asyncio.sleep(max(0.5, stall / 3))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_late_finish_handler)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if not faults.engine_hold_seconds():  # the bench's stand-in needs no lane worker
            for pool in self.pools.values():
                await pool.start()
        await self.db.open(wait=False)
        while not self.stopping.is_set():
            try:
                await self.app.open_async()
                async with self.db.connection() as conn:
                    problem = await check_schema(conn)
                if problem is None:
                    break
                self.engine_error = problem
            except Exception as exc:
                self.engine_error = describe(exc)
            log.warning("engine_not_ready", error=self.engine_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), _RESTART_SECONDS)
        self._tasks = [asyncio.create_task(self._sweep())]
        self._tasks += [asyncio.create_task(self._queue_worker(lane)) for lane in self.lanes]
        log.info("worker_node_started", host=self.host, lanes=[x.value for x in self.lanes])
        await self.stopping.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for pool in self.pools.values():
            await pool.close()
        with contextlib.suppress(Exception):
            await self.app.close_async()
        await self.db.close()

    # -- health ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        reasons = []
        if not self.engine_ok:
            reasons.append({"code": "engine_unavailable", "message": self.engine_error or ""})
        cold = [lane.value for lane, pool in self.pools.items() if not pool.warm]
        if cold:
            reasons.append({"code": "workers_not_warm", "message": f"lanes {cold} warming up"})
        return not reasons, reasons

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "node": self.host,
            "role": "worker",
            "lanes": {lane.value: pool.summary() for lane, pool in self.pools.items()},
            "engine_available": self.engine_ok,
            "results": dict(self.counts),
            "running": [
                {"key": key, "lane": lane.value, "running_seconds": round(now - since, 3)}
                for key, (lane, since) in self.running.items()
            ],
        }


def _http(node: WorkerNode) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True, "node": node.host})

    async def readyz(_: web.Request) -> web.Response:
        ready, reasons = node.readiness()
        return web.json_response(
            {"ready": ready, "reasons": reasons, "node": node.host}, status=200 if ready else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        payload = generate_latest(node.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(node.status())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app


async def serve_worker(profile: ProfileSettings, lanes: list[Lane]) -> None:
    node = WorkerNode(profile, lanes)
    runner = web.AppRunner(_http(node), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, profile.http_host, profile.http_port)
    await site.start()
    try:
        await node.run()
    finally:
        await runner.cleanup()


# What procrastinate's finish and retry say of a job that is no longer running.
_REFUSED = ('not in "doing" or "todo" status', "has an invalid status to retry")


def _late_finish_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A host that was paused past the stall time-out finishes (or retries) a job
    that was moved to a new one meanwhile: procrastinate refuses to touch the old,
    cancelled job and its task ends with that error. Expected, and said in one line."""
    future = context.get("future")
    exc = context.get("exception")
    name = future.get_name() if isinstance(future, asyncio.Task) else ""
    cause = str(exc.__cause__) if exc is not None else ""
    if name.startswith("process job") and any(m in cause for m in _REFUSED):
        log.info(
            "engine_late_finish_ignored",
            task=name,
            reason="the job was moved while this host stalled",
        )
        return
    loop.default_exception_handler(context)


def _stage(
    folder: Path, request: JobRequest, data: bytes, drop: dict[str, bytes]
) -> tuple[Path, Path]:
    """The job's private folder: its input, the drop-folder snapshot, an empty out/."""
    for sub in ("in", "out", "drop"):
        (folder / sub).mkdir()
    source = folder / "in" / Path(request.input_path).name
    source.write_bytes(data)
    write_snapshot(folder / "drop", drop)
    return source, folder / "out" / Path(request.output_path).name


def _output_files(out: Path) -> dict[str, bytes]:
    """Every regular file the job wrote, by its '/'-separated path under ``out``: the
    main output and its companions, a folder's files included (``<stem>.images/``)."""
    files: dict[str, bytes] = {}
    for top, dirs, names in os.walk(out):  # links are neither followed nor carried
        base = Path(top)
        dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
        for name in sorted(names):
            path = base / name
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(out).as_posix()] = path.read_bytes()
    return files
