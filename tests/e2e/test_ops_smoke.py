"""ops/smoke against the real daemon: `sir-convert-a-lot run --profile eval`.

The daemon runs as a subprocess on a temporary data root and port, given by
SIR_CONVERT_A_LOT_DATA_ROOT and SIR_CONVERT_A_LOT_HTTP_PORT, with the tiny
docling artifacts (tests/fixtures) as its models so that pdf->md runs too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.daemon_harness import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "ops" / "smoke"
ALL_ROUTES = {
    "md->pdf", "md->docx", "html->pdf", "html->docx", "html->md", "docx->md", "pdf->docx",
    "pdf->md",
}  # fmt: skip


class RunningProfile:
    def __init__(self, base: Path, models: Path, config: str | None = None) -> None:
        self.base = base
        self.data_root = base / "eval"
        self.port = free_port()
        self.log = base / "daemon.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_")}
        env.update(
            HOME=str(base),
            XDG_DATA_HOME=str(base / "xdg"),
            PYTHONPATH=str(REPO),
            SIR_CONVERT_A_LOT_DATA_ROOT=str(self.data_root),
            SIR_CONVERT_A_LOT_HTTP_PORT=str(self.port),
            SIR_CONVERT_A_LOT_MODELS_DIR=str(models),
            SIR_CONVERT_A_LOT_SERVICE_REVISION="smoke-test-revision",
        )
        if config is not None:
            path = base / "config.toml"
            path.write_text(config)
            env["SIR_CONVERT_A_LOT_CONFIG"] = str(path)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--profile", "eval"],
                env=env,
                cwd=base,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited {self.proc.returncode}:\n{self.tail()}")
            try:
                url = f"http://127.0.0.1:{self.port}/readyz"
                with urllib.request.urlopen(url, timeout=5):
                    return
            except urllib.error.HTTPError as exc:
                body = exc.read()
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the daemon was not ready in {timeout} s: {body!r}\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def smoke(self, *args: str, report: Path) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [
                sys.executable, str(SMOKE), "--data-root", str(self.data_root),
                "--port", str(self.port), "--report-dir", str(report), "--timeout", "300",
                *args,
            ],
            capture_output=True, text=True, timeout=600, check=False, cwd=self.base,
        )  # fmt: skip
        data = json.loads((report / "report.json").read_text())
        return done.returncode, data, done.stdout + done.stderr


@pytest.fixture(scope="module")
def profile(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path
) -> Iterator[RunningProfile]:
    running = RunningProfile(tmp_path_factory.mktemp("smoke"), tiny_models_dir)
    running.wait_ready()
    yield running
    running.stop()


def test_every_route_passes_and_the_run_cleans_up(profile: RunningProfile, tmp_path: Path) -> None:
    code, report, output = profile.smoke("--with-pdf-md", report=tmp_path / "report")
    assert code == 0, output + profile.tail()
    assert report["ok"] is True
    assert report["revision"] == "smoke-test-revision"
    results = {r["route"]: r for r in report["results"]}
    assert set(results) == ALL_ROUTES
    for route, result in results.items():
        assert result["ok"], (route, result["problems"])
        assert result["status"] == "succeeded"
        assert result["wall_seconds"] is not None and result["convert_seconds"] is not None
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.startswith("# Smoke test: PASSED")
    assert "| pdf->md | ok |" in markdown
    run_id = report["run_id"]
    for area in ("inbox", "outbox", "archive"):
        leftovers = [p for p in (profile.data_root / area).rglob(run_id) if any(p.iterdir())]
        assert leftovers == [], f"{area} still holds {leftovers}"


def test_keep_leaves_the_outputs_the_report_names(profile: RunningProfile, tmp_path: Path) -> None:
    code, report, output = profile.smoke("--routes", "md-pdf,docx-md", "--keep", report=tmp_path)
    assert code == 0, output
    for result in report["results"]:
        produced = Path(result["output"])
        assert produced.is_file() and produced.is_relative_to(profile.data_root / "outbox")
    pdf = next(Path(r["output"]) for r in report["results"] if r["route"] == "md->pdf")
    assert pdf.read_bytes().startswith(b"%PDF-")


def test_a_failing_route_fails_the_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, tmp_path: Path
) -> None:
    """A profile that refuses PDFs of more than one page: smoke's two-page PDF fails."""
    base = tmp_path_factory.mktemp("smoke-small")
    config = (
        f'[profiles.eval]\ndata_root = "{base / "eval"}"\nhttp_port = 1\n'
        "[profiles.eval.limits]\nmax_pages = 1\n"
    )
    running = RunningProfile(base, tiny_models_dir, config=config)
    try:
        running.wait_ready()
        code, report, output = running.smoke("--routes", "md-pdf,pdf-docx", report=tmp_path)
    finally:
        running.stop()
    assert code == 1, output
    results = {r["route"]: r for r in report["results"]}
    assert results["md->pdf"]["ok"] is True
    assert results["pdf->docx"]["ok"] is False
    assert results["pdf->docx"]["status"] == "failed"
    assert "too_many_pages" in results["pdf->docx"]["problems"][0]
    assert "FAILED" in (tmp_path / "report.md").read_text().splitlines()[0]


def test_a_data_root_that_is_not_the_profiles_is_refused(
    profile: RunningProfile, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [
            sys.executable, str(SMOKE), "--data-root", str(elsewhere), "--port", str(profile.port),
            "--report-dir", str(tmp_path / "report"),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 69
    assert f"is it the data root of the profile on port {profile.port}" in done.stderr
    assert list(elsewhere.iterdir()) == []


def test_the_documented_python_consumer_works(profile: RunningProfile, tmp_path: Path) -> None:
    """docs/dropping-files.md's consumer, run as printed, against the running profile."""
    text = (REPO / "docs" / "dropping-files.md").read_text()
    section = text.split("### A consumer in Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'ROOT = Path("/var/lib/sir-convert-a-lot/prod")' in code
    consumer = tmp_path / "consumer.py"
    consumer.write_text(code.replace("/var/lib/sir-convert-a-lot/prod", str(profile.data_root)))
    source = tmp_path / "notes.md"
    source.write_text("# Notes\n\nWritten by the documented consumer.\n")
    done = subprocess.run(
        [sys.executable, str(consumer), str(source), "pdf"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + profile.tail()
    result = Path(done.stdout.strip())
    assert result == profile.data_root / "outbox" / "to-pdf" / "batch" / "notes.pdf"
    assert result.read_bytes().startswith(b"%PDF-")
