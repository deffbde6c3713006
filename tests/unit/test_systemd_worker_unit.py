"""The engine worker node's unit: systemd accepts it, and it is as locked down as the daemon's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_systemd_units import (
    MAX_EXPOSURE,
    REPO,
    analyze,
    needs_systemd,
    parse_unit,
)
from tests.unit.test_systemd_units import make_root as units_root

pytestmark = pytest.mark.unit

WORKER = REPO / "systemd" / "sir-convert-a-lot-worker@.service"
INSTANCE = "sir-convert-a-lot-worker@prod.service"


def make_root(base: Path, *, dropin: bool) -> Path:
    return units_root(base, dropin=dropin, unit=WORKER)


@needs_systemd
@pytest.mark.parametrize("dropin", [False, True], ids=["rocm", "with-nvidia-dropin"])
def test_verify_accepts_a_worker_instance(tmp_path: Path, dropin: bool) -> None:
    done = analyze("verify", f"--root={make_root(tmp_path, dropin=dropin)}", INSTANCE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


@needs_systemd
@pytest.mark.parametrize("dropin", [False, True], ids=["rocm", "with-nvidia-dropin"])
def test_worker_exposure_is_at_most_2(tmp_path: Path, dropin: bool) -> None:
    root = make_root(tmp_path, dropin=dropin)
    done = analyze("security", "--offline=true", f"--root={root}", INSTANCE)
    output = done.stdout + done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output[-3000:]


def test_worker_runs_the_worker_command_with_a_password_credential() -> None:
    service = parse_unit(WORKER.read_text())["Service"]
    assert service["ExecStart"][0].split()[1] == "worker"
    assert any("ENGINE_PASSWORD_FILE=%d/" in v for v in service["Environment"])
    assert service["LoadCredential"][0].startswith("engine-password:")
    assert "ReadWritePaths" not in service  # no data root: nothing shared is written
