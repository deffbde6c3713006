"""What travels through the engine's database, and the statements that move it.

The ingest node ``submit``s a job (its request, input bytes and drop-folder
snapshot, idempotently by key), ``poll``s for results and marks the job
``done`` once its sidecar is published. A worker node ``take``s a job (which
bumps its ``attempt``, the fencing token) and hands its result in with
``accept``: in one transaction, under the job row's lock, only when the attempt
is still its own, the job is not done and no result exists. A worker that was
paused past the stall time-out (its job went to another worker, which took a
newer attempt) finds its result refused: it is discarded, never published.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict

from converters.base import Lane
from daemon.wire import JobReply, JobRequest

__all__ = [
    "CHUNK_BYTES",
    "Polled",
    "Taken",
    "accept",
    "depth",
    "files_of",
    "mark_done",
    "open_keys",
    "poll",
    "prune_done",
    "submit",
    "take",
]

CHUNK_BYTES = 1024 * 1024
# Blob kinds: the input, the drop folder's files, the result's files.
INPUT, DROP, OUTPUT = "input", "drop", "output"

Pool = AsyncConnectionPool[Any]


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)


class Taken(_Row):
    """A job a worker node took: its attempt (fencing token) and its request."""

    key: str
    attempt: int
    lane: Lane
    request: JobRequest


class Polled(_Row):
    """What the ingest node learns about one of its jobs."""

    key: str
    started: bool
    worker_host: str | None
    reply: JobReply | None
    # procrastinate's state of the job carrying the key (None: it knows no such job).
    queue_state: str | None


async def _put_blob(cur: Any, key: str, kind: str, name: str, data: bytes) -> None:
    parts = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    await cur.executemany(
        "INSERT INTO sca_blobs (key, kind, name, part, data) VALUES (%s, %s, %s, %s, %s)",
        [(key, kind, name, i, part) for i, part in enumerate(parts)],
    )


async def _blobs(cur: Any, key: str, kind: str) -> dict[str, bytes]:
    await cur.execute(
        "SELECT name, data FROM sca_blobs WHERE key = %s AND kind = %s ORDER BY name, part",
        (key, kind),
    )
    out: dict[str, bytearray] = {}
    for name, data in await cur.fetchall():
        out.setdefault(name, bytearray()).extend(data)
    return {name: bytes(data) for name, data in out.items()}


async def submit(
    pool: Pool,
    *,
    key: str,
    profile: str,
    job_id: str,
    sha256: str,
    lane: Lane,
    request: JobRequest,
    data: bytes,
    drop: Mapping[str, bytes],
) -> bool:
    """Store a job once. False when the key was there already (a re-submit after a crash)."""
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO sca_jobs (key, profile, job_id, input_sha256, lane, request, input_bytes)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING key",
            (
                key,
                profile,
                job_id,
                sha256,
                lane.value,
                Jsonb(request.model_dump(mode="json")),
                len(data),
            ),
        )
        if await cur.fetchone() is None:
            return False
        await _put_blob(cur, key, INPUT, "input", data)
        for name, content in drop.items():
            await _put_blob(cur, key, DROP, name, content)
    return True


async def take(pool: Pool, key: str, host: str) -> tuple[Taken, bytes, dict[str, bytes]] | None:
    """Take a job for a new attempt; None when it has a result or is done already."""
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "UPDATE sca_jobs SET attempt = attempt + 1, worker_host = %s, started_at = now()"
            " WHERE key = %s AND state = 'queued'"
            " AND NOT EXISTS (SELECT 1 FROM sca_results r WHERE r.key = sca_jobs.key)"
            " RETURNING attempt, lane, request",
            (host, key),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        taken = Taken(
            key=key, attempt=row[0], lane=Lane(row[1]), request=JobRequest.model_validate(row[2])
        )
        data = (await _blobs(cur, key, INPUT)).get("input", b"")
        return taken, data, await _blobs(cur, key, DROP)


async def accept(
    pool: Pool,
    taken: Taken,
    host: str,
    reply: JobReply,
    files: Mapping[str, bytes],
) -> bool:
    """Hand a result in. True: accepted (the only one). False: discarded (late or done)."""
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "SELECT attempt, state FROM sca_jobs WHERE key = %s FOR UPDATE", (taken.key,)
        )
        row = await cur.fetchone()
        if row is None or row[0] != taken.attempt or row[1] != "queued":
            return False
        await cur.execute(
            "INSERT INTO sca_results (key, attempt, worker_host, reply) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO NOTHING RETURNING key",
            (taken.key, taken.attempt, host, Jsonb(reply.model_dump(mode="json"))),
        )
        if await cur.fetchone() is None:
            return False
        for name, content in files.items():
            await _put_blob(cur, taken.key, OUTPUT, name, content)
    return True


async def poll(pool: Pool, keys: Iterable[str]) -> list[Polled]:
    """The state of the given jobs, in one statement."""
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT j.key, j.started_at IS NOT NULL, j.worker_host, r.reply, p.status::text"
            " FROM sca_jobs j"
            " LEFT JOIN sca_results r ON r.key = j.key"
            " LEFT JOIN procrastinate_jobs p ON p.id = j.procrastinate_id"
            " WHERE j.key = ANY(%s)",
            (list(keys),),
        )
        return [
            Polled(
                key=key,
                started=started,
                worker_host=host,
                reply=JobReply.model_validate(reply) if reply is not None else None,
                queue_state=state,
            )
            for key, started, host, reply, state in await cur.fetchall()
        ]


async def files_of(pool: Pool, key: str) -> dict[str, bytes]:
    """The accepted result's files, by name."""
    async with pool.connection() as conn, conn.cursor() as cur:
        return await _blobs(cur, key, OUTPUT)


async def mark_done(pool: Pool, keys: Iterable[str]) -> None:
    """The ingest node published these jobs: done, and their bytes are dropped."""
    keys = list(keys)
    if not keys:
        return
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE sca_jobs SET state = 'done', done_at = now()"
            " WHERE key = ANY(%s) AND state = 'queued'",
            (keys,),
        )
        await conn.execute("DELETE FROM sca_blobs WHERE key = ANY(%s)", (keys,))


async def prune_done(pool: Pool, profile: str, hours: float) -> int:
    """Forget the profile's jobs done more than ``hours`` ago (their results go with
    them); the rows of open jobs are never touched. Returns how many went."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "DELETE FROM sca_jobs WHERE profile = %s AND state = 'done'"
            " AND done_at < now() - make_interval(secs => %s)",
            (profile, hours * 3600),
        )
        return int(cur.rowcount)


async def open_keys(pool: Pool, profile: str) -> list[str]:
    """The profile's jobs the engine still holds open."""
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT key FROM sca_jobs WHERE profile = %s AND state = 'queued'", (profile,)
        )
        return [row[0] for row in await cur.fetchall()]


async def depth(pool: Pool) -> dict[str, int]:
    """Jobs waiting for a worker (no result yet), per lane, all profiles."""
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT lane, count(*) FROM sca_jobs j WHERE state = 'queued'"
            " AND NOT EXISTS (SELECT 1 FROM sca_results r WHERE r.key = j.key) GROUP BY lane"
        )
        found = {lane: int(n) for lane, n in await cur.fetchall()}
    return {lane.value: found.get(lane.value, 0) for lane in Lane}
