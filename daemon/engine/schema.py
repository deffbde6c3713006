"""The engine's schema: procrastinate's tables, and ours next to them (``engine init|check``).

Ours, all named ``sca_*``:

* ``sca_jobs``: one row per job, keyed by ``profile:job_id:input_sha256``.
  ``attempt`` is the fencing token: a worker that takes the job bumps it, and
  only the holder of the current attempt may hand in a result.
* ``sca_blobs``: input, drop-folder snapshot and result files, in chunks.
* ``sca_results``: at most one per job (its primary key): the accepted result.
* ``sca_schema``: our schema version; ``engine check`` refuses another one.
* ``sca_procrastinate``: the procrastinate schema level the database holds (the
  version of the newest migration file applied; releases between migrations
  share a level) and the migration files applied.

Upgrades, all by ``init``, under one advisory lock (two hosts running it at
once take turns): our steps in ``_STEPS`` past the recorded version, each once,
in order, in one transaction; then procrastinate's own migration files (shipped
in its package, named ``MM.mm.pp_NN_*.sql``) past the recorded level up to the
installed procrastinate's, in order, one transaction each, each recorded
(an upgrade cut short resumes after the last file applied). ``check`` refuses a
database behind or ahead of this program, for either schema.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import psycopg
from procrastinate.schema import SchemaManager
from psycopg import AsyncConnection

from daemon.errors import EngineUnavailable

__all__ = [
    "SCHEMA_VERSION",
    "check_schema",
    "init_schema",
    "procrastinate_level",
    "procrastinate_release",
]

SCHEMA_VERSION = 2
_INIT_LOCK = 0x5CA_1417  # pg_advisory_lock key of `engine init`

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
    # The procrastinate version whose schema the database holds (``init`` upgrades it).
    2: """
CREATE TABLE IF NOT EXISTS sca_procrastinate (
    version text NOT NULL,
    migration text,
    applied_at timestamptz NOT NULL DEFAULT now()
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


def procrastinate_release() -> str:
    """The installed procrastinate's version."""
    return importlib.metadata.version("procrastinate")


def _key(version: str) -> tuple[int, int, int]:
    """``3.10``, ``3.10.0`` and a migration's ``03.10.00`` compare as (3, 10, 0)."""
    parts = [int(x) for x in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    return parts[0], parts[1], parts[2]


def _dotted(version: str) -> str:
    return ".".join(map(str, _key(version)))


def _files() -> list[Path]:
    return sorted(Path(SchemaManager.get_migrations_path()).glob("*.sql"))


@functools.cache  # the installed package's: read once, not on every schema check
def procrastinate_level() -> str:
    """The schema level the installed procrastinate expects: the version of its newest
    migration file (releases without a migration share their level: 3.5 to 3.10 are
    all at 3.4.0), so nodes on different patch releases of one level agree."""
    release = _key(procrastinate_release())
    levels = [_key(p.name.split("_", 1)[0]) for p in _files()]
    return _dotted(str(max((v for v in levels if v <= release), default=(0, 0, 0))))


# The level of a database made before levels were recorded (our schema version 1,
# which asked for procrastinate 3.5 or later: level 3.4.0).
_FIRST_LEVEL = "3.4.0"


def _migrations(after: str, upto: str) -> list[Path]:
    """procrastinate's migration files past level ``after`` up to ``upto``, in order."""
    return [p for p in _files() if _key(after) < _key(p.name.split("_", 1)[0]) <= _key(upto)]


async def _recorded(conn: AsyncConnection[Any]) -> tuple[str | None, set[str]]:
    """The level procrastinate's schema was last brought to, and the migration
    files applied since (an upgrade cut short resumes after the last one)."""
    cur = await conn.execute("SELECT to_regclass('sca_procrastinate') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None, set()
    cur = await conn.execute(
        "SELECT version FROM sca_procrastinate WHERE migration IS NULL"
        " ORDER BY applied_at DESC, ctid DESC LIMIT 1"
    )
    row = await cur.fetchone()
    release = str(row[0]) if row else None
    cur = await conn.execute("SELECT migration FROM sca_procrastinate WHERE migration IS NOT NULL")
    return release, {str(r[0]) for r in await cur.fetchall()}


async def init_schema(conn: AsyncConnection[Any]) -> list[str]:
    """Create or upgrade both schemas (idempotent). Returns what was done; a
    database ahead of this program raises ``EngineUnavailable``."""
    autocommit = conn.autocommit
    await conn.set_autocommit(True)  # each block below is its own transaction
    # One init at a time: two hosts running `engine init` at once take turns.
    await conn.execute("SELECT pg_advisory_lock(%s)", (_INIT_LOCK,))
    try:
        return await _init(conn, procrastinate_level())
    finally:
        if not conn.closed:  # a lost connection frees the lock anyway; keep its error
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_INIT_LOCK,))
                await conn.set_autocommit(autocommit)


async def _init(conn: AsyncConnection[Any], level: str) -> list[str]:
    done: list[str] = []
    async with conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS sca_schema (version integer NOT NULL)")
        current = await _version(conn) or 0
        if current > SCHEMA_VERSION:
            raise EngineUnavailable(_ahead(current))
        fresh = not await _has_procrastinate(conn)
        if fresh:
            await conn.execute(SchemaManager.get_schema())
            done.append(f"procrastinate schema {procrastinate_release()} applied (level {level})")
        for version in sorted(v for v in _STEPS if v > current):
            await conn.execute(_STEPS[version])
            await conn.execute("INSERT INTO sca_schema (version) VALUES (%s)", (version,))
            done.append(f"sir-convert-a-lot schema version {version} applied")
        recorded, applied = (level, set()) if fresh else await _recorded(conn)
        unrecorded = recorded is None
        if recorded is None:
            recorded = _FIRST_LEVEL
            done.append(f"procrastinate schema taken as level {recorded} (made before levels)")
        if _key(recorded) > _key(level):
            raise EngineUnavailable(_level_ahead(recorded))
        if _key(recorded) == _key(level):
            if fresh or unrecorded:
                await _record(conn, level)
            return done
    # One transaction per file: a later file may use an enum value an earlier one added.
    for path in _migrations(recorded, level):
        if path.name in applied:
            continue
        async with conn.transaction():
            await conn.execute(path.read_text(encoding="utf-8"))
            await _record(conn, _dotted(path.name.split("_", 1)[0]), path.name)
        done.append(f"procrastinate migration {path.name} applied")
    async with conn.transaction():
        await _record(conn, level)
    return done


async def _record(conn: AsyncConnection[Any], version: str, migration: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO sca_procrastinate (version, migration) VALUES (%s, %s)", (version, migration)
    )


def _ahead(version: int) -> str:
    return f"schema version {version} is newer than this program's {SCHEMA_VERSION}"


def _level_ahead(recorded: str) -> str:
    return (
        f"procrastinate's schema is at level {recorded}, newer than the installed "
        f"procrastinate {procrastinate_release()} knows ({procrastinate_level()}): "
        "upgrade this program"
    )


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
        return _ahead(version)
    (recorded, _), level = await _recorded(conn), procrastinate_level()
    if recorded is None or _key(recorded) < _key(level):
        return (
            f"procrastinate's schema is at level {recorded or 'unknown'}, older than the "
            f"installed procrastinate's {level}: run `sir-convert-a-lot engine init`"
        )
    if _key(recorded) > _key(level):
        return _level_ahead(recorded)
    return None
