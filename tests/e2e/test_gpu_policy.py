"""The three GPU policies on a machine without a usable GPU (as in CI).

* ``required``: the daemon is alive but not ready (``gpu_unavailable``), PDF→md
  jobs fail with ``gpu_unavailable`` (retryable) instead of running on the CPU,
  and CPU-lane routes keep working;
* ``preferred``: PDF→md runs on the CPU and says so (``gpu_unavailable_ran_on_cpu``);
* ``cpu``: PDF→md runs on the CPU without that warning.

``required`` runs the daemon; the other two run ``convert`` (the same pipeline,
only the GPU lane is started), with the policy from ``SIR_CONVERT_A_LOT_GPU_POLICY``
or from ``--gpu-policy``, which wins over the environment.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_convert_cli import cli_env, run_cli
from tests.fixtures import office_docs
from tests.fixtures.daemon import Daemon

pytestmark = pytest.mark.e2e

RAN_ON_CPU = "gpu_unavailable_ran_on_cpu"


def _gpu_reason(body: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in body.get("reasons", []) if r["code"] == "gpu_unavailable"), None)


def wait_not_ready_for_gpu(daemon: Daemon, timeout: float = 240.0) -> dict[str, Any]:
    """Poll until the GPU worker reported its probe and every other check passes."""
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        try:
            last = daemon.get("/readyz")
        except OSError:
            time.sleep(0.2)
            continue
        status, body = last
        reason = _gpu_reason(body)
        others = [r for r in body.get("reasons", []) if r["code"] != "gpu_unavailable"]
        if reason is not None and "torch_version" in reason["details"] and not others:
            assert status == 503
            return body
        time.sleep(0.2)
    raise AssertionError(f"readyz never settled on gpu_unavailable: {last}\n{daemon.tail()}")


def test_required_without_gpu_is_unready_and_fails_pdf_jobs(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    daemon = Daemon(
        tmp_path, env={"SIR_CONVERT_A_LOT_GPU_POLICY": "required"}, models_dir=tiny_models_dir
    )
    try:
        daemon.start(wait_ready=False)
        body = wait_not_ready_for_gpu(daemon)
        assert body["ready"] is False
        reason = _gpu_reason(body)
        assert reason is not None
        details = reason["details"]
        assert details["policy"] == "required"
        assert details["runtime_kind"] in ("cuda", "rocm", "none")
        assert details["torch_version"]  # the probe says which torch it saw
        assert "cuda_version" in details and "hip_version" in details
        assert details["available"] is False
        status, health = daemon.get("/healthz")
        assert status == 200 and health["status"] == "ok"

        src = tmp_path / "src"
        src.mkdir()
        pdf = office_docs.make_text_pdf(src / "report.pdf")
        (src / "note.md").write_text("# Still works\n\n- one\n- two\n", encoding="utf-8")
        shutil.copy(pdf, daemon.inbox / "report.pdf")
        shutil.copy(src / "note.md", daemon.inbox / "to-docx" / "note.md")

        error = daemon.error("report.pdf")
        assert error["error"]["code"] == "gpu_unavailable"
        assert error["error"]["retryable"] is True
        assert "required" in error["error"]["message"]
        assert error["route"] == {"source": "pdf", "target": "md"}
        assert not (daemon.outbox / "report.md").exists()  # it never ran on the CPU
        assert (daemon.failed / "report.pdf").read_bytes() == pdf.read_bytes()

        car = daemon.sidecar("to-docx/note.docx")
        assert car["status"] == "succeeded"
        assert car["acceleration"]["policy"] == "required"
        assert car["acceleration"]["device"] == "cpu"
        assert RAN_ON_CPU not in car["warnings"]
        # still alive and still (only) not ready for the GPU
        assert daemon.get("/healthz")[0] == 200
        status, body = daemon.get("/readyz")
        assert status == 503 and [r["code"] for r in body["reasons"]] == ["gpu_unavailable"]
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


@pytest.mark.parametrize(
    ("policy_env", "flag", "expected_policy", "warned"),
    [
        ("cpu", None, "cpu", False),
        # the --gpu-policy flag wins over the environment
        ("cpu", "preferred", "preferred", True),
    ],
)
def test_preferred_and_cpu_run_pdf_on_the_cpu(
    tmp_path: Path,
    tiny_models_dir: Path,
    policy_env: str,
    flag: str | None,
    expected_policy: str,
    warned: bool,
) -> None:
    office_docs.make_text_pdf(tmp_path / "report.pdf")
    env = cli_env(tmp_path, tiny_models_dir)
    env["SIR_CONVERT_A_LOT_GPU_POLICY"] = policy_env
    args = ["convert", "report.pdf", "--to", "md", "--output-dir", "out"]
    if flag:
        args += ["--gpu-policy", flag]
    run = run_cli(args, tmp_path, env)
    assert run.code == 0, run.stderr
    car = json.loads((tmp_path / "out" / "report.md.meta.json").read_text())
    assert car["status"] == "succeeded"
    assert car["acceleration"]["policy"] == expected_policy
    assert car["acceleration"]["device"] == "cpu"
    assert car["acceleration"]["device_name"] is None
    assert (RAN_ON_CPU in car["warnings"]) is warned
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert office_docs.TEXT_PDF_LINES[1] in " ".join(md.split())
