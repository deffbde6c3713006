"""The procrastinate job that carries a key: deferring it, and moving it off a stalled host.

Each state change is one transaction on our pool that first locks the key's
``sca_jobs`` row (one lock order for every writer, so the ingest node's
re-defer and a sweeper's move never deadlock), and ``sca_jobs.procrastinate_id``
always names the job that now carries the key:

* ``defer``: a new job in the lane's queue, with the key as its queueing lock,
  unless the job the key names is still waiting or running.
* ``requeue_stalled``: the job of a host whose heartbeat stopped (killed,
  paused, cut off) ends ``cancelled`` and a *new* job carries the key (unless
  the key has its result or is done). ``cancelled`` is a state neither
  procrastinate's "finished" nor its "retry" accepts: when the stalled host
  wakes up and finishes (or fails and retries) its attempt, procrastinate
  refuses to touch that old id, and the new job is never disturbed. (Retrying
  the same id instead let the late host's "finished" delete the retried job
  before anyone took it: the key was never taken again.) The late host's result
  is refused anyway by its stale attempt (``store.accept``).
"""

from __future__ import annotations

from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.jobs import Job
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from converters.base import Lane
from daemon.engine.connect import TASK_NAME, queue_name

__all__ = ["LIVE", "defer", "requeue_stalled"]

Pool = AsyncConnectionPool[Any]
# procrastinate states of a job that still carries its key.
LIVE = ("todo", "doing")


async def _lock(conn: AsyncConnection[Any], key: str) -> tuple[Lane, str, int | None] | None:
    """Lock the key's row (first, always): its lane, state and current job id."""
    cur = await conn.execute(
        "SELECT lane, state, procrastinate_id FROM sca_jobs WHERE key = %s FOR UPDATE", (key,)
    )
    row = await cur.fetchone()
    return (Lane(row[0]), str(row[1]), row[2]) if row else None


async def _live(conn: AsyncConnection[Any], job_id: int | None) -> bool:
    if job_id is None:
        return False
    cur = await conn.execute(
        "SELECT 1 FROM procrastinate_jobs WHERE id = %s AND status = ANY(%s)", (job_id, list(LIVE))
    )
    return await cur.fetchone() is not None


async def _defer_new(
    conn: AsyncConnection[Any], app: procrastinate.App, key: str, lane: Lane
) -> bool:
    """Defer inside the caller's transaction (the key's row locked); False when a job
    for the key waits already."""
    job = app.configure_task(
        name=TASK_NAME, queue=queue_name(lane), queueing_lock=key
    ).make_new_job(key=key)
    try:
        async with conn.transaction():  # a savepoint: a waiting job leaves the rest intact
            deferred = await app.job_manager.defer_job_async(job, connection=conn)
    except pexc.AlreadyEnqueued:
        return False
    assert deferred.id is not None
    await conn.execute(
        "UPDATE sca_jobs SET procrastinate_id = %s WHERE key = %s", (deferred.id, key)
    )
    return True


async def defer(pool: Pool, app: procrastinate.App, key: str, lane: Lane) -> bool:
    """Hand the key to its lane's queue. False: a job for it waits or runs already."""
    async with pool.connection() as conn, conn.transaction():
        row = await _lock(conn, key)
        if row is not None and await _live(conn, row[2]):
            return False
        return await _defer_new(conn, app, key, lane)


async def requeue_stalled(pool: Pool, app: procrastinate.App, job: Job) -> str:
    """Take a stalled host's job away from it. Returns what happened:
    ``requeued`` (a new job carries the key), ``settled`` (the key has its result,
    is done, or another job carries it: nothing to redo), or ``gone`` (another
    node swept it first, or the job finished meanwhile)."""
    key = job.task_kwargs.get("key")
    async with pool.connection() as conn, conn.transaction():
        row = await _lock(conn, key) if isinstance(key, str) else None
        cur = await conn.execute(
            "UPDATE procrastinate_jobs SET status = 'cancelled'"
            " WHERE id = %s AND status = 'doing' RETURNING id",
            (job.id,),
        )
        if await cur.fetchone() is None:
            return "gone"
        if row is None or row[1] != "queued":
            return "settled"
        if row[2] != job.id and await _live(conn, row[2]):
            return "settled"
        # A separate statement: it sees a result committed while we waited for the lock.
        cur = await conn.execute("SELECT 1 FROM sca_results WHERE key = %s", (key,))
        if await cur.fetchone() is not None:
            return "settled"
        assert isinstance(key, str)
        await _defer_new(conn, app, key, row[0])
        return "requeued"
