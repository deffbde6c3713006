"""The ingest node's side of the engine: ``EnginePool``, a lane pool whose workers are remote.

To ``Lifecycle`` an engine lane looks like any lane: ``run(job, on_start,
drop_fd)`` returns a ``JobReply`` with the output written into the job's work
folder, so claiming, publishing, sidecars and recovery stay the ingest node's
own code. Behind it:

1. the input bytes (and, for md/html, a snapshot of the drop folder's
   resources) are stored under the key ``profile:job_id:sha256`` (idempotent);
2. a procrastinate job carrying the key is deferred to the lane's queue, with
   the key as its queueing lock;
3. one poller (``EngineClient``) asks for all waiting keys at once; a key whose
   procrastinate job is gone, failed or finished without a result (a crash
   between claim and enqueue, a lost job) is deferred again: the result row's
   uniqueness, not the queue, is what makes the outcome happen once;
4. the result's files are written into the work folder; once the sidecar is
   published, the job is marked ``done`` (``settled``). A crash in between is
   settled by the periodic reconciliation: open keys of this profile whose job
   folder is gone from ``.state`` are done.

With PostgreSQL down, jobs stay claimed locally (``run`` retries), intake goes
on up to ``engine_max_outstanding`` jobs, and readiness says ``engine_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import procrastinate
import psycopg
import structlog
from procrastinate import exceptions as pexc
from psycopg_pool import PoolTimeout

from converters.base import Lane
from daemon.config import ProfileSettings
from daemon.engine import queue, store
from daemon.engine.connect import describe, make_app, make_pool, queue_name
from daemon.engine.schema import check_schema
from daemon.engine.snapshot import RESOURCE_SOURCES, read_snapshot
from daemon.errors import EngineUnavailable, InputTooLargeForEngine
from daemon.metrics import Metrics
from daemon.names import check_relative
from daemon.wire import JobReply, JobRequest, Ready
from daemon.workers import InFlight, SlotState

__all__ = ["EngineClient", "EnginePool"]

log = structlog.get_logger("sir_convert_a_lot.engine")

T = TypeVar("T")
_RETRY_SECONDS = 1.0
_ORPHAN_GRACE_SECONDS = 3.0
_RECONCILE_SECONDS = 10.0
_DEPTH_SECONDS = 2.0
# Done jobs (and procrastinate's finished ones) are kept this long, for inquiries,
# then pruned once an hour: the engine's tables do not grow with every file.
KEEP_DONE_HOURS = 24 * 7
_PRUNE_SECONDS = 3600.0
_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "aborted"})
# What an unreachable or restarting PostgreSQL raises: the statement is tried again.
_OUTAGE = (OSError, psycopg.Error, PoolTimeout, pexc.ConnectorException)


@dataclass
class _Waiter:
    job_id: str
    lane: Lane
    future: asyncio.Future[JobReply]
    on_start: Callable[[], None] | None
    started: float | None = None
    orphan_since: float | None = None
    since: float = field(default_factory=time.monotonic)


class EngineClient:
    """One per ingest node: the connections, the poller, and what the engine holds."""

    def __init__(self, profile: ProfileSettings, metrics: Metrics) -> None:
        self.profile = profile
        self.metrics = metrics
        self.pool = make_pool(profile)
        self.app: procrastinate.App = make_app(profile)
        self.available = False
        self.last_error: str | None = "not connected yet"
        self.depth: dict[str, int] = {}
        self.waiters: dict[str, _Waiter] = {}
        self._done: set[str] = set()
        # job id -> key of results written into a work folder, not yet settled.
        self.published: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._app_open = False
        self._next_reconcile = 0.0
        self._next_depth = 0.0
        self._next_prune = 0.0
        self._next_schema = 0.0
        # What ``check_schema`` says of the database (None: both schemas as expected).
        self.schema_problem: str | None = "the schema is not checked yet"

    # -- life ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            await self.pool.open(wait=False)
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._app_open:
            with contextlib.suppress(Exception):
                await self.app.close_async()
        await self.pool.close()

    def _down(self, exc: BaseException) -> None:
        if self.available or self.last_error is None:
            log.warning("engine_unavailable", error=describe(exc, 300))
        self.available = False
        self.last_error = describe(exc)

    async def retrying(self, what: Callable[[], Awaitable[T]]) -> T:
        """Run a statement until the engine answers (the job stays claimed meanwhile)."""
        while True:
            try:
                if not self._app_open:
                    await self.app.open_async()
                    self._app_open = True
                if self.schema_problem is not None:  # nothing is handed to a wrong schema
                    raise EngineUnavailable(self.schema_problem)
                return await what()
            except (*_OUTAGE, EngineUnavailable) as exc:
                self._down(exc)
                await asyncio.sleep(_RETRY_SECONDS)

    # -- jobs ----------------------------------------------------------------------

    async def defer(self, key: str, lane: Lane) -> None:
        """Hand the key to the lane's queue (a second defer while one waits is a no-op)."""
        if await queue.defer(self.pool, self.app, key, lane):
            self.metrics.engine_enqueued.labels(lane.value).inc()

    def settled(self, job_id: str) -> None:
        """The job's outcome is published: mark it done in the engine (soon, batched)."""
        key = self.published.pop(job_id, None)
        if key is not None:
            self._done.add(key)

    # -- the poller ------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._round()
                if not self.available:
                    log.info("engine_available")
                self.available, self.last_error = True, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
            await asyncio.sleep(self.profile.engine_poll_seconds)

    async def _round(self) -> None:
        if not self._app_open:
            await self.app.open_async()
            self._app_open = True
        now = time.monotonic()
        if self.schema_problem is not None or now >= self._next_schema:
            self._next_schema = now + _RECONCILE_SECONDS
            async with self.pool.connection() as conn:
                self.schema_problem = await check_schema(conn)
            if self.schema_problem is not None:
                raise EngineUnavailable(self.schema_problem)
        if self.waiters:
            for row in await store.poll(self.pool, list(self.waiters)):
                await self._update(row, now)
        if self._done:
            batch = set(self._done)
            await store.mark_done(self.pool, batch)
            self._done -= batch
        if now >= self._next_reconcile:
            self._next_reconcile = now + _RECONCILE_SECONDS
            await self._reconcile()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_SECONDS
            await self._prune()
        if now >= self._next_depth:
            self._next_depth = now + _DEPTH_SECONDS
            self.depth = await store.depth(self.pool)
            for lane, n in self.depth.items():
                self.metrics.engine_queue_depth.labels(lane).set(n)

    async def _update(self, row: store.Polled, now: float) -> None:
        waiter = self.waiters.get(row.key)
        if waiter is None or waiter.future.done():
            return
        if row.started and waiter.started is None:
            waiter.started = now
            if waiter.on_start is not None:
                try:
                    waiter.on_start()
                except Exception as exc:  # a full disk: the job's owner decides
                    waiter.future.set_exception(exc)
                    return
        if row.reply is not None:
            waiter.future.set_result(row.reply)
            return
        if row.queue_state is None or row.queue_state in _TERMINAL:
            # No queued or running job carries this key: a crash between store and
            # defer, a job lost with its worker, or a discarded late result.
            if waiter.orphan_since is None:
                waiter.orphan_since = now
            elif now - waiter.orphan_since >= _ORPHAN_GRACE_SECONDS:
                waiter.orphan_since = None
                log.warning("engine_job_requeued", key=row.key, state=row.queue_state)
                await self.defer(row.key, waiter.lane)
        else:
            waiter.orphan_since = None

    async def _prune(self) -> None:
        gone = await store.prune_done(self.pool, self.profile.name, KEEP_DONE_HOURS)
        for lane in Lane:
            await self.app.job_manager.delete_old_jobs(
                nb_hours=KEEP_DONE_HOURS,
                queue=queue_name(lane),
                include_failed=True,
                include_cancelled=True,
                include_aborted=True,
            )
        if gone:
            log.info("engine_done_jobs_pruned", count=gone, older_than_hours=KEEP_DONE_HOURS)

    async def _reconcile(self) -> None:
        """Open keys of this profile whose job folder is gone: published, so done."""
        jobs = Path(self.profile.data_root) / ".state" / "jobs"
        live = set(await asyncio.to_thread(_listdir, jobs))
        stale = [
            k
            for k in await store.open_keys(self.pool, self.profile.name)
            if k.split(":")[1] not in live and k not in self.waiters
        ]
        if stale:
            log.info("engine_jobs_settled_after_restart", count=len(stale))
            await store.mark_done(self.pool, stale)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class EnginePool:
    """A lane served by the engine's worker nodes, with ``LanePool``'s public face."""

    remote = True

    def __init__(self, lane: Lane, client: EngineClient) -> None:
        self.lane = lane
        self.client = client
        self.profile = client.profile
        self.slots: list[SlotState] = []
        self.outstanding = 0
        self._accepting = True

    @property
    def capacity(self) -> int:
        return self.profile.engine_max_outstanding

    @property
    def warm(self) -> bool:
        return True

    def has_room(self) -> bool:
        return self._accepting and self.outstanding < self.capacity

    def dead_slots(self) -> list[int]:
        return []

    def worker_stats(self) -> list[dict[str, object]]:
        return []  # the worker nodes' own /status lists their workers

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A job of this lane waiting for an identical one (daemon/reuse.py) counts."""
        self.outstanding += 1
        try:
            yield
        finally:
            self.outstanding -= 1

    def ready_info(self) -> Ready | None:
        return None  # each reply names the device and runtime of the worker that ran it

    def in_flight(self) -> list[InFlight]:
        now = time.monotonic()
        return [
            InFlight(w.job_id, self.lane, None, round(now - w.started, 3))
            for w in self.client.waiters.values()
            if w.lane is self.lane and w.started is not None and not w.future.done()
        ]

    def summary(self) -> dict[str, object]:
        return {
            "engine": True,
            "engine_available": self.client.available,
            "warm": True,
            "queue_depth": self.client.depth.get(self.lane.value, 0),
            "outstanding": self.outstanding,
        }

    async def start(self) -> None:
        return None  # the client is started once for every engine lane

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        return None

    def _read(self, job: JobRequest, drop_fd: int | None) -> tuple[bytes, dict[str, bytes]]:
        """The input (opened without following links) and the drop folder's resources."""
        limit = self.profile.engine_max_input_bytes
        fd = os.open(job.input_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise InputTooLargeForEngine(
                    f"the input is {size} bytes; the engine carries at most {limit} "
                    "(engine_max_input_bytes): convert it on a node with local lanes",
                    size=size,
                    limit=limit,
                )
            data = f.read(limit + 1)
        drop: dict[str, bytes] = {}
        if drop_fd is not None and job.source in RESOURCE_SOURCES:
            budget = limit - len(data)
            drop = read_snapshot(drop_fd, self.profile.asset_extensions, budget)
        return data, drop

    async def run(
        self,
        job: JobRequest,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
        drop_fd: int | None = None,
    ) -> JobReply:
        """Hand the job to the engine, wait for its one accepted result, write its files."""
        del timeout  # the worker node enforces the lane's budgets
        with self.holding():
            data, drop = await asyncio.to_thread(self._read, job, drop_fd)
            sha = hashlib.sha256(data).hexdigest()
            key = f"{self.profile.name}:{job.job_id}:{sha}"
            output = Path(job.output_path)
            request = job.model_copy(
                update={
                    "input_path": f"input{PurePosixPath(job.input_path).suffix}",
                    "output_path": output.name,
                    "drop_fd": bool(drop),
                }
            )
            loop = asyncio.get_running_loop()
            waiter = _Waiter(job.job_id, self.lane, loop.create_future(), on_start)
            client = self.client
            client.waiters[key] = waiter

            async def hand_over() -> None:
                await store.submit(
                    client.pool,
                    key=key,
                    profile=self.profile.name,
                    job_id=job.job_id,
                    sha256=sha,
                    lane=self.lane,
                    request=request,
                    data=data,
                    drop=drop,
                )

            try:
                await client.retrying(hand_over)
                await client.retrying(lambda: client.defer(key, self.lane))
                reply = await waiter.future
                files = await client.retrying(lambda: store.files_of(client.pool, key))
                await asyncio.to_thread(_write_files, output.parent, files)
                client.published[job.job_id] = key
                return reply
            finally:
                client.waiters.pop(key, None)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """The result's files into the (daemon's own) work folder, a companion folder's
    files included; a name that would leave the folder is dropped."""
    for name, data in files.items():
        try:
            check_relative(name)
        except ValueError:
            log.warning("engine_result_file_refused", name=name[:80])
            continue
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def make_engine_pools(
    profile: ProfileSettings, metrics: Metrics
) -> tuple[EngineClient, dict[Lane, Any]]:
    """The client and one ``EnginePool`` per lane (the engine may take any lane's
    overflow; lanes not in ``local_lanes`` go to it alone)."""
    client = EngineClient(profile, metrics)
    return client, {lane: EnginePool(lane, client) for lane in (Lane.GPU, Lane.CPU)}
