"""The ops/ scripts, the alert rules and the dashboard, without a daemon or a GPU.

Each script's --help, its usage errors and its failure reports are checked the
way an operator meets them. ops/compose runs here against a stand-in `docker`
client (a shell script that records its arguments), since this machine has
the Docker CLI but no Compose v2 plugin and no engine.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from daemon.layout import DataRoot
from daemon.metrics import Metrics
from ops import hotfolder, sample_docs
from ops.daemon_harness import free_port

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"

# The metrics the brief names; the alerts and the dashboard must use them.
REQUIRED_METRICS = {
    "sir_convert_a_lot_ready",
    "sir_convert_a_lot_readiness_check",
    "sir_convert_a_lot_oldest_waiting_seconds",
    "sir_convert_a_lot_jobs_total",
    "sir_convert_a_lot_worker_restarts_total",
    "sir_convert_a_lot_queue_depth",
}


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", {**os.environ})
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )  # fmt: skip


def script(name: str) -> list[str]:
    path = OPS / name
    if path.read_text().startswith("#!/usr/bin/env python3"):
        return [sys.executable, str(path)]  # the interpreter running the tests, not PATH's
    return ["bash", str(path)]


# ---- --help ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("remote", ["--shell", "SIR_CONVERT_A_LOT_REMOTE_HOST", "66", "67", "68"]),
        ("compose", ["build", "start", "check", "ps", "logs", "config", "stop", "--nvidia"]),
        ("verify-gpu", ["--report-dir", "--python", "--pages"]),
        ("smoke", ["--data-root", "--port", "--with-pdf-md", "--report-dir"]),
    ],
)
def test_help(name: str, words: list[str]) -> None:
    assert os.access(OPS / name, os.X_OK), f"ops/{name} is not executable"
    done = run([*script(name), "--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.lower().startswith("usage:")
    for word in words:
        assert word in done.stdout, word


# ---- ops/remote argument handling (the SSH side is tests/e2e/test_ops_remote.py) ------


def test_remote_refuses_to_run_without_host_root_or_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_REMOTE")}
    no_host = run([*script("remote"), "--root", "/srv/x", "true"], env=env)
    assert no_host.returncode == 64 and "SIR_CONVERT_A_LOT_REMOTE_HOST" in no_host.stderr
    no_root = run([*script("remote"), "--host", "gpu", "true"], env=env)
    assert no_root.returncode == 64 and "SIR_CONVERT_A_LOT_REMOTE_ROOT" in no_root.stderr
    no_command = run([*script("remote"), "--host", "gpu", "--root", "/srv/x"], env=env)
    assert no_command.returncode == 64 and "no command" in no_command.stderr
    both = run([*script("remote"), "--host", "g", "--root", "/x", "--shell", "ls"], env=env)
    assert both.returncode == 64


# ---- ops/compose ------------------------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
if [ "$1 $2" = "compose version" ]; then
    [ -n "$FAKE_COMPOSE_VERSION" ] || exit 1
    echo "$FAKE_COMPOSE_VERSION"; exit 0
fi
{
  printf 'ARGS'; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'
  echo "REVISION $SIR_CONVERT_A_LOT_SERVICE_REVISION"
  echo "MODELS $MODELS_HOST_DIR"
} >> "$FAKE_DOCKER_LOG"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding ops/compose and the compose files, with one commit."""
    repo = tmp_path / "checkout"
    (repo / "ops").mkdir(parents=True)
    shutil.copy(OPS / "compose", repo / "ops" / "compose")
    for name in ("compose.yaml", "compose.nvidia.yaml"):
        shutil.copy(REPO / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test"], check=True)
    return repo


def fake_docker(tmp_path: Path, version: str | None) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
    }
    if version:
        env["FAKE_COMPOSE_VERSION"] = version
    return env


def compose_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "docker.log"
    return log.read_text().splitlines() if log.exists() else []


def test_compose_refuses_without_docker(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER": str(tmp_path / "no-such-docker")}
    done = run([*script("compose"), "config"], env=env)
    assert done.returncode == 69
    assert "docker is not installed" in done.stderr


def test_compose_refuses_without_compose_v2(tmp_path: Path) -> None:
    env = fake_docker(tmp_path, version=None)
    done = run([*script("compose"), "config"], env=env)
    assert done.returncode == 69
    assert "Compose v2" in done.stderr and "docker-compose-plugin" in done.stderr
    assert compose_calls(tmp_path) == []


def test_compose_refuses_docker_compose_v1(tmp_path: Path) -> None:
    env = fake_docker(tmp_path, version=None)
    v1 = tmp_path / "bin" / "docker-compose"
    v1.write_text("#!/bin/sh\necho 'docker-compose version 1.29.2'\n")
    v1.chmod(0o755)
    done = run([*script("compose"), "ps"], env=env)
    assert done.returncode == 69
    assert "docker-compose, which is not supported" in done.stderr
    old = run([*script("compose"), "ps"], env={**env, "FAKE_COMPOSE_VERSION": "1.29.2"})
    assert old.returncode == 69 and "found '1.29.2'" in old.stderr


def test_compose_with_the_real_docker_cli_here_fails_clearly() -> None:
    """This machine has a docker client without the Compose plugin, or none at all."""
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        pytest.skip("docker compose v2 is installed here")
    done = run([*script("compose"), "config"])
    assert done.returncode == 69
    assert "ops/compose:" in done.stderr and done.stderr[-1] == "\n"


def test_compose_passes_files_and_revision(tmp_path: Path, checkout: Path) -> None:
    env = fake_docker(tmp_path, version="2.29.7")
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    compose = ["bash", str(checkout / "ops" / "compose")]

    assert run([*compose, "--rocm", "config"], env=env).returncode == 0
    assert run([*compose, "--nvidia", "build", "eval"], env=env).returncode == 0
    assert run([*compose, "--rocm", "logs", "-f", "prod"], env=env).returncode == 0
    calls = compose_calls(tmp_path)
    base = f"ARGS compose --project-directory {checkout} -f {checkout}/compose.yaml"
    nvidia = f"{base} -f {checkout}/compose.nvidia.yaml"
    assert calls[0] == f"{base} config"
    assert calls[3] == f"{nvidia} build eval"
    assert calls[4] == f"REVISION {head}"  # build is stamped with the checkout's HEAD
    assert calls[6] == f"{base} logs -f prod"


def test_compose_start_needs_the_models_folder(tmp_path: Path, checkout: Path) -> None:
    env = fake_docker(tmp_path, version="v2.29.7")
    env["MODELS_HOST_DIR"] = str(tmp_path / "no-models")
    done = run(["bash", str(checkout / "ops" / "compose"), "--rocm", "start"], env=env)
    assert done.returncode == 1
    assert "no-models does not exist" in done.stderr
    (tmp_path / "no-models").mkdir()
    done = run(["bash", str(checkout / "ops" / "compose"), "--rocm", "start", "prod"], env=env)
    assert done.returncode == 0, done.stderr
    assert compose_calls(tmp_path)[-3].endswith("up --detach prod")


def test_compose_usage_errors(tmp_path: Path, checkout: Path) -> None:
    env = fake_docker(tmp_path, version="2.29.7")
    compose = ["bash", str(checkout / "ops" / "compose")]
    assert run([*compose, "launch"], env=env).returncode == 64
    assert run([*compose, "start", "staging"], env=env).returncode == 64
    assert run([*compose, "--gpu", "config"], env=env).returncode == 64
    assert run([*compose, "--timeout", "soon", "check"], env=env).returncode == 64
    assert run(compose, env=env).returncode == 64
    assert compose_calls(tmp_path) == []


# ---- ops/verify-gpu on a machine without a GPU ----------------------------------------

no_gpu_here = pytest.mark.skipif(
    bool(shutil.which("nvidia-smi") or shutil.which("rocm-smi")),
    reason="this machine has a GPU tool; the GPU path is checked there by running ops/verify-gpu",
)


@no_gpu_here
def test_verify_gpu_fails_and_says_why_without_a_gpu(tmp_path: Path) -> None:
    reports = tmp_path / "report"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    done = run(
        [*script("verify-gpu"), "--python", sys.executable, "--report-dir", str(reports)],
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((reports / "report.json").read_text())
    assert report["ok"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"smi", "torch", "job", "gpu_busy"}
    assert not any(c["ok"] for c in checks.values())
    assert "neither rocm-smi nor nvidia-smi" in checks["smi"]["detail"]
    assert checks["job"]["detail"].startswith("skipped")
    markdown = (reports / "report.md").read_text()
    assert markdown.startswith("# GPU verification: FAILED")
    assert "neither rocm-smi nor nvidia-smi" in markdown


@no_gpu_here
def test_verify_gpu_reads_nvidia_smi_but_still_needs_torch_to_see_the_gpu(
    tmp_path: Path,
) -> None:
    """nvidia-smi lists a GPU (a stand-in here), but torch on this machine sees none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H200, 570.86.15, 143771 MiB, 0 %'\n")
    smi.chmod(0o755)
    reports = tmp_path / "report"
    done = run(
        [*script("verify-gpu"), "--python", sys.executable, "--report-dir", str(reports)],
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    report = json.loads((reports / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["smi"]["ok"] is True
    assert report["smi"]["gpus"][0]["name"] == "NVIDIA H200"
    assert checks["torch"]["ok"] is False
    assert "available=False" in checks["torch"]["detail"] or "failed" in checks["torch"]["detail"]


# ---- ops/smoke without a daemon -------------------------------------------------------


def test_smoke_fails_fast_when_nothing_answers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    DataRoot(root).create()
    reports = tmp_path / "report"
    argv = ["--data-root", str(root), "--port", str(free_port()), "--ready-timeout", "0"]
    done = run([*script("smoke"), *argv, "--report-dir", str(reports)], cwd=tmp_path)
    assert done.returncode == 69
    report = json.loads((reports / "report.json").read_text())
    assert report["ok"] is False and "nothing answered" in report["error"]
    assert list((root / "inbox").rglob("*.*")) == [], "nothing may be dropped"


def test_smoke_rejects_unknown_routes(tmp_path: Path) -> None:
    done = run([*script("smoke"), "--data-root", str(tmp_path), "--routes", "md-xlsx"])
    assert done.returncode == 2 and "unknown route 'md-xlsx'" in done.stderr


# ---- the client-side helpers agree with the daemon's layout -------------------------


@pytest.mark.parametrize(
    "relative",
    ["to-md/a/b/report.pdf", "to-pdf/notes.md", "to-docx/x/page.html", "slides.docx"],
)
def test_answer_paths_match_the_daemons_layout(tmp_path: Path, relative: str) -> None:
    root = DataRoot(tmp_path)
    rel = PurePosixPath(relative)
    resolved = root.resolve(rel, {"docx": "md", "pdf": "md", "md": "pdf", "html": "md"})
    meta, error = hotfolder.answer_paths(tmp_path, rel, resolved.target)
    assert meta == root.outbox / f"{resolved.output_relative}.meta.json"
    assert error == root.failed / f"{relative}.error.json"


def test_drop_appears_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    final = hotfolder.drop(tmp_path, PurePosixPath("to-md/run/x.pdf"), b"%PDF-1.4 test")
    assert final == tmp_path / "inbox" / "to-md" / "run" / "x.pdf"
    assert final.read_bytes() == b"%PDF-1.4 test"
    assert [p.name for p in final.parent.iterdir()] == ["x.pdf"]


def test_sample_pdf_has_pages_and_the_marker() -> None:
    pdfium = pytest.importorskip("pypdfium2")
    pdf = pdfium.PdfDocument(sample_docs.make_pdf("MARK42", pages=3))
    assert len(pdf) == 3
    text = pdf[2].get_textpage().get_text_range()
    assert "Smoke test MARK42" in text and "Page 3 of 3" in text


def test_sample_docx_has_a_heading_a_table_and_the_marker() -> None:
    docx = pytest.importorskip("docx")
    document = docx.Document(io.BytesIO(sample_docs.make_docx("MARK42")))
    assert document.paragraphs[0].text == "Smoke test MARK42"
    assert document.paragraphs[0].style.name == "Heading 1"
    assert document.tables[0].rows[1].cells[0].text == "pdf to md"
    with zipfile.ZipFile(io.BytesIO(sample_docs.make_docx("M"))) as package:
        assert package.testzip() is None


def test_sample_markdown_and_html_carry_the_marker() -> None:
    assert b"# Smoke test M1" in sample_docs.make_sample("md", "M1")
    assert b"<h1>Smoke test M1</h1>" in sample_docs.make_sample("html", "M1")
    with pytest.raises(ValueError, match=r"no sample for \.xlsx"):
        sample_docs.make_sample("xlsx", "M1")


# ---- alerts and dashboard -------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    """Every series name the daemon's registry can expose, suffixes included."""
    names: set[str] = set()
    for family in Metrics("test").registry.collect():
        base = family.name
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        elif family.type == "info":
            names.add(f"{base}_info")
        else:
            names.add(base)
    return names


METRIC = re.compile(r"\bsir_convert_a_lot_[a-z0-9_]+")


def alert_exprs() -> list[str]:
    import yaml

    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_referenced_exists(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    known = exposed_metric_names()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used, "no metric referenced at all"
    assert used <= known, f"unknown metrics: {sorted(used - known)}"


def test_alerts_and_dashboard_cover_the_required_metrics() -> None:
    used = {name for expr in alert_exprs() + dashboard_exprs() for name in METRIC.findall(expr)}
    assert used >= REQUIRED_METRICS, sorted(REQUIRED_METRICS - used)
    alerts_used = {name for expr in alert_exprs() for name in METRIC.findall(expr)}
    assert alerts_used >= REQUIRED_METRICS, sorted(REQUIRED_METRICS - alerts_used)


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_links_to_a_runbook_section() -> None:
    import yaml

    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in the runbook"


def test_the_runbook_covers_every_readiness_code() -> None:
    from daemon.readiness import CHECKS

    runbook = (REPO / "docs" / "runbook.md").read_text()
    for check, code in CHECKS.items():
        assert f"| `{code}` (`{check}`) |" in runbook, code


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is needed (apt-get install prometheus)",
)


@needs_promtool
def test_promtool_check_rules() -> None:
    done = run(["promtool", "check", "rules", str(OPS / "alerts.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    done = run(["promtool", "test", "rules", "alerts.test.yml"], cwd=OPS)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = (OPS / "alerts.yml").read_text().replace("== 0", "== ", 1)
    (tmp_path / "alerts.yml").write_text(broken)
    done = run(["promtool", "check", "rules", str(tmp_path / "alerts.yml")])
    assert done.returncode != 0


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is needed (apt-get install shellcheck)"
)
def test_shell_scripts_pass_shellcheck() -> None:
    done = run(["shellcheck", "--severity=style", str(OPS / "remote"), str(OPS / "compose")])
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, as a recording rule, must pass `promtool check rules`."""
    import yaml

    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(["promtool", "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
