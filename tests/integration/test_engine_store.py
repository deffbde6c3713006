"""The engine's statements on a real PostgreSQL: idempotent submit, the attempt fence,
one accepted result, done; and ``engine init|check`` from the command line."""

from __future__ import annotations

import asyncio
import os
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


def _cli(tmp_path: Path, pg: Postgres, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\n'
        f'engine_url = "{pg.url("127.0.0.1")}"\nengine_password_file = "{pg.password_file}"\n'
    )
    env = daemon_env({"SIR_CONVERT_A_LOT_CONFIG": str(config), "SIR_CONVERT_A_LOT_PROFILE": "eval"})
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_engine_check_init_and_the_fence(tmp_path: Path, pg: Postgres) -> None:
    missing = _cli(tmp_path, pg, "engine", "check")
    assert missing.returncode == 75, missing.stderr
    assert "engine_unavailable" in missing.stderr
    first = _cli(tmp_path, pg, "engine", "init")
    assert first.returncode == 0, first.stderr
    assert "schema version 1 applied" in first.stdout
    again = _cli(tmp_path, pg, "engine", "init")
    assert again.returncode == 0 and "up to date" in again.stdout
    ok = _cli(tmp_path, pg, "engine", "check")
    assert ok.returncode == 0, ok.stderr
    profile = ProfileSettings(
        name="eval",
        data_root=tmp_path / "root",
        engine_url=pg.url("127.0.0.1"),
        engine_password_file=pg.password_file,
    )
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
    finally:
        await pool.close()
