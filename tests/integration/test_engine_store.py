"""The engine's statements on a real PostgreSQL: idempotent submit, the attempt fence,
one accepted result, done; and ``engine init|check`` from the command line."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.base import Lane
from daemon.config import ProfileSettings
from daemon.wire import JobReply, JobRequest
from ops.daemon_harness import REPO, daemon_env, free_port
from tests.fixtures.engine import Postgres, engine_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        engine_available() not in (None, "network namespaces need root") or os.geteuid() != 0,
        reason=str(engine_available()),
    ),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres(["127.0.0.1"], free_port())
    try:
        yield server.create()
    finally:
        server.destroy()


def _cli(
    tmp_path: Path, pg: Postgres, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\n'
        f'engine_url = "{pg.url("127.0.0.1")}"\nengine_password_file = "{pg.password_file}"\n'
    )
    base = {"SIR_CONVERT_A_LOT_CONFIG": str(config), "SIR_CONVERT_A_LOT_PROFILE": "eval"}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=daemon_env(base | (env or {})),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _profile(tmp_path: Path, pg: Postgres) -> ProfileSettings:
    return ProfileSettings(
        name="eval",
        data_root=tmp_path / "root",
        engine_url=pg.url("127.0.0.1"),
        engine_password_file=pg.password_file,
    )


def test_engine_check_init_and_the_fence(tmp_path: Path, pg: Postgres) -> None:
    missing = _cli(tmp_path, pg, "engine", "check")
    assert missing.returncode == 75, missing.stderr
    assert "engine_unavailable" in missing.stderr
    first = _cli(tmp_path, pg, "engine", "init")
    assert first.returncode == 0, first.stderr
    assert "schema version 1 applied" in first.stdout
    assert "schema version 2 applied" in first.stdout
    again = _cli(tmp_path, pg, "engine", "init")
    assert again.returncode == 0 and "up to date" in again.stdout
    ok = _cli(tmp_path, pg, "engine", "check")
    assert ok.returncode == 0, ok.stderr
    profile = _profile(tmp_path, pg)
    asyncio.run(_fence(profile))


async def _fence(profile: ProfileSettings) -> None:
    from daemon.engine import store
    from daemon.engine.connect import make_pool

    pool = make_pool(profile)
    await pool.open(wait=True, timeout=10)
    try:
        request = JobRequest(
            job_id="j1", source="html", target="md", input_path="input.html", output_path="o.md"
        )
        data = b"x" * (store.CHUNK_BYTES * 2 + 5)  # three chunks
        args = {
            "key": "eval:j1:s",
            "profile": "eval",
            "job_id": "j1",
            "sha256": "s",
            "lane": Lane.CPU,
            "request": request,
            "data": data,
            "drop": {"img/a.png": b"png"},
        }
        assert await store.submit(pool, **args) is True  # type: ignore[arg-type]
        assert await store.submit(pool, **args) is False  # idempotent after a crash
        assert (await store.depth(pool))["cpu"] == 1
        first = await store.take(pool, "eval:j1:s", "paused-host")
        second = await store.take(pool, "eval:j1:s", "live-host")
        assert first is not None and second is not None
        assert first[1] == data and first[2] == {"img/a.png": b"png"}
        assert (first[0].attempt, second[0].attempt) == (1, 2)
        reply = JobReply(ok=True, converter="x")
        # The paused host's attempt is no longer the job's: refused.
        assert await store.accept(pool, first[0], "paused-host", reply, {"o.md": b"old"}) is False
        assert await store.accept(pool, second[0], "live-host", reply, {"o.md": b"new"}) is True
        assert await store.accept(pool, second[0], "live-host", reply, {"o.md": b"again"}) is False
        assert await store.take(pool, "eval:j1:s", "late-host") is None  # has a result
        [polled] = await store.poll(pool, ["eval:j1:s"])
        assert polled.reply == reply and polled.worker_host == "live-host"
        assert await store.files_of(pool, "eval:j1:s") == {"o.md": b"new"}
        assert await store.open_keys(pool, "eval") == ["eval:j1:s"]
        await store.mark_done(pool, ["eval:j1:s"])
        assert await store.open_keys(pool, "eval") == []
        assert await store.files_of(pool, "eval:j1:s") == {}
        # Done a week ago: pruned with its result; a fresh done job stays.
        assert await store.prune_done(pool, "eval", 24 * 7) == 0
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE sca_jobs SET done_at = now() - interval '8 days' WHERE key = 'eval:j1:s'"
            )
        assert await store.prune_done(pool, "other-profile", 24 * 7) == 0
        assert await store.prune_done(pool, "eval", 24 * 7) == 1
        assert await store.poll(pool, ["eval:j1:s"]) == []
    finally:
        await pool.close()


def test_a_stalled_job_moves_to_a_new_job_a_late_finish_cannot_touch(
    tmp_path: Path, pg: Postgres
) -> None:
    """The sweeper's move (``queue.requeue_stalled``): the stalled host's job ends
    failed and a new job carries the key; the host's late "finished" is refused and
    the new job still waits (with procrastinate's own retry, that late finish deleted
    the retried job and the key was never taken again)."""
    profile = _profile(tmp_path, pg)
    asyncio.run(_move(profile))


async def _stall(pool: object, worker: int) -> None:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
            " WHERE id = %s",
            (worker,),
        )


async def _move(profile: ProfileSettings) -> None:
    from procrastinate import exceptions as pexc
    from procrastinate.jobs import Status

    from daemon.engine import queue, store
    from daemon.engine.connect import make_app, make_pool, queue_name
    from daemon.engine.schema import init_schema

    pool = make_pool(profile)
    app = make_app(profile)
    await pool.open(wait=True, timeout=10)
    await app.open_async()
    try:
        async with pool.connection() as conn:
            await init_schema(conn)
        request = JobRequest(
            job_id="j2", source="html", target="md", input_path="input.html", output_path="o.md"
        )
        key = "eval:j2:s"
        await store.submit(
            pool,
            key=key,
            profile="eval",
            job_id="j2",
            sha256="s",
            lane=Lane.CPU,
            request=request,
            data=b"<p>x</p>",
            drop={},
        )
        assert await queue.defer(pool, app, key, Lane.CPU) is True
        assert await queue.defer(pool, app, key, Lane.CPU) is False  # one waits already
        manager = app.job_manager
        paused = await manager.register_worker()
        old = await manager.fetch_job(queues=[queue_name(Lane.CPU)], worker_id=paused)
        assert old is not None and old.task_kwargs == {"key": key}
        await _stall(pool, paused)
        [stalled] = await manager.get_stalled_jobs(
            queue=queue_name(Lane.CPU), seconds_since_heartbeat=60
        )
        assert await queue.requeue_stalled(pool, app, stalled) == "requeued"
        assert await queue.requeue_stalled(pool, app, stalled) == "gone"  # swept once
        with pytest.raises(pexc.ConnectorException):  # the paused host wakes and finishes
            await manager.finish_job(old, status=Status.SUCCEEDED, delete_job=True)
        with pytest.raises(pexc.ConnectorException):  # ... or fails, and retries
            await manager.retry_job(old)
        assert await queue.defer(pool, app, key, Lane.CPU) is False  # the new job waits
        [polled] = await store.poll(pool, [key])
        assert polled.queue_state == "todo" and polled.reply is None
        live = await manager.register_worker()
        new = await manager.fetch_job(queues=[queue_name(Lane.CPU)], worker_id=live)
        assert new is not None and new.id != old.id and new.task_kwargs == {"key": key}
        assert await queue.defer(pool, app, key, Lane.CPU) is False  # ... and runs: no twin
        # A stalled job whose key already has its result is not redone.
        taken = await store.take(pool, key, "live-host")
        assert taken is not None
        assert await store.accept(pool, taken[0], "live-host", JobReply(ok=True), {}) is True
        await _stall(pool, live)
        [stalled] = await manager.get_stalled_jobs(
            queue=queue_name(Lane.CPU), seconds_since_heartbeat=60
        )
        assert await queue.requeue_stalled(pool, app, stalled) == "settled"
        [polled] = await store.poll(pool, [key])
        assert polled.queue_state == "cancelled" and polled.reply is not None
    finally:
        await app.close_async()
        await pool.close()


def test_engine_init_upgrades_an_older_procrastinate_schema(tmp_path: Path, pg: Postgres) -> None:
    """A database made when procrastinate 3.0 was installed (built here from
    procrastinate's own migration files up to 3.0.0, with our version-1 tables;
    this program asks for 3.5 or later, and procrastinate shipped no migration
    between 3.5 and 3.10, so an older release exercises the path): ``engine check``
    refuses it, ``engine init`` applies our step 2 and procrastinate's later
    migrations in order (resuming after a cut-short upgrade), and the result has
    the same procrastinate functions as a fresh schema."""
    import psycopg
    from procrastinate.schema import SchemaManager

    from daemon.engine.schema import _STEPS  # our version-1 tables, as that release made them

    with psycopg.connect(url := pg.url("127.0.0.1"), password=pg.password, autocommit=True) as c:
        c.execute("CREATE DATABASE upgrade_from_3_0")
        c.execute("CREATE DATABASE fresh")
    fresh = url.rsplit("/", 1)[0] + "/fresh"
    url = url.rsplit("/", 1)[0] + "/upgrade_from_3_0"
    folder = Path(SchemaManager.get_migrations_path())
    migrations = sorted(folder.glob("*.sql"))
    old = [p for p in migrations if p.name < "03.00.00~"]
    assert old and old[0].name.startswith("00.00.00")
    with psycopg.connect(url, password=pg.password, autocommit=True) as conn:
        for path in old:  # one transaction each, as procrastinate's users apply them
            conn.execute(path.read_text(encoding="utf-8"))  # type: ignore[call-overload]
        conn.execute(_STEPS[1])  # type: ignore[call-overload]
        conn.execute("CREATE TABLE sca_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO sca_schema (version) VALUES (1)")
    env = {"SIR_CONVERT_A_LOT_ENGINE_URL": url}
    behind = _cli(tmp_path, pg, "engine", "check", env=env)
    assert behind.returncode == 75 and "older than 2" in behind.stderr, behind.stderr
    first = _cli(tmp_path, pg, "engine", "init", env=env)
    assert first.returncode == 0, first.stderr
    # No record of the release: taken as the installed one, nothing re-applied.
    assert "schema version 2 applied" in first.stdout
    assert "taken as level 3.4.0" in first.stdout and "migration" not in first.stdout
    first_newer = next(p for p in migrations if p.name > "03.00.00~")
    with psycopg.connect(url, password=pg.password) as conn:
        conn.execute("UPDATE sca_procrastinate SET version = '3.0.0'")
        # An upgrade cut short after its first file: that one is not applied again.
        conn.execute(first_newer.read_text(encoding="utf-8"))  # type: ignore[call-overload]
        conn.execute(
            "INSERT INTO sca_procrastinate (version, migration) VALUES ('3.1.0', %s)",
            (first_newer.name,),
        )
    stale = _cli(tmp_path, pg, "engine", "check", env=env)
    assert stale.returncode == 75 and "at level 3.0.0, older" in stale.stderr, stale.stderr
    upgraded = _cli(tmp_path, pg, "engine", "init", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    applied = [line.split()[2] for line in upgraded.stdout.splitlines() if "migration" in line]
    newer = [p.name for p in migrations if p.name > first_newer.name]
    assert applied == newer and newer, upgraded.stdout
    assert _cli(tmp_path, pg, "engine", "check", env=env).returncode == 0
    assert "up to date" in _cli(tmp_path, pg, "engine", "init", env=env).stdout

    functions = (
        "SELECT string_agg(p.oid::regprocedure::text, ',' ORDER BY 1) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname LIKE 'procrastinate%'"
    )
    made = _cli(tmp_path, pg, "engine", "init", env={"SIR_CONVERT_A_LOT_ENGINE_URL": fresh})
    assert made.returncode == 0 and "procrastinate schema" in made.stdout, made.stderr
    found = []
    for database in (url, fresh):
        with psycopg.connect(database, password=pg.password) as conn:
            found.append(conn.execute(functions).fetchone())  # type: ignore[call-overload]
    assert found[0] == found[1] and found[0] is not None and found[0][0]
    with psycopg.connect(url, password=pg.password) as conn:
        conn.execute("UPDATE sca_procrastinate SET version = '99.0.0'")
    ahead = _cli(tmp_path, pg, "engine", "init", env=env)
    assert ahead.returncode == 75 and "newer than the installed" in ahead.stderr, ahead.stderr
    from daemon.engine.schema import _key, procrastinate_level

    # 3.5 to 3.10 ship no migration past 03.04.00: all of them are at level 3.4.0.
    assert _key(procrastinate_level()) >= (3, 4, 0)
    assert procrastinate_level() in {".".join(map(str, _key(p.name))) for p in migrations}
    assert _key("3.10") == _key("03.10.00") == (3, 10, 0) > _key("3.9.9")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_engine_over_tls_verifies_the_server(tmp_path: Path) -> None:
    """docs/security.md's TLS set-up, for real: a server that refuses clients without
    TLS; ``sslmode=verify-full`` with the right CA works (the session is encrypted),
    another CA is refused with exit 75."""
    import psycopg

    server = Postgres(["127.0.0.1"], free_port(), tls=True)
    try:
        server.create()
        base = server.url("127.0.0.1")
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(base + "?sslmode=disable", password=server.password).close()
        verified = base + f"?sslmode=verify-full&sslrootcert={server.ca_file}"
        done = _cli(tmp_path, server, "engine", "init", env=_url(verified))
        assert done.returncode == 0, done.stderr
        with psycopg.connect(verified, password=server.password) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)
        other = Postgres(["127.0.0.1"], 0, tls=True)  # only its CA is used
        try:
            other._certificates()
            wrong = base + f"?sslmode=verify-full&sslrootcert={other.ca_file}"
            refused = _cli(tmp_path, server, "engine", "check", env=_url(wrong))
        finally:
            shutil.rmtree(other.base, ignore_errors=True)
        assert refused.returncode == 75, refused.stderr
        assert "certificate verify failed" in refused.stderr, refused.stderr
    finally:
        server.destroy()


def _url(url: str) -> dict[str, str]:
    return {"SIR_CONVERT_A_LOT_ENGINE_URL": url}
