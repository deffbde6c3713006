"""Engine settings, and embedded mode importing nothing of the engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from converters.base import Lane
from daemon.config import load_settings
from daemon.errors import ConfigError
from ops.daemon_harness import REPO, daemon_env


def _load(tmp_path: Path, extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    config = tmp_path / "c.toml"
    config.write_text(f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\n{extra}')
    return load_settings(config_path=config, profile="eval", environ=env or {})[1]


def test_embedded_by_default(tmp_path: Path) -> None:
    profile = _load(tmp_path, "")
    assert profile.engine_url is None
    assert profile.engine_lanes == ()


def test_lanes_not_local_go_to_the_engine(tmp_path: Path) -> None:
    profile = _load(tmp_path, 'engine_url = "postgresql://sca@db/sca"\nlocal_lanes = ["cpu"]\n')
    assert profile.engine_lanes == (Lane.GPU,)
    env = {
        "SIR_CONVERT_A_LOT_ENGINE_URL": "postgresql://sca@db/sca?sslmode=verify-full",
        "SIR_CONVERT_A_LOT_LOCAL_LANES": "",
    }
    profile = _load(tmp_path, "", env)
    assert profile.engine_lanes == (Lane.GPU, Lane.CPU)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sca:secret@db/sca",
        "host=db user=sca password=secret",
        "postgresql://db/sca?password=x",
    ],
)
def test_a_password_in_the_url_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="must not hold a password"):
        _load(tmp_path, f'engine_url = "{url}"\n')


def test_embedded_run_never_imports_the_engine(tmp_path: Path) -> None:
    """The daemon's wiring without engine_url: no psycopg, no procrastinate."""
    config = tmp_path / "c.toml"
    config.write_text(f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\n')
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from daemon.config import load_settings\n"
        "from daemon.service import Service\n"
        "from daemon.http import make_app\n"
        "import daemon.cli\n"
        f"settings, profile = load_settings(config_path=Path({str(config)!r}), profile='eval')\n"
        "service = Service(settings, profile)\n"
        "make_app(service)\n"
        "service.evaluate(force=True)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'psycopg_pool', 'procrastinate') or m.startswith('daemon.engine'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=daemon_env({}),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
