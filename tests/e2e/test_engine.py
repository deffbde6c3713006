"""The engine (issue 11): one ingest node and two worker nodes, each in its own network
namespace, with a real PostgreSQL between them.

Worker nodes run with the ingest node's folder covered by an empty tmpfs, so a
worker provably has no path to the data root: bytes travel through PostgreSQL.
The short mode proves exactly-once for 100 mixed files, then survives: a worker
SIGKILLed mid-job, a worker SIGSTOPped past the stall time-out (its late results
discarded, and it serves again), PostgreSQL stopped for 10 s, and the ingest node
SIGKILLed between claim and enqueue and between sidecar and done; last, an ingest
node with a one-slot local CPU lane spills its overflow to the workers. The long
mode (``SIR_CONVERT_A_LOT_TEST_LONG=1``) repeats the kill rounds three times.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.sidecar import META_SUFFIX
from ops.daemon_harness import DaemonProcess, daemon_env, free_port
from tests.fixtures.engine import Netns, Postgres, engine_available
from tests.fixtures.web_docs import make_png, make_text_pdf

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(engine_available() is not None, reason=str(engine_available())),
]

LONG = os.environ.get("SIR_CONVERT_A_LOT_TEST_LONG") == "1"
STALL = 4.0
SLOW = STALL + 4  # seconds a worker holds a slow-* file before converting it


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    tmp: Path
    netns: Netns
    pg: Postgres
    models: Path
    nodes: dict[str, DaemonProcess] = field(default_factory=dict)
    dropped: dict[str, bytes] = field(default_factory=dict)  # inbox-relative -> bytes

    # -- nodes -------------------------------------------------------------------

    def _config(self, name: str, extra: str) -> Path:
        base = self.tmp / name
        base.mkdir(exist_ok=True)
        config = base / "config.toml"
        config.write_text(
            "[profiles.eval]\n"
            f'data_root = "{base / "root"}"\n'
            f'http_host = "{self.netns.inside(name)}"\nhttp_port = {free_port()}\n'
            "allow_non_loopback = true\n"
            'gpu_policy = "preferred"\nsettle_seconds = 0.3\nrescan_interval_seconds = 2\n'
            "drain_seconds = 5\n"
            f'engine_url = "{self.pg.url(self.netns.outside(name))}"\n'
            f'engine_password_file = "{self.pg.password_file}"\n'
            f"engine_stall_seconds = {STALL}\nengine_poll_seconds = 0.1\n"
            f'node_name = "{name}"\n' + extra
        )
        return config

    def start(
        self, name: str, faults: dict[str, float] | None = None, local: str = "local_lanes = []\n"
    ) -> DaemonProcess:
        """Start (or restart) a node; ``local`` is the ingest node's own lanes."""
        old = self.nodes.get(name)
        if old is not None and old.alive():
            old.stop(timeout=30)
        if name == "ingest":
            config = self._config(name, local)
            args: tuple[str, ...] = ("run",)
            prefix = ["ip", "netns", "exec", self.netns.ns(name)]
        else:
            lanes = "gpu,cpu" if name == "w1" else "cpu"
            config = self._config(
                name,
                f'models_dir = "{self.models}"\ncpu = {{ workers = 1, express_workers = 1 }}\n',
            )
            args = ("worker", "--lanes", lanes)
            # The ingest node's folder is an empty tmpfs in here.
            prefix = self.netns.prefix_for(name, hide=[self.tmp / "ingest"])
        port = int(config.read_text().split("http_port = ")[1].split("\n")[0])
        env = {
            "SIR_CONVERT_A_LOT_CONFIG": str(config),
            "SIR_CONVERT_A_LOT_PROFILE": "eval",
            "SIR_CONVERT_A_LOT_SERVICE_REVISION": "test-revision",
        }
        if faults:
            env["SIR_CONVERT_A_LOT_FAULTS"] = json.dumps({"delay": faults})
        elif name != "ingest":
            # Worker nodes hold the files named slow-* long enough for a kill to land.
            env["SIR_CONVERT_A_LOT_FAULTS"] = json.dumps(
                {"delay": {"engine_job": SLOW}, "engine_job_only": "slow-"}
            )
        node = DaemonProcess(
            self.tmp / name,
            port,
            daemon_env(env),
            args=args,
            prefix=prefix,
            host=self.netns.inside(name),
        )
        node.root = self.tmp / name / "root"
        self.nodes[name] = node.start()
        return node

    @property
    def ingest(self) -> DaemonProcess:
        return self.nodes["ingest"]

    # -- files -------------------------------------------------------------------

    def drop(self, relative: str, data: bytes) -> None:
        staging = self.tmp / "staging" / relative
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.write_bytes(data)
        target = self.ingest.inbox / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        self.dropped[relative] = data

    def output_of(self, relative: str) -> Path:
        path = Path(relative)
        default = {"md": "pdf", "html": "md", "pdf": "md"}
        target = path.parts[0][3:] if path.parts[0].startswith("to-") else default[path.suffix[1:]]
        return self.ingest.outbox / path.with_suffix(f".{target}")

    def done(self, relatives: list[str]) -> bool:
        return all(Path(f"{self.output_of(r)}{META_SUFFIX}").exists() for r in relatives)

    def sidecar(self, relative: str) -> dict[str, object]:
        return dict(json.loads(Path(f"{self.output_of(relative)}{META_SUFFIX}").read_text()))

    def worker_running(self, host: str) -> str | None:
        """The key of a job ``host`` took and has not handed a result in for."""
        rows = self.pg.query(
            "SELECT j.key FROM sca_jobs j LEFT JOIN sca_results r ON r.key = j.key"
            f" WHERE j.worker_host = '{host}' AND r.key IS NULL AND j.state = 'queued'"
        )
        return str(rows[0][0]) if rows else None


def _check_exactly_once(cluster: Cluster) -> dict[str, dict[str, object]]:
    """Every dropped file: one output with its sidecar, the right bytes, archived input."""
    root = cluster.ingest
    assert not list(root.failed.rglob("*")), sorted(root.failed.rglob("*"))
    assert not [p for p in root.inbox.rglob("*.*") if p.suffix != ".png"]  # assets stay
    outputs = [p for p in root.outbox.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert len(outputs) == len(cluster.dropped), (len(outputs), len(cluster.dropped))
    sidecars: dict[str, dict[str, object]] = {}
    for relative, data in cluster.dropped.items():
        output = cluster.output_of(relative)
        body = output.read_bytes()
        if output.suffix == ".pdf":
            assert body.startswith(b"%PDF") and b"%%EOF" in body[-1024:], relative
        elif output.suffix == ".docx":
            with zipfile.ZipFile(output) as z:
                assert z.testzip() is None, relative
        else:
            assert body.decode("utf-8").strip(), relative
        meta = cluster.sidecar(relative)
        assert meta["status"] == "succeeded", meta
        assert meta["input"]["sha256"] == _sha(data), relative  # type: ignore[index]
        assert (root.archive / relative).read_bytes() == data
        sidecars[relative] = meta
    return sidecars


@pytest.fixture
def cluster(tmp_path: Path, tiny_models_dir: Path) -> Iterator[Cluster]:
    netns = Netns(["ingest", "w1", "w2"])
    pg = Postgres([netns.outside(n) for n in netns.names] + ["127.0.0.1"], free_port())
    c = Cluster(tmp_path, netns, pg, tiny_models_dir)
    try:
        netns.create()
        pg.create()
        init = tmp_path / "init"
        init.mkdir()
        (init / "config.toml").write_text(
            f'[profiles.eval]\ndata_root = "{init / "root"}"\n'
            f'engine_password_file = "{pg.password_file}"\n'
        )
        c.nodes["init"] = DaemonProcess(
            init,
            0,
            daemon_env(
                {
                    "SIR_CONVERT_A_LOT_CONFIG": str(init / "config.toml"),
                    "SIR_CONVERT_A_LOT_PROFILE": "eval",
                    "SIR_CONVERT_A_LOT_ENGINE_URL": pg.url("127.0.0.1"),
                }
            ),
            args=("engine", "init"),
        ).start()
        assert c.nodes["init"].proc is not None
        assert c.nodes["init"].proc.wait(60) == 0, c.nodes["init"].tail()
        yield c
    finally:
        for node in c.nodes.values():
            if node.alive():
                if node.proc is not None:
                    node.proc.send_signal(signal.SIGCONT)
                node.kill()
        pg.destroy()
        netns.destroy()


def _corpus(tmp: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for i in range(35):
        files[f"to-pdf/note{i:03}.md"] = f"# Note {i}\n\nSome *text* number {i}.\n".encode()
    for i in range(30):
        files[f"page{i:03}.html"] = (
            f"<html><body><h1>Page {i}</h1><p>Paragraph {i}.</p></body></html>".encode()
        )
    for i in range(25):
        files[f"to-docx/memo{i:03}.md"] = f"# Memo {i}\n\n- item {i}\n- more\n".encode()
    for i in range(10):
        pdf = make_text_pdf(tmp / f"paper{i}.pdf")
        files[f"paper{i:03}.pdf"] = pdf.read_bytes() + f"\n% {i}\n".encode()
    return files


def test_engine_exactly_once_across_kills(cluster: Cluster) -> None:
    started = time.monotonic()
    for name in ("w1", "w2", "ingest"):
        cluster.start(name)
    for name in ("w1", "w2", "ingest"):
        cluster.nodes[name].wait_ready(timeout=300)

    # -- 100 mixed files, exactly once, both workers, GPU routes on w1 only ---------------
    corpus = _corpus(cluster.tmp)
    assert len(corpus) == 100
    for relative, data in corpus.items():
        cluster.drop(relative, data)
    _wait("100 outputs", lambda: cluster.done(list(corpus)), 300, 0.5)
    _wait("settled jobs", lambda: not list((cluster.ingest.root / ".state/jobs").iterdir()), 30)
    sidecars = _check_exactly_once(cluster)
    hosts = {r: m["service"]["worker_host"] for r, m in sidecars.items()}  # type: ignore[index]
    assert {h for r, h in hosts.items() if r.endswith(".pdf")} == {"w1"}
    assert set(hosts.values()) == {"w1", "w2"}, hosts
    status, body = cluster.ingest.get("/status")
    assert status == 200 and body["lanes"]["gpu"]["engine"] is True
    assert "sir_convert_a_lot_engine_queue_depth" in cluster.ingest.metrics()
    print(f"100 files in {time.monotonic() - started:.1f} s (with start-up)")

    # A picture beside a Markdown file travels with it (the drop-folder snapshot).
    picture = make_png(cluster.tmp / "dot.png")
    (cluster.ingest.inbox / "to-pdf/pics/img").mkdir(parents=True)
    (cluster.ingest.inbox / "to-pdf/pics/img/dot.png").write_bytes(picture.read_bytes())
    cluster.drop("to-pdf/pics/withpic.md", b"# With a picture\n\n![dot](img/dot.png)\n")
    _wait("the picture's PDF", lambda: cluster.done(["to-pdf/pics/withpic.md"]), 120, 0.2)
    meta = cluster.sidecar("to-pdf/pics/withpic.md")
    assert meta["warnings"] == [], meta["warnings"]
    assert b"/Image" in cluster.output_of("to-pdf/pics/withpic.md").read_bytes()

    for round_ in range(3 if LONG else 1):
        _kill_worker_mid_job(cluster, round_)
        _pause_worker_past_stall(cluster, round_)
        _stop_postgres(cluster, round_)
        _kill_ingest(cluster, round_)
        _results_wait_for_ingest(cluster, round_)
    _spill_overflow(cluster)

    sidecars = _check_exactly_once(cluster)
    remote = [r for r, m in sidecars.items() if m["service"].get("worker_host")]  # type: ignore[attr-defined]
    assert cluster.pg.query("SELECT count(*) FROM sca_results")[0][0] == len(remote)
    _wait(
        "every engine job done",
        lambda: cluster.pg.query("SELECT count(*) FROM sca_jobs WHERE state <> 'done'")[0][0] == 0,
        30,
        0.5,
    )
    mode = "long" if LONG else "short"
    print(f"{mode} mode: {len(cluster.dropped)} files, {time.monotonic() - started:.1f} s")


def _html(name: str) -> bytes:
    return f"<html><body><h1>{name}</h1><p>{name} text.</p></body></html>".encode()


def _kill_worker_mid_job(cluster: Cluster, round_: int) -> None:
    """SIGKILL a worker while it converts: the job is retried elsewhere after the stall
    time-out, and published once."""
    names = [f"slow-kill{round_}-{i}.html" for i in range(4)]
    for name in names:
        cluster.drop(name, _html(name))
    _wait("w2 taking a job", lambda: cluster.worker_running("w2") is not None, 60, 0.05)
    key = cluster.worker_running("w2")
    cluster.nodes["w2"].kill(signal.SIGKILL)
    w2 = cluster.start("w2")  # warms up while w1 takes the job over
    _wait("outputs after a worker's SIGKILL", lambda: cluster.done(names), 180, 0.2)
    [(attempt,)] = cluster.pg.query(f"SELECT attempt FROM sca_results WHERE key = '{key}'")
    assert int(str(attempt)) >= 2
    w2.wait_ready(timeout=300)


def _pause_worker_past_stall(cluster: Cluster, round_: int) -> None:
    """SIGSTOP a worker past the stall time-out: the other one redoes its jobs, the
    paused worker's late results are discarded when it wakes up, and it serves again.

    Four slow files fill both nodes' two CPU slots, so w1 (the GPU-lane node) holds
    some: it is the one paused, and a PDF after the wake proves its queues recovered."""
    names = [f"slow-pause{round_}-{i}.html" for i in range(4)]
    for name in names:
        cluster.drop(name, _html(name))
    _wait("w1 taking a job", lambda: cluster.worker_running("w1") is not None, 60, 0.05)
    time.sleep(0.5)  # let it take its second one too
    held = [
        str(row[0])
        for row in cluster.pg.query(
            "SELECT j.key FROM sca_jobs j LEFT JOIN sca_results r ON r.key = j.key"
            " WHERE j.worker_host = 'w1' AND r.key IS NULL AND j.state = 'queued'"
        )
    ]
    node = cluster.nodes["w1"]
    os.kill(node.pid, signal.SIGSTOP)
    try:
        _wait("outputs while w1 is paused", lambda: cluster.done(names), 180, 0.2)
    finally:
        os.kill(node.pid, signal.SIGCONT)

    def discarded() -> bool:
        log = node.log.read_text(errors="replace").splitlines()
        return all(
            any("engine_result_discarded" in line and key in line for line in log) for key in held
        )

    _wait("w1's late results discarded", discarded, 60, 0.2)
    for key in held:
        [(host, attempt)] = cluster.pg.query(
            f"SELECT worker_host, attempt FROM sca_results WHERE key = '{key}'"
        )
        assert host == "w2" and int(str(attempt)) >= 2, (host, attempt)
    assert "Task exception was never retrieved" not in node.log.read_text(errors="replace")
    _wait("w1 ready again", lambda: node.get("/readyz")[0] == 200, 60, 0.2)
    after = f"after-pause{round_}.pdf"
    cluster.drop(after, make_text_pdf(cluster.tmp / after).read_bytes())
    _wait("a GPU job on the woken node", lambda: cluster.done([after]), 120, 0.2)
    assert cluster.sidecar(after)["service"]["worker_host"] == "w1"  # type: ignore[index]


def _stop_postgres(cluster: Cluster, round_: int) -> None:
    """PostgreSQL down for 10 s: intake goes on, /readyz says engine_unavailable, then all flows."""
    first = [f"outage{round_}-a{i}.html" for i in range(6)]
    later = [f"outage{round_}-b{i}.html" for i in range(4)]
    for name in first:
        cluster.drop(name, _html(name))
    cluster.pg.stop()
    down = time.monotonic()
    for name in later:
        cluster.drop(name, _html(name))

    def unavailable() -> bool:
        status, body = cluster.ingest.get("/readyz")
        return status == 503 and "engine_unavailable" in {r["code"] for r in body["reasons"]}

    _wait("/readyz engine_unavailable", unavailable, 9, 0.2)
    _wait("claims during the outage", lambda: not list(cluster.ingest.inbox.glob("outage*")), 9)
    time.sleep(max(0.0, 10 - (time.monotonic() - down)))
    cluster.pg.start()
    _wait("outputs after the outage", lambda: cluster.done(first + later), 120, 0.2)
    _wait("ready again", lambda: cluster.ingest.get("/readyz")[0] == 200, 30, 0.2)


def _results_wait_for_ingest(cluster: Cluster, round_: int) -> None:
    """The ingest node SIGKILLed while workers convert its jobs: the results wait in
    the engine, and the restarted node publishes each once."""
    names = [f"slow-away{round_}-{i}.html" for i in range(2)]
    for name in names:
        cluster.drop(name, _html(name))
    _wait("workers taking the jobs", lambda: _started(cluster, names) == 2, 60, 0.05)
    cluster.ingest.kill(signal.SIGKILL)
    _wait("results while the ingest node is down", lambda: _results(cluster, names) == 2, 60)
    assert not cluster.done(names)
    cluster.start("ingest").wait_ready(timeout=120)
    _wait("outputs after the ingest node's restart", lambda: cluster.done(names), 60, 0.2)


def _outputs_sql(names: list[str], table: str = "") -> str:
    """An SQL test for the engine jobs of these inputs (by their outputs' names)."""
    column = f"{table}request->>'output_path'"
    return " OR ".join(f"{column} = '{_md_name(n)}'" for n in names)


def _md_name(name: str) -> str:
    return Path(name).with_suffix(".md").name


def _started(cluster: Cluster, names: list[str]) -> int:
    like = _outputs_sql(names)
    return int(
        str(cluster.pg.query(f"SELECT count(*) FROM sca_jobs WHERE attempt > 0 AND ({like})")[0][0])
    )


def _results(cluster: Cluster, names: list[str]) -> int:
    like = _outputs_sql(names, "j.")
    return int(
        str(
            cluster.pg.query(
                f"SELECT count(*) FROM sca_results r JOIN sca_jobs j ON j.key = r.key WHERE {like}"
            )[0][0]
        )
    )


def _spill_overflow(cluster: Cluster) -> None:
    """An ingest node that converts the CPU lane itself (one slot) hands the overflow
    to the engine: both kinds of output, each once."""
    ingest = cluster.start(
        "ingest",
        local=f'local_lanes = ["cpu"]\nmodels_dir = "{cluster.models}"\n'
        "cpu = { workers = 1, express_workers = 0 }\n",
    )
    ingest.wait_ready(timeout=300)
    names = [f"spill-{i}.html" for i in range(8)]
    for name in names:
        cluster.drop(name, _html(name))
    _wait("the spilled batch", lambda: cluster.done(names), 120, 0.2)
    hosts = [cluster.sidecar(n)["service"].get("worker_host") for n in names]  # type: ignore[attr-defined]
    assert None in hosts, hosts  # converted here
    assert {"w1", "w2"} & set(hosts), hosts  # and spilled to the engine's workers
    status, body = ingest.get("/status")
    assert status == 200 and body["lanes"]["cpu"]["spilled"] == hosts.count("w1") + hosts.count(
        "w2"
    ), body["lanes"]["cpu"]


def _kill_ingest(cluster: Cluster, round_: int) -> None:
    """SIGKILL the ingest node between claim and enqueue, then between sidecar and done."""
    jobs = cluster.ingest.root / ".state/jobs"  # type: ignore[operator]
    ingest = cluster.start("ingest", faults={"dispatch": 30.0})
    ingest.wait_ready(timeout=120)
    name = f"claimed{round_}.html"
    cluster.drop(name, _html(name))
    _wait("the claim", lambda: any(jobs.iterdir()), 30, 0.05)
    job_id = next(jobs.iterdir()).name
    ingest.kill(signal.SIGKILL)
    assert cluster.pg.query(f"SELECT count(*) FROM sca_jobs WHERE job_id = '{job_id}'")[0][0] == 0
    cluster.start("ingest").wait_ready(timeout=120)
    _wait("the output after a restart", lambda: cluster.done([name]), 120, 0.2)

    ingest = cluster.start("ingest", faults={"archive": 30.0})
    ingest.wait_ready(timeout=120)
    name = f"published{round_}.html"
    cluster.drop(name, _html(name))
    _wait("the sidecar", lambda: cluster.done([name]), 120, 0.05)
    sidecar = Path(f"{cluster.output_of(name)}{META_SUFFIX}").read_bytes()
    ingest.kill(signal.SIGKILL)
    job_id = next(jobs.iterdir()).name
    assert cluster.pg.query(f"SELECT state FROM sca_jobs WHERE job_id = '{job_id}'") == [
        ("queued",)
    ]
    cluster.start("ingest").wait_ready(timeout=120)
    _wait("the archive after a restart", (ingest.archive / name).exists, 60, 0.2)
    _wait(
        "done in the engine after a restart",
        lambda: (
            cluster.pg.query(f"SELECT state FROM sca_jobs WHERE job_id = '{job_id}'") == [("done",)]
        ),
        30,
        0.5,
    )
    assert Path(f"{cluster.output_of(name)}{META_SUFFIX}").read_bytes() == sidecar
