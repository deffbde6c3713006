"""A lane against a real, misbehaving worker process (tests/fixtures/fake_worker.py).

Finding 11: one oversized reply killed a slot for good. Now whatever a worker
sends that cannot be read is that worker's crash: the job fails (or is retried),
the worker is replaced and the slot serves the next job. Finding 10: a worker
growing past the ceiling *during* a job is killed and the job ends
``resource_limit_exceeded``, not retried.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from converters.base import Lane, Limits
from converters.errors import SirError, Timeout
from daemon.errors import ResourceLimitExceeded, WorkerCrashed
from daemon.lane_settings import LaneSettings
from daemon.metrics import Metrics
from daemon.wire import Hello, JobReply, JobRequest
from daemon.worker_process import WorkerProcess
from daemon.workers import LanePool

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_worker.py"


@pytest.fixture(autouse=True)
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WorkerProcess, "argv", (sys.executable, str(FAKE)))


async def _pool(**lane: Any) -> LanePool:
    settings = LaneSettings(**{"workers": 1, "job_timeout_seconds": 20, **lane})
    hello = Hello(lane=Lane.CPU, gpu_policy="cpu", limits=Limits())
    pool = LanePool(settings, hello, Metrics("test", routes=[]), queue_size=8)
    await pool.start()
    return pool


@pytest.fixture
async def pool() -> AsyncIterator[LanePool]:
    p = await _pool(memory_ceiling_mb=300, hard_memory_factor=0)
    yield p
    await p.close()


def _job(act: str, argument: object = None, **extra: str) -> JobRequest:
    """A job the fake worker acts on: its id is ``act`` or ``act:argument``."""
    job_id = act if argument is None else f"{act}:{argument}"
    fields = {"source": "md", "target": "pdf", "input_path": "", "output_path": "", **extra}
    return JobRequest(job_id=job_id, **fields)


def _counted(pool: LanePool, name: str, **labels: str) -> float:
    value = pool.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize("act", ["huge", "garbage", "fields", "exit"])
async def test_an_unreadable_reply_is_a_crash_and_the_slot_goes_on(
    pool: LanePool, act: str
) -> None:
    with pytest.raises(WorkerCrashed) as raised:
        await asyncio.wait_for(pool.run(_job(act)), 30)
    assert raised.value.retryable
    reply = await asyncio.wait_for(pool.run(_job("ok")), 30)
    assert reply.ok is True
    assert pool.dead_slots() == []
    restarts = "sir_convert_a_lot_worker_restarts_total"
    assert _counted(pool, restarts, lane="cpu", reason="crash") == 1


async def test_a_worker_past_the_ceiling_during_a_job_is_killed_and_not_retried(
    pool: LanePool,
) -> None:
    starts: list[int] = []
    with pytest.raises(ResourceLimitExceeded) as raised:
        await asyncio.wait_for(pool.run(_job("alloc", 2000), on_start=lambda: starts.append(1)), 30)
    assert raised.value.code == "resource_limit_exceeded"
    assert not raised.value.retryable
    assert "memory_ceiling_mb (300)" in raised.value.message
    assert starts == [1]  # one worker took it: no amplification
    assert (await asyncio.wait_for(pool.run(_job("ok")), 30)).ok is True


async def test_retry_killed_jobs_hands_a_memory_kill_back_as_a_crash() -> None:
    pool = await _pool(memory_ceiling_mb=300, hard_memory_factor=0, retry_killed_jobs=True)
    try:
        with pytest.raises(WorkerCrashed, match="resource_limit_exceeded"):
            await asyncio.wait_for(pool.run(_job("alloc", 2000)), 30)
    finally:
        await pool.close()


async def test_a_job_past_its_budget_times_out(pool: LanePool) -> None:
    with pytest.raises(Timeout):
        await asyncio.wait_for(pool.run(_job("sleep", 30), timeout=1), 30)
    assert (await asyncio.wait_for(pool.run(_job("ok")), 30)).ok is True


async def test_a_dead_slot_task_is_shown_and_restarted(
    pool: LanePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_get = pool.queue.get
    calls = 0

    async def broken_get(*, express_only: bool) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        return await queue_get(express_only=express_only)

    await asyncio.wait_for(_until(lambda: pool.slots[0].warm), 30)
    monkeypatch.setattr(pool.queue, "get", broken_get)
    # wake the waiting slot so that it calls the broken get
    await asyncio.wait_for(pool.run(_job("ok")), 30)
    assert _counted(pool, "sir_convert_a_lot_slot_errors_total", lane="cpu", kind="slot") == 1
    assert (await asyncio.wait_for(pool.run(_job("ok")), 30)).ok is True
    assert pool.dead_slots() == []


async def test_an_exception_while_serving_fails_the_job_internal_error(
    pool: LanePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = WorkerProcess.run

    async def broken_run(
        self: WorkerProcess, job: JobRequest, timeout: float, drop_fd: int | None = None
    ) -> JobReply:
        if job.job_id == "boom":
            raise RuntimeError("injected")
        return await real_run(self, job, timeout, drop_fd)

    monkeypatch.setattr(WorkerProcess, "run", broken_run)
    with pytest.raises(SirError) as raised:
        await asyncio.wait_for(pool.run(_job("boom")), 30)
    assert raised.value.code == "internal_error"
    assert "RuntimeError: injected" in raised.value.message
    assert (await asyncio.wait_for(pool.run(_job("ok")), 30)).ok is True
    assert _counted(pool, "sir_convert_a_lot_slot_errors_total", lane="cpu", kind="job") == 1


async def test_a_slow_express_job_starts_over_on_a_regular_slot(tmp_path: Path) -> None:
    small = tmp_path / "small.md"
    small.write_text("# hi\n")
    pool = await _pool(express_workers=1, express_seconds=0.5, hard_memory_factor=0)
    starts: list[int] = []
    try:
        await asyncio.wait_for(_until(lambda: all(s.warm for s in pool.slots)), 30)
        heavy = _job("sleep", 3, source="docx", target="md")
        blocker = asyncio.ensure_future(pool.run(heavy))
        await asyncio.sleep(0.2)  # the regular slot is busy now
        job = _job("sleep", 1.5, input_path=str(small))
        reply = await asyncio.wait_for(pool.run(job, on_start=lambda: starts.append(1)), 60)
        assert (await blocker).ok is True
    finally:
        await pool.close()
    assert reply.ok is True
    assert starts == [1]  # one attempt, although two workers took it


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


def test_a_worker_whose_daemon_died_during_its_start_exits_at_once() -> None:
    """A daemon SIGKILLed while its worker was still importing: the worker (now
    re-parented) must not warm up and live on as an orphan (long chaos mode
    found four). ``--parent`` names a pid that is not its parent."""
    import signal
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.worker", "--parent", "999999999"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # it kills its own process group: not ours
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.wait(timeout=60) == -signal.SIGKILL
