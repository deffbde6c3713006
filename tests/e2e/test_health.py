"""/healthz, /readyz, /metrics and /status of the real daemon, over HTTP.

Making the data root unwritable: these tests may run as root, and ``chmod``
does not stop root. As root the folders are made immutable (``chattr +i``,
which refuses writes to root too); as anyone else they are ``chmod 0555``.
Either way the test first proves that a write really fails.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from daemon.metrics import Metrics
from daemon.readiness import CHECKS
from tests.fixtures.daemon import Daemon
from tests.fixtures.web_docs import PDF_LINES, make_text_pdf

pytestmark = pytest.mark.e2e

MD = "# Title\n\nSome *text*.\n"
# A name that must never show up in /metrics, whatever happens to the file.
ODD = "quokka7731"
ACCESS_LOG_MARKERS = ("GET /", "HTTP/1.1", "/metrics", "/healthz", "/readyz", "/status")


def drop(daemon: Daemon, relative: str, text: str = MD) -> Path:
    """Write outside the inbox, then rename in (an atomic arrival)."""
    staging = daemon.base / "staging" / relative.replace("/", "_")
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.write_text(text)
    target = daemon.inbox / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target


def reason_codes(body: dict[str, Any]) -> list[str]:
    return sorted(r["code"] for r in body["reasons"])


def check(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in body["checks"] if c["check"] == name)
    return found


def wait_readyz(daemon: Daemon, until: Any, timeout: float = 240.0) -> dict[str, Any]:
    """Poll /readyz until ``until(status, body)`` holds; return the body."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        with contextlib.suppress(OSError):
            status, body = daemon.get("/readyz")
            last = (status, body)
            if until(status, body):
                return body
        time.sleep(0.2)
    raise AssertionError(f"/readyz never matched: {last}\n{daemon.tail()}")


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed")
    return subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if "{" in key:
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(",")))
        else:
            metric, got = key, ""
        if metric == name and got == want:
            return float(value)
    return None


def wait_status_idle(daemon: Daemon, timeout: float = 60.0) -> dict[str, Any]:
    """/status once nothing is queued, converting or being published."""
    deadline = time.monotonic() + timeout
    while True:
        _, body = daemon.get("/status")
        if not (body["queue"] or body["in_flight"] or body["finishing"]):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


@contextlib.contextmanager
def unwritable(folders: list[Path]) -> Iterator[str]:
    """Make ``folders`` refuse new entries, for root too. Yields how it was done."""
    done: list[Path] = []
    how = "chattr +i" if os.geteuid() == 0 else "chmod 0555"
    try:
        for folder in folders:
            if os.geteuid() == 0:
                res = subprocess.run(
                    ["chattr", "+i", str(folder)], capture_output=True, text=True, check=False
                )
                if res.returncode != 0:
                    pytest.skip(f"running as root and chattr +i is refused: {res.stderr.strip()}")
            else:
                folder.chmod(0o555)
            done.append(folder)
        probe = folders[0] / "probe"
        with pytest.raises(PermissionError):
            probe.write_text("must fail")
        yield how
    finally:
        for folder in done:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(folder)], check=True)
            else:
                folder.chmod(0o755)


def test_health_metrics_and_status_tell_the_truth(daemon: Daemon) -> None:
    daemon.start()
    status, health = daemon.get("/healthz")
    assert status == 200
    assert health["status"] == "ok"
    assert (health["revision"], health["profile"]) == ("test-revision", "eval")
    assert health["started_at"] and health["uptime_seconds"] >= 0

    status, ready = daemon.get("/readyz")
    assert status == 200 and ready["ready"] is True and ready["reasons"] == []
    assert [c["check"] for c in ready["checks"]] == list(CHECKS)
    assert all(c["ok"] for c in ready["checks"])

    # Work: a batch that succeeds (slow enough to be seen queued and in flight),
    # and failures whose file names must never reach a metric label.
    names = [f"batch-{i:02d}.md" for i in range(16)]
    for name in names:
        drop(daemon, f"to-docx/{name}", MD.replace("Title", name))
    drop(daemon, f"{ODD}-root.xyz")  # no route at the inbox root
    drop(daemon, f"to-md/{ODD}-odd.{ODD}")  # to-md/ with an extension nothing reads
    secret = daemon.base / "secret.md"
    secret.write_text(MD)
    os.symlink(secret, daemon.inbox / "to-docx" / f"{ODD}-link.md")

    seen_running: dict[str, Any] | None = None
    seen_queued: dict[str, Any] | None = None
    deadline = time.monotonic() + 180
    while not all((daemon.outbox / "to-docx" / f"{n[:-3]}.docx.meta.json").exists() for n in names):
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        assert time.monotonic() < deadline, f"the batch did not finish\n{daemon.tail()}"
        _, now = daemon.get("/status")
        if now["in_flight"] and seen_running is None:
            seen_running = now["in_flight"][0]
        if now["queue"] and seen_queued is None:
            seen_queued = now["queue"][0]
        time.sleep(0.02)
    assert seen_running is not None, "a job was never seen in flight"
    assert seen_running["lane"] == "cpu" and isinstance(seen_running["worker_pid"], int)
    assert seen_running["file"] in {f"to-docx/{n}" for n in names}
    assert seen_running["running_seconds"] >= 0
    assert seen_queued is not None, "a job was never seen queued"
    assert seen_queued["file"] in {f"to-docx/{n}" for n in names}

    assert daemon.error(f"{ODD}-root.xyz")["error"]["code"] == "unsupported_route"
    assert daemon.error(f"to-md/{ODD}-odd.{ODD}")["error"]["code"] == "unsupported_route"
    assert daemon.error(f"to-docx/{ODD}-link.md")["error"]["code"] == "not_regular_file"

    status_body = wait_status_idle(daemon)
    failures = {f["relative_path"]: f["code"] for f in status_body["recent_failures"]}
    assert failures == {
        f"{ODD}-root.xyz": "unsupported_route",
        f"to-md/{ODD}-odd.{ODD}": "unsupported_route",
        f"to-docx/{ODD}-link.md": "not_regular_file",
    }
    assert status_body["lanes"]["cpu"]["warm"] is True

    cli = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--profile", "eval"],
        env=daemon.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "profile eval" in cli.stdout and "revision test-revisio" in cli.stdout  # 12 chars
    assert "lane cpu" in cli.stdout and "lane gpu" in cli.stdout
    for path, code in failures.items():
        assert any(code in line and path in line for line in cli.stdout.splitlines()), cli.stdout

    text = daemon.metrics()
    checked = promtool(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == "", "promtool warnings"
    families = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    fresh = generate_latest(Metrics("eval").registry).decode()
    expected = {ln.split()[2] for ln in fresh.splitlines() if ln.startswith("# TYPE ")}
    assert expected <= families, expected - families
    assert ODD not in text, "a file name leaked into /metrics"
    jobs = "sir_convert_a_lot_jobs_total"
    ok = dict(profile="eval", route="md->docx", outcome="succeeded", code="")
    assert sample(text, jobs, **ok) == len(names)
    no_route = dict(profile="eval", route="unknown", outcome="failed", code="unsupported_route")
    assert sample(text, jobs, **no_route) == 2
    assert sample(text, "sir_convert_a_lot_convert_duration_seconds_count", route="md->docx") == (
        len(names)
    )
    assert sample(text, "sir_convert_a_lot_ready") == 1
    assert sample(text, "sir_convert_a_lot_readiness_check", check="models") == 1
    assert (sample(text, "sir_convert_a_lot_last_success_timestamp_seconds") or 0) > 0
    assert (sample(text, "sir_convert_a_lot_worker_starts_total", lane="cpu") or 0) >= 2

    # The data root stops taking writes: not ready, intake paused, nothing lost.
    writable_parts = [daemon.root / "outbox", daemon.root / "failed", daemon.root / "archive"]
    state = [
        daemon.root / ".state" / "tmp",
        daemon.root / ".state" / "jobs",
        daemon.root / ".state",
    ]
    with unwritable(state + writable_parts):
        body = wait_readyz(daemon, lambda s, b: s == 503)
        assert reason_codes(body) == ["data_root_unwritable"]
        assert body["reasons"][0]["details"]["data_root"] == str(daemon.root)
        assert daemon.get("/healthz")[0] == 200  # alive, just not ready
        waiting = drop(daemon, "to-docx/during-outage.md", MD.replace("Title", "Outage"))
        assert sample(daemon.metrics(), "sir_convert_a_lot_ready") == 0
        assert waiting.exists()
    wait_readyz(daemon, lambda s, b: s == 200)
    assert daemon.sidecar("to-docx/during-outage.docx")["status"] == "succeeded"
    assert not waiting.exists()
    # It waited in the inbox: intake was paused, no claim was even tried.
    assert "claim_failed" not in daemon.log.read_text(errors="replace")

    # Health, readiness, metrics and status requests were never logged line by line.
    log = daemon.log.read_text(errors="replace")
    assert not [ln for ln in log.splitlines() if any(m in ln for m in ACCESS_LOG_MARKERS)]
    assert daemon.stop() == 0


def test_models_missing_until_the_artifacts_arrive(tmp_path: Path, tiny_models_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    daemon = Daemon(tmp_path, models_dir=models)
    try:
        daemon.start(wait_ready=False)
        # Once the workers are warm, the models are the only thing missing.
        body = wait_readyz(daemon, lambda s, b: check(b, "workers")["ok"])
        assert reason_codes(body) == ["models_missing"]
        (reason,) = body["reasons"]
        assert reason["details"]["models_dir"] == str(models)
        assert list(reason["details"]["routes"]) == ["pdf->md"]
        assert check(body, "converters")["ok"] is True

        # Provision them while it runs (staged, then renamed in): no restart needed.
        staging = tmp_path / "staging-models"
        shutil.copytree(tiny_models_dir, staging)
        for entry in staging.iterdir():
            entry.rename(models / entry.name)
        wait_readyz(daemon, lambda s, b: s == 200)

        # And the worker that started without them really uses them now.
        make_text_pdf(tmp_path / "letter.pdf").rename(daemon.inbox / "to-md" / "letter.pdf")
        car = daemon.sidecar("to-md/letter.md", timeout=180)
        assert car["status"] == "succeeded", car
        assert PDF_LINES[1] in (daemon.outbox / "to-md" / "letter.md").read_text()
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def test_gpu_required_and_stale_revision_until_fixed(tmp_path: Path, tiny_models_dir: Path) -> None:
    broken = {
        "SIR_CONVERT_A_LOT_GPU_POLICY": "required",
        "SIR_CONVERT_A_LOT_EXPECTED_REVISION": "deployed-revision",
    }
    daemon = Daemon(tmp_path, models_dir=tiny_models_dir, env=broken)
    try:
        daemon.start(wait_ready=False)
        # Wait for every worker's report (before it, the gpu check says "not reported yet").
        body = wait_readyz(
            daemon,
            lambda s, b: check(b, "workers")["ok"] and "runtime_kind" in check(b, "gpu")["details"],
        )
        gpu = check(body, "gpu")
        if gpu["details"].get("available"):
            pytest.skip("this machine has a usable GPU: gpu_policy=required is satisfied")
        assert reason_codes(body) == ["gpu_unavailable", "stale_revision"]
        reasons = {r["code"]: r for r in body["reasons"]}
        details = reasons["gpu_unavailable"]["details"]
        assert details["policy"] == "required"
        assert details["runtime_kind"] in {"none", "cuda", "rocm"}
        installed = importlib.metadata.version("torch")  # without a local tag like +cu130
        assert details["torch_version"].split("+")[0] == installed.split("+")[0]
        assert "cuda_version" in details and "hip_version" in details
        assert reasons["stale_revision"]["details"] == {
            "revision": "test-revision",
            "expected": "deployed-revision",
        }
        assert daemon.get("/healthz")[0] == 200  # alive, just not ready
        text = daemon.metrics()
        assert sample(text, "sir_convert_a_lot_ready") == 0
        assert sample(text, "sir_convert_a_lot_readiness_check", check="gpu") == 0
        kind = str(details["runtime_kind"])
        assert sample(text, "sir_convert_a_lot_gpu_available", runtime_kind=kind) == 0
        assert daemon.stop() == 0

        # Fixed configuration, restarted: ready.
        daemon.extra_env = {"SIR_CONVERT_A_LOT_EXPECTED_REVISION": "test-revision"}
        daemon.start()
        _, body = daemon.get("/readyz")
        assert body["ready"] is True
        assert check(body, "gpu")["details"]["policy"] == "preferred"
        assert check(body, "revision")["details"]["expected"] == "test-revision"
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
