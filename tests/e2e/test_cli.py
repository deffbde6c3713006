"""init, check and retry through the real command line; exit codes as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import REPO, Daemon


def cli(
    daemon: Daemon, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env={**daemon.env(), **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_init_creates_the_layout_and_refuses_another_profiles_root(daemon: Daemon) -> None:
    done = cli(daemon, "init", "--profile", "eval")
    assert done.returncode == 0, done.stderr
    for name in ("inbox/to-md", "inbox/to-pdf", "inbox/to-docx", "outbox", "failed", "archive"):
        assert (daemon.root / name).is_dir()
    assert (daemon.root / ".state" / "profile").read_text().strip() == "eval"
    # A root that an eval instance created elsewhere is refused for prod.
    foreign = daemon.base / "moved-root"
    (foreign / ".state").mkdir(parents=True)
    (foreign / ".state" / "profile").write_text("eval\n")
    other = cli(
        daemon,
        "init",
        "--profile",
        "prod",
        env={"SIR_CONVERT_A_LOT_DATA_ROOT": str(foreign), "SIR_CONVERT_A_LOT_PROFILE": "prod"},
    )
    assert other.returncode == 78, other.stderr
    assert "already belongs to profile 'eval'" in other.stderr


def test_config_errors_exit_78_with_a_clear_message(daemon: Daemon) -> None:
    done = cli(daemon, "check", "--profile", "eval", env={"SIR_CONVERT_A_LOT_SETTLE": "1"})
    assert done.returncode == 78
    assert "SIR_CONVERT_A_LOT_SETTLE" in done.stderr
    overlap = cli(
        daemon,
        "run",
        "--profile",
        "eval",
        env={"SIR_CONVERT_A_LOT_DATA_ROOT": str(daemon.base / "prod-root" / "x")},
    )
    assert overlap.returncode == 78
    assert "data_root_overlap" in overlap.stderr
    exposed = cli(
        daemon, "run", "--profile", "eval", env={"SIR_CONVERT_A_LOT_HTTP_HOST": "0.0.0.0"}
    )
    assert exposed.returncode == 78
    assert "allow_non_loopback" in exposed.stderr


def test_check_passes_for_a_servable_profile_and_explains_a_required_gpu(daemon: Daemon) -> None:
    ok = cli(daemon, "check", "--profile", "eval")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "FAIL" not in ok.stdout
    bad = cli(
        daemon, "check", "--profile", "eval", env={"SIR_CONVERT_A_LOT_GPU_POLICY": "required"}
    )
    assert bad.returncode == 1
    assert "gpu_unavailable" in bad.stdout


def test_retry_moves_failed_inputs_back_and_they_convert(daemon: Daemon) -> None:
    daemon.start()
    folder = daemon.inbox / "to-docx" / "team"
    folder.mkdir()
    options = folder / ".sir-convert-a-lot.toml"
    options.write_text("[options]\nnormalize_markdown = 'perhaps'\n")
    staged = daemon.base / "note.md"
    staged.write_text("# Note\n")
    staged.rename(folder / "note.md")
    err = daemon.error("to-docx/team/note.md")
    assert err["error"] == {
        "code": "options_invalid",
        "message": err["error"]["message"],
        "retryable": True,
    }
    assert "normalize_markdown" in err["error"]["message"]
    options.write_text("[options]\nnormalize_markdown = false\n")
    done = cli(daemon, "retry", "--profile", "eval")
    assert done.returncode == 0, done.stderr
    assert "1 file(s) moved back" in done.stderr
    car = daemon.sidecar("to-docx/team/note.docx")
    assert car["status"] == "succeeded"
    assert not (daemon.failed / "to-docx/team/note.md").exists()
    assert not (daemon.failed / "to-docx/team/note.md.error.json").exists()
    status = cli(daemon, "status", "--profile", "eval", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["profile"] == "eval"
    assert daemon.stop() == 0


def test_schema_command_prints_the_published_schema(daemon: Daemon) -> None:
    done = cli(daemon, "schema")
    published = json.loads((Path(REPO) / "docs" / "sidecar.schema.json").read_text())
    assert json.loads(done.stdout) == published
