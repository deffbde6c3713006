"""Scale-out: the shared job engine with 1, 2 and 4 worker processes (``--only scaleout``).

A real PostgreSQL (Debian's server, started as ``postgres`` on a temporary
folder; needs root), one ingest node that converts nothing itself, and N
worker nodes whose stand-in converter holds its lane for ``HOLD`` seconds per
job without using the CPU (``engine_hold``, daemon/faults.py): the stand-in
for GPU time. Each run drops ``PER_WORKER * N`` small files at once and times
them from the drop to the last sidecar; the scaling efficiency at N workers is
``(jobs_N / t_N) / (N * jobs_1 / t_1)``.

Then the engine path's cost per small real job (html→md, warm workers)
against the embedded path: files dropped one at a time, drop → sidecar, the
ratio of the medians.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from daemon.sidecar import META_SUFFIX
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.plan import Bench
from ops.daemon_harness import DaemonProcess, daemon_env, free_port

__all__ = ["measure_scaleout"]

HOLD = 0.5
PER_WORKER = 12
WORKERS = (1, 2, 4)
SERIAL_JOBS = 8


def _html(i: int, tag: str) -> bytes:
    return f"<html><body><h1>{tag} {i}</h1><p>Small page {i}.</p></body></html>".encode()


def _engine_toml(url: str, password_file: Path) -> str:
    return (
        f'engine_url = "{url}"\nengine_password_file = "{password_file}"\n'
        "engine_poll_seconds = 0.05\nsettle_seconds = 0.2\n"
    )


def _worker(
    base: Path, name: str, engine: str, *, hold: float, models: Path | None
) -> DaemonProcess:
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = base / "config.toml"
    config.write_text(
        f'[profiles.eval]\ndata_root = "{base / "root"}"\nhttp_port = {port}\n'
        f'node_name = "{name}"\ngpu_policy = "preferred"\n'
        + (f'models_dir = "{models}"\n' if models else "")
        + engine
        + "cpu = { workers = 1, express_workers = "
        + ("0 }\n" if hold else "1 }\n")
    )
    env = {"SIR_CONVERT_A_LOT_CONFIG": str(config), "SIR_CONVERT_A_LOT_PROFILE": "eval"}
    if hold:
        env["SIR_CONVERT_A_LOT_FAULTS"] = json.dumps({"engine_hold": hold})
    return DaemonProcess(base, port, daemon_env(env), args=("worker", "--lanes", "cpu")).start()


def _drain(daemon: BenchDaemon, names: list[str], timeout: float) -> float:
    """Drop ``names`` at once (renames from staging); seconds until every sidecar is there."""
    started = time.monotonic()
    for name in names:
        (daemon.staging / name).rename(daemon.inbox / "to-md" / name)
    want = {f"{Path(n).stem}.md{META_SUFFIX}" for n in names}
    deadline = started + timeout
    while time.monotonic() < deadline:
        if want <= {p.name for p in (daemon.outbox / "to-md").glob(f"*{META_SUFFIX}")}:
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"{len(names)} jobs not done in {timeout:.0f} s")


def _stage(daemon: BenchDaemon, tag: str, count: int) -> list[str]:
    daemon.staging.mkdir(parents=True, exist_ok=True)
    (daemon.inbox / "to-md").mkdir(parents=True, exist_ok=True)
    names = [f"{tag}-{i:04}.html" for i in range(count)]
    for i, name in enumerate(names):
        (daemon.staging / name).write_bytes(_html(i, tag))
    return names


def _serial(daemon: BenchDaemon, tag: str) -> list[float]:
    """Per-job drop → sidecar seconds, one job at a time."""
    return [_drain(daemon, _stage(daemon, f"{tag}{i}", 1), 120) for i in range(SERIAL_JOBS)]


def measure_scaleout(bench: Bench) -> dict[str, Any]:
    from tests.fixtures.engine import Postgres, engine_available

    why = engine_available()
    if why is not None and why != "network namespaces need root":
        return {"skipped": why}
    pg = Postgres(["127.0.0.1"], free_port())
    nodes: list[DaemonProcess] = []
    try:
        pg.create()
        engine = _engine_toml(pg.url("127.0.0.1"), pg.password_file)
        ingest = BenchDaemon(bench.folder("scaleout-ingest"), models_dir=None, extra=engine)
        ingest.config.write_text(ingest.config.read_text() + "local_lanes = []\n")
        init = DaemonProcess(ingest.base, 0, ingest.env(), args=("engine", "init")).start()
        assert init.proc is not None and init.proc.wait(120) == 0, init.tail()
        nodes.append(ingest.start())
        ingest.wait_ready(timeout=300)
        runs: dict[str, Any] = {}
        for n in WORKERS:
            workers = [
                _worker(bench.folder(f"scaleout-w{n}-{i}"), f"w{i}", engine, hold=HOLD, models=None)
                for i in range(n)
            ]
            nodes += workers
            deadline = time.monotonic() + 120
            while pg.query("SELECT count(*) FROM procrastinate_workers")[0][0] != n:
                assert time.monotonic() < deadline, "worker nodes did not register"
                time.sleep(0.2)
            jobs = PER_WORKER * n
            seconds = _drain(ingest, _stage(ingest, f"n{n}", jobs), 300)
            runs[str(n)] = {
                "jobs": jobs,
                "seconds": round(seconds, 3),
                "jobs_per_second": round(jobs / seconds, 3),
            }
            bench.log(f"scaleout: {n} worker(s), {jobs} jobs in {seconds:.2f} s")
            for worker in workers:
                worker.stop(timeout=30)
        base = runs["1"]["jobs_per_second"]
        for n in WORKERS:
            runs[str(n)]["efficiency"] = round(runs[str(n)]["jobs_per_second"] / (n * base), 3)
        # The cost per small real job: engine (ingest + one real worker node) vs embedded.
        real = _worker(
            bench.folder("scaleout-real"), "real", engine, hold=0, models=bench.models_dir
        )
        nodes.append(real)
        real.wait_ready(timeout=300)
        _serial(ingest, "warm")
        engine_seconds = _serial(ingest, "engine")
        ingest.stop()
        real.stop()
        embedded = BenchDaemon(
            bench.folder("scaleout-embedded"),
            models_dir=bench.models_dir,
            extra="settle_seconds = 0.2\ncpu = { workers = 1, express_workers = 1 }\n",
        )
        nodes.append(embedded.start())
        embedded.wait_ready(timeout=300)
        _serial(embedded, "warm")
        embedded_seconds = _serial(embedded, "embedded")
        e, m = statistics.median(engine_seconds), statistics.median(embedded_seconds)
        return {
            "hold_seconds": HOLD,
            "runs": runs,
            "efficiency_at_4": runs["4"]["efficiency"],
            "per_job": {
                "engine_median_seconds": round(e, 4),
                "embedded_median_seconds": round(m, 4),
                "ratio": round(e / m, 3),
                "jobs": SERIAL_JOBS,
            },
        }
    finally:
        for node in nodes:
            if node.alive():
                node.stop(timeout=30)
        pg.destroy()
