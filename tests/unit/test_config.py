from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import check_data_roots, load_settings
from daemon.errors import ConfigError, DataRootOverlap


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def two_profiles(prod: Path, eval_: Path, extra: str = "") -> str:
    return (
        f'[profiles.prod]\ndata_root = "{prod}"\n{extra}\n'
        f'[profiles.eval]\ndata_root = "{eval_}"\nhttp_port = 8086\n'
    )


def test_embedded_default_has_prod_and_eval_on_their_ports(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    settings, prod = load_settings(profile="prod", environ=env)
    assert set(settings.profiles) == {"prod", "eval"}
    assert (prod.http_host, prod.http_port, prod.gpu_policy) == ("127.0.0.1", 8085, "required")
    assert prod.data_root == tmp_path / "xdg" / "sir-convert-a-lot" / "prod"
    ev = settings.profiles["eval"]
    assert (ev.http_port, ev.gpu_policy) == (8086, "preferred")


def test_environment_overrides_the_selected_profile(tmp_path: Path) -> None:
    cfg = write(tmp_path, two_profiles(tmp_path / "p", tmp_path / "e"))
    env = {
        "SIR_CONVERT_A_LOT_CONFIG": str(cfg),
        "SIR_CONVERT_A_LOT_PROFILE": "eval",
        "SIR_CONVERT_A_LOT_HTTP_PORT": "9999",
        "SIR_CONVERT_A_LOT_GPU_POLICY": "cpu",
        "SIR_CONVERT_A_LOT_DATA_ROOT": str(tmp_path / "other"),
        "SIR_CONVERT_A_LOT_EXPECTED_REVISION": "abc",
    }
    settings, ev = load_settings(environ=env)
    assert ev.name == "eval"
    assert (ev.http_port, ev.gpu_policy, ev.expected_revision) == (9999, "cpu", "abc")
    assert ev.data_root == tmp_path / "other"
    assert settings.profiles["prod"].http_port == 8085


def test_unknown_environment_variable_is_refused(tmp_path: Path) -> None:
    env = {"SIR_CONVERT_A_LOT_DATAROOT": "/x", "HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="SIR_CONVERT_A_LOT_DATAROOT"):
        load_settings(profile="eval", environ=env)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, two_profiles(tmp_path / "p", tmp_path / "e", "settle_secs = 3"))
    with pytest.raises(ConfigError, match="settle_secs"):
        load_settings(config_path=cfg, profile="prod", environ={})


def test_unknown_profile_and_bad_values_are_clear_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path, two_profiles(tmp_path / "p", tmp_path / "e", 'gpu_policy = "maybe"'))
    with pytest.raises(ConfigError, match="gpu_policy"):
        load_settings(config_path=cfg, profile="prod", environ={})
    cfg = write(tmp_path, two_profiles(tmp_path / "p", tmp_path / "e"))
    with pytest.raises(ConfigError, match="unknown profile 'staging'"):
        load_settings(config_path=cfg, profile="staging", environ={})


def test_config_error_exits_with_ex_config() -> None:
    assert ConfigError("x").exit_code == 78


@pytest.mark.parametrize("layout", ["equal", "nested", "symlink"])
def test_overlapping_data_roots_are_refused(tmp_path: Path, layout: str) -> None:
    prod = tmp_path / "prod"
    prod.mkdir()
    if layout == "equal":
        eval_ = prod
    elif layout == "nested":
        eval_ = prod / "eval"
    else:
        eval_ = tmp_path / "alias"
        os.symlink(prod, eval_)
    cfg = write(tmp_path, two_profiles(prod, eval_))
    settings, _ = load_settings(config_path=cfg, profile="prod", environ={})
    with pytest.raises(DataRootOverlap):
        check_data_roots(settings, code_dirs=[])


def test_data_root_over_the_code_is_refused(tmp_path: Path) -> None:
    code = tmp_path / "venv"
    cfg = write(tmp_path, two_profiles(code / "data", tmp_path / "e"))
    settings, _ = load_settings(config_path=cfg, profile="prod", environ={})
    with pytest.raises(DataRootOverlap, match="program"):
        check_data_roots(settings, code_dirs=[code])


def test_separate_roots_pass(tmp_path: Path) -> None:
    cfg = write(tmp_path, two_profiles(tmp_path / "prod", tmp_path / "prod-eval"))
    settings, _ = load_settings(config_path=cfg, profile="prod", environ={})
    check_data_roots(settings, code_dirs=[tmp_path / "code"])


def test_a_lane_table_keeps_that_lanes_defaults_for_keys_it_does_not_name(
    tmp_path: Path,
) -> None:
    # The documented example ``cpu = { workers = 4 }`` used to drop the CPU
    # lane's express worker and 300 s time-out for LaneSettings' own defaults.
    extra = "cpu = { workers = 4 }\n[profiles.prod.gpu]\nmemory_ceiling_mb = 3000\n"
    cfg = write(tmp_path, two_profiles(tmp_path / "p", tmp_path / "e", extra))
    _, prod = load_settings(config_path=cfg, profile="prod", environ={})
    assert (prod.cpu.workers, prod.cpu.express_workers) == (4, 2)
    assert prod.cpu.job_timeout_seconds == 300
    assert (prod.gpu.workers, prod.gpu.job_timeout_seconds) == (1, 900)
    assert prod.gpu.memory_ceiling_mb == 3000
    assert prod.cpu.budget_seconds("md->pdf", 2**20) == 60  # 30 s + 30 s per MB
    assert prod.cpu.budget_seconds("html->pdf", 190 * 2**20) == 300  # capped by the lane
