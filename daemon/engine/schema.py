"""The engine's schema: procrastinate's tables, and ours next to them (``engine init|check``).

Ours, all named ``sca_*``:

* ``sca_jobs``: one row per job, keyed by ``profile:job_id:input_sha256``.
  ``attempt`` is the fencing token: a worker that takes the job bumps it, and
  only the holder of the current attempt may hand in a result.
* ``sca_blobs``: input, drop-folder snapshot and result files, in chunks.
* ``sca_results``: at most one per job (its primary key): the accepted result.
* ``sca_schema``: our schema version; ``engine check`` refuses another one.

Upgrades: ``init`` creates what is missing and records the version; a later
version adds ``ALTER`` steps to ``_STEPS`` (each applied once, in order).
procrastinate's own upgrades are its migration files (docs/runbook.md).
"""

from __future__ import annotations

from typing import Any

import procrastinate
from psycopg import AsyncConnection

__all__ = ["SCHEMA_VERSION", "check_schema", "init_schema"]

SCHEMA_VERSION = 1

_STEPS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS sca_jobs (
    key text PRIMARY KEY,
    profile text NOT NULL,
    job_id text NOT NULL,
    input_sha256 text NOT NULL,
    lane text NOT NULL,
    request jsonb NOT NULL,
    input_bytes bigint NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done')),
    attempt integer NOT NULL DEFAULT 0,
    worker_host text,
    started_at timestamptz,
    procrastinate_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);
CREATE INDEX IF NOT EXISTS sca_jobs_open ON sca_jobs (profile, lane) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS sca_blobs (
    key text NOT NULL REFERENCES sca_jobs (key) ON DELETE CASCADE,
    kind text NOT NULL,
    name text NOT NULL,
    part integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (key, kind, name, part)
);
CREATE TABLE IF NOT EXISTS sca_results (
    key text PRIMARY KEY REFERENCES sca_jobs (key) ON DELETE CASCADE,
    attempt integer NOT NULL,
    worker_host text NOT NULL,
    reply jsonb NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
""",
}


async def _version(conn: AsyncConnection[Any]) -> int | None:
    cur = await conn.execute("SELECT to_regclass('sca_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT max(version) FROM sca_schema")
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def _has_procrastinate(conn: AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])


async def init_schema(conn: AsyncConnection[Any], app: procrastinate.App) -> list[str]:
    """Create or upgrade both schemas (idempotent). Returns what was done."""
    done: list[str] = []
    if not await _has_procrastinate(conn):
        await app.schema_manager.apply_schema_async()
        done.append("procrastinate schema applied")
    async with conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS sca_schema (version integer NOT NULL)")
        # One init at a time: two hosts running `engine init` at once wait here.
        await conn.execute("LOCK TABLE sca_schema IN EXCLUSIVE MODE")
        current = await _version(conn) or 0
        for version in sorted(v for v in _STEPS if v > current):
            await conn.execute(_STEPS[version])
            await conn.execute("INSERT INTO sca_schema (version) VALUES (%s)", (version,))
            done.append(f"sir-convert-a-lot schema version {version} applied")
    return done


async def check_schema(conn: AsyncConnection[Any]) -> str | None:
    """None when both schemas are there at this version; otherwise what is wrong."""
    if not await _has_procrastinate(conn):
        return "procrastinate's schema is missing: run `sir-convert-a-lot engine init`"
    version = await _version(conn)
    if version is None:
        return "the sir-convert-a-lot schema is missing: run `sir-convert-a-lot engine init`"
    if version < SCHEMA_VERSION:
        return f"schema version {version} is older than {SCHEMA_VERSION}: run `engine init`"
    if version > SCHEMA_VERSION:
        return f"schema version {version} is newer than this program's {SCHEMA_VERSION}"
    return None
