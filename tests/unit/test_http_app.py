"""/healthz, /readyz, /metrics and /status of the aiohttp app, on a real Service.

The Service is built from real settings on a temporary data root, and its inbox
watcher runs. Its worker pools are *not* started (a warm docling worker takes
many seconds on two cores), so ``workers`` is the one check that honestly fails
here; the e2e tests in ``tests/e2e/test_health.py`` cover the warm daemon.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest

from converters.models import LAYOUT
from daemon.config import load_settings
from daemon.http import make_app
from daemon.metrics import Metrics
from daemon.notify import Notifier
from daemon.readiness import CHECKS, Readiness
from daemon.service import Service

pytestmark = pytest.mark.unit

ClientFactory = Callable[..., Any]
Build = Callable[..., Service]
REVISION = "unit-revision"


def provide_layout_model(models_dir: Path) -> None:
    """The files the models check looks for (it checks presence, it loads nothing)."""
    folder = models_dir / LAYOUT.folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in LAYOUT.files:
        (folder / name).write_bytes(b"{}")


def break_tmp(service: Service) -> None:
    """Make the data root refuse writes, even to root: .state/tmp becomes a file."""
    shutil.rmtree(service.root.tmp)
    service.root.tmp.write_text("not a folder")


def mend_tmp(service: Service) -> None:
    service.root.tmp.unlink()
    service.root.tmp.mkdir()


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Build]:
    """Build a Service for profile eval; ``extra`` is added to its TOML table."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    built: list[Service] = []

    def make(extra: str = "", env: dict[str, str] | None = None, models: bool = True) -> Service:
        models_dir = tmp_path / "models"
        models_dir.mkdir(exist_ok=True)
        if models:
            provide_layout_model(models_dir)
        config = tmp_path / "config.toml"
        config.write_text(
            f'[profiles.prod]\ndata_root = "{tmp_path / "prod-root"}"\n'
            f'[profiles.eval]\ndata_root = "{tmp_path / "eval-root"}"\nhttp_port = 0\n'
            f'models_dir = "{models_dir}"\nrescan_interval_seconds = 2\n{extra}\n'
        )
        environ = {"HOME": str(tmp_path), "SIR_CONVERT_A_LOT_SERVICE_REVISION": REVISION}
        settings, profile = load_settings(
            config_path=config, profile="eval", environ={**environ, **(env or {})}
        )
        service = Service(settings, profile)
        service.root.create()
        service.root.adopt("eval")
        built.append(service)
        return service

    yield make
    for service in built:
        if service.watcher.alive():
            service.watcher.stop()


async def watch(service: Service) -> None:
    """Start the real inbox watcher and run the first scan, as Service.start does."""
    service.watcher.start(
        asyncio.get_running_loop(), service.intake.on_event, service.intake.request_rescan
    )
    await service.intake.rescan()


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> AsyncIterator[Callable[..., Any]]:
    async def connect(service: Service) -> TestClient[Any, Any]:
        result: TestClient[Any, Any] = await aiohttp_client(make_app(service))
        return result

    yield connect


def reason_codes(body: dict[str, Any]) -> list[str]:
    return sorted(r["code"] for r in body["reasons"])


def check(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in body["checks"] if c["check"] == name)
    return found


# -- /healthz ------------------------------------------------------------------------


async def test_healthz_reports_identity_and_503_once_the_heartbeat_is_stale(
    build: Build, client: Callable[..., Any]
) -> None:
    service = build("heartbeat_timeout_seconds = 5")
    http = await client(service)
    resp = await http.get("/healthz")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "ok"
    assert body["revision"] == REVISION and body["profile"] == "eval"
    assert datetime.fromisoformat(body["started_at"]) == service.started_at
    assert body["uptime_seconds"] >= 0

    service.heartbeat = time.monotonic() - 6  # the supervisor loop stopped ticking
    resp = await http.get("/healthz")
    body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "wedged"
    assert body["heartbeat_age_seconds"] > 5
    assert body["revision"] == REVISION

    service.heartbeat = time.monotonic()
    assert (await http.get("/healthz")).status == 200


# -- /readyz -------------------------------------------------------------------------


async def test_readyz_lists_every_check_and_a_reason_for_each_failing_one(
    build: Build, client: Callable[..., Any]
) -> None:
    service = build()
    await watch(service)
    http = await client(service)
    resp = await http.get("/readyz")
    body = await resp.json()
    assert resp.status == 503
    assert body["ready"] is False
    assert [c["check"] for c in body["checks"]] == list(CHECKS)
    for c in body["checks"]:
        assert isinstance(c["ok"], bool)
        assert c["code"] == CHECKS[c["check"]]
    # Pools were not started: exactly the workers check fails, and says which slots.
    assert reason_codes(body) == ["workers_not_warm"]
    (reason,) = body["reasons"]
    assert reason["message"]
    assert reason["details"]["cold_slots"] == {"gpu": [0], "cpu": [0, 1]}
    assert check(body, "models")["ok"] is True
    assert check(body, "watcher")["details"]["observer"] == "inotify"
    assert body["revision"] == REVISION and body["profile"] == "eval"


async def test_readyz_names_configuration_and_data_root_problems(
    build: Build, client: Callable[..., Any], tmp_path: Path
) -> None:
    service = build(
        'gpu_policy = "required"\nmin_free_disk_mb = 1000000000\n'
        # the prod profile's data root inside eval's: an overlap
        f'[profiles.prod2]\ndata_root = "{tmp_path / "eval-root" / "nested"}"\n',
        env={"SIR_CONVERT_A_LOT_EXPECTED_REVISION": "deployed-revision"},
        models=False,
    )
    service.root.profile_marker.write_text("prod\n")
    break_tmp(service)
    http = await client(service)
    body = await (await http.get("/readyz")).json()
    assert reason_codes(body) == sorted(
        [
            "stale_revision",
            "profile_mismatch",
            "data_root_overlap",
            "data_root_unwritable",
            "disk_low",
            "watcher_stale",
            "workers_not_warm",
            "models_missing",
            "gpu_unavailable",
        ]
    )
    reasons = {r["code"]: r for r in body["reasons"]}
    assert reasons["stale_revision"]["details"] == {
        "revision": REVISION,
        "expected": "deployed-revision",
    }
    assert reasons["profile_mismatch"]["details"] == {"recorded": "prod", "configured": "eval"}
    assert "overlap" in reasons["data_root_overlap"]["message"]
    assert reasons["data_root_unwritable"]["details"]["data_root"] == str(service.root.root)
    assert reasons["disk_low"]["details"]["min_free_mb"] == 1000000000
    assert "pdf->md" in reasons["models_missing"]["details"]["routes"]
    assert reasons["gpu_unavailable"]["details"]["policy"] == "required"
    assert check(body, "converters")["ok"] is True  # no worker has reported a problem


async def test_models_check_follows_the_folder_without_a_restart(build: Build) -> None:
    service = build(models=False)
    readiness = Readiness(service)
    models_dir = service.settings.models_dir
    assert models_dir is not None

    def models() -> Any:
        _, results = readiness.evaluate(force=True)
        return next(r for r in results if r.name == "models")

    # Never passed yet: it fails at once, and says where and what.
    first = models()
    assert not first.ok and first.code == "models_missing"
    assert str(models_dir) in first.message
    assert first.details["routes"]["pdf->md"][0].startswith("models_missing: ")

    provide_layout_model(models_dir)
    assert models().ok

    # Debounce: one failure after a pass is not yet "down"; the second is.
    (models_dir / LAYOUT.folder / "model.safetensors").unlink()
    once = models()
    assert once.ok and once.message.startswith("(1 failure, not yet down)")
    twice = models()
    assert not twice.ok and twice.code == "models_missing"
    assert "model.safetensors" in twice.details["routes"]["pdf->md"][0]

    # Recovery is not debounced.
    provide_layout_model(models_dir)
    assert models().ok


def gauge(service: Service, name: str) -> float | None:
    return service.metrics.registry.get_sample_value(
        "sir_convert_a_lot_readiness_check", {"check": name}
    )


async def test_a_single_failed_probe_does_not_flap_readiness(build: Build) -> None:
    service = build()
    readiness = Readiness(service)

    def writable() -> Any:
        _, results = readiness.evaluate(force=True)
        return next(r for r in results if r.name == "data_root_writable")

    assert writable().ok
    assert gauge(service, "data_root_writable") == 1
    break_tmp(service)
    assert writable().ok  # one failure
    mend_tmp(service)
    assert writable().ok  # the count starts over
    break_tmp(service)
    assert writable().ok
    down = writable()
    assert not down.ok and down.code == "data_root_unwritable"
    assert gauge(service, "data_root_writable") == 0
    mend_tmp(service)
    assert writable().ok


async def test_cached_results_are_not_counted_twice(build: Build) -> None:
    service = build()
    readiness = Readiness(service, cache_seconds=3600)
    assert readiness.evaluate(force=True)[1]
    break_tmp(service)
    for _ in range(5):  # requests inside the cache window do not re-run the probes
        _, results = readiness.evaluate()
        assert next(r for r in results if r.name == "data_root_writable").ok


async def test_the_supervisor_pauses_intake_while_the_data_root_is_unwritable(
    build: Build,
) -> None:
    """The Service decides, without any HTTP listener: a full or unwritable data
    root pauses claims (it used to take the listener's refresher to notice)."""
    service = build()
    supervisor = asyncio.create_task(service.run_forever())

    async def paused_becomes(value: str | None) -> None:
        for _ in range(200):
            if service.intake_paused_reason == value:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"intake_paused_reason stayed {service.intake_paused_reason!r}")

    try:
        await paused_becomes(None)
        break_tmp(service)
        await paused_becomes("data_root_unwritable")
        mend_tmp(service)
        await paused_becomes(None)
    finally:
        service.request_stop()
        await supervisor


# -- /metrics ------------------------------------------------------------------------


def promtool(body: bytes) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed")
    return subprocess.run(
        [tool, "check", "metrics"],
        input=body.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def type_lines(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


async def test_metrics_are_clean_prometheus_text_with_every_family(
    build: Build, client: Callable[..., Any]
) -> None:
    service = build()
    http = await client(service)
    resp = await http.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    body = await resp.read()
    checked = promtool(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""
    text = body.decode()
    expected = type_lines(generate_latest(Metrics("any").registry).decode())
    assert expected and expected <= type_lines(text)
    # /metrics re-evaluates readiness, so the gauges are current.
    assert "sir_convert_a_lot_ready 0.0" in text
    assert 'sir_convert_a_lot_readiness_check{check="workers"} 0.0' in text
    assert 'sir_convert_a_lot_readiness_check{check="disk"} 1.0' in text
    assert f'revision="{REVISION}"' in text


def test_route_labels_never_carry_a_file_extension() -> None:
    metrics = Metrics("eval")
    metrics.job_finished("quokka7731->md", "failed", "unsupported_route")
    metrics.job_finished("md->docx", "succeeded", "")
    text = generate_latest(metrics.registry).decode()
    assert "quokka7731" not in text
    assert 'route="unknown"' in text and 'route="md->docx"' in text


# -- /status -------------------------------------------------------------------------


async def test_status_lists_queue_in_flight_lanes_and_failures(
    build: Build, client: Callable[..., Any]
) -> None:
    service = build()
    http = await client(service)
    resp = await http.get("/status")
    assert resp.status == 200
    body = await resp.json()
    assert body == service.status() | {"uptime_seconds": body["uptime_seconds"]}
    assert body["queue"] == [] and body["in_flight"] == [] and body["recent_failures"] == []
    assert body["pending_in_inbox"] == 0
    # two regular workers and the two express ones
    assert body["lanes"]["cpu"] == {"workers": 4, "warm": False, "queue_depth": 0, "outstanding": 0}
    assert body["lanes"]["gpu"]["workers"] == 1
    assert body["profile"] == "eval" and body["revision"] == REVISION


# -- docs/health.md stays true ---------------------------------------------------------


def test_health_md_documents_every_check_and_metric() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "health.md").read_text()
    for name, code in CHECKS.items():
        assert f"| `{name}` | `{code}` |" in doc, name
    assert "`_created`" in doc  # described once for every counter and histogram
    for name in type_lines(generate_latest(Metrics("any").registry).decode()):
        if not name.endswith("_created"):
            assert f"`{name}`" in doc, name


# -- systemd: READY=1 means started, STATUS= says why no files are taken -----------------


def test_ready_is_sent_once_started_and_status_names_what_blocks_intake(
    build: Build,
) -> None:
    address = tempfile.mkdtemp(prefix="sd-") + "/n"  # AF_UNIX paths are short
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(address)
    systemd.settimeout(5)
    try:
        service = build()
        service.notifier = Notifier(address, None)
        service.refresh()  # workers are cold: started, not ready
        first = systemd.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=not ready (")
        assert "workers_not_warm" in first and "pending 0, active 0" in first
        break_tmp(service)
        service.refresh()
        service.refresh()  # a check that passed before fails on its second round
        systemd.recv(4096)
        second = systemd.recv(4096).decode()
        assert second.startswith("STATUS=not taking files (")
        assert "data_root_unwritable" in second
        assert service.intake_paused_reason == "data_root_unwritable"
    finally:
        systemd.close()
        os.unlink(address)


# -- / (the status page) --------------------------------------------------------------


async def test_the_status_page_is_html_that_loads_nothing_and_says_why_it_is_not_ready(
    build: Build, client: Callable[..., Any]
) -> None:
    service = build()
    await watch(service)
    http = await client(service)
    resp = await http.get("/")
    page = await resp.text()
    assert resp.status == 200
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "<script" not in page and "src=" not in page
    assert '<meta http-equiv="refresh" content="5">' in page
    # Pools were not started: the page says not ready, and why.
    assert "<strong>Not ready</strong>: workers_not_warm" in page
    assert '<a href="/metrics">' in page and '<a href="/events">' in page
