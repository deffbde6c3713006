"""The procrastinate job that carries a key: deferring it, and moving it off a stalled host.

Each state change is one transaction on our pool, so ``sca_jobs.procrastinate_id``
always names the job that now carries the key:

* ``defer``: a new job in the lane's queue, with the key as its queueing lock
  (a second defer while one waits is a no-op), and its id recorded.
* ``requeue_stalled``: the job of a host whose heartbeat stopped (killed,
  paused, cut off) ends ``failed`` and a *new* job carries the key. The stalled
  host may wake up and finish: procrastinate then finishes the old job id, which
  is no longer waiting or running, so the new job is never touched. (Retrying the
  same job id instead let the late host's "finished" delete the retried job
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

__all__ = ["defer", "requeue_stalled"]

Pool = AsyncConnectionPool[Any]


async def _defer_in(
    conn: AsyncConnection[Any], app: procrastinate.App, key: str, lane: Lane
) -> int | None:
    """Defer inside the caller's transaction; None when a job for the key already waits."""
    job = app.configure_task(
        name=TASK_NAME, queue=queue_name(lane), queueing_lock=key
    ).make_new_job(key=key)
    try:
        async with conn.transaction():  # a savepoint: a waiting job leaves the rest intact
            deferred = await app.job_manager.defer_job_async(job, connection=conn)
    except pexc.AlreadyEnqueued:
        return None
    assert deferred.id is not None
    await conn.execute(
        "UPDATE sca_jobs SET procrastinate_id = %s WHERE key = %s", (deferred.id, key)
    )
    return deferred.id


async def defer(pool: Pool, app: procrastinate.App, key: str, lane: Lane) -> bool:
    """Hand the key to its lane's queue. False: a job for it waits already."""
    async with pool.connection() as conn, conn.transaction():
        return await _defer_in(conn, app, key, lane) is not None


async def requeue_stalled(pool: Pool, app: procrastinate.App, job: Job) -> str:
    """Take a stalled host's job away from it. Returns what happened:
    ``requeued`` (a new job carries the key), ``settled`` (the key has its result
    or is done: nothing to redo), or ``gone`` (another node swept it first, or
    the job finished meanwhile)."""
    key = job.task_kwargs.get("key")
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE procrastinate_jobs SET status = 'failed'"
            " WHERE id = %s AND status = 'doing' RETURNING id",
            (job.id,),
        )
        if await cur.fetchone() is None or not isinstance(key, str):
            return "gone"
        cur = await conn.execute(
            "SELECT lane FROM sca_jobs j WHERE key = %s AND state = 'queued'"
            " AND NOT EXISTS (SELECT 1 FROM sca_results r WHERE r.key = j.key) FOR UPDATE",
            (key,),
        )
        row = await cur.fetchone()
        if row is None:
            return "settled"
        await _defer_in(conn, app, key, Lane(row[0]))
        return "requeued"
