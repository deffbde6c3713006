"""compose.yaml, compose.nvidia.yaml and the Dockerfile, checked without a Docker engine.

The files are parsed as Compose parses them (YAML with anchors, merge keys and
`!reset`), validated against the Compose Specification's JSON Schema (the copy
vendored by the check-jsonschema package), and held to what the runbook
promises: loopback-only ports, one data volume per profile, read-only models,
a /readyz healthcheck, and a container config the daemon itself accepts.
"""

from __future__ import annotations

import importlib.resources as resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import load_settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("prod", "eval")
RESET = object()  # what `!reset` leaves behind, so the tests can see it


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it, including its `!reset` and `!override` tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    return RESET


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load(name: str) -> dict[str, Any]:
    data = yaml.load((REPO / name).read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


def without_resets(value: Any) -> Any:
    """The file as the schema sees it: `!reset` values become empty lists."""
    if value is RESET:
        return []
    if isinstance(value, dict):
        return {k: without_resets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_resets(v) for v in value]
    return value


BASE = load("compose.yaml")
NVIDIA = load("compose.nvidia.yaml")
DOCKERFILE = (REPO / "Dockerfile").read_text()


def service(name: str) -> dict[str, Any]:
    found = BASE["services"][name]
    assert isinstance(found, dict)
    return found


def container_config() -> dict[str, Any]:
    """The config.toml the Dockerfile writes into the image (a COPY heredoc)."""
    match = re.search(
        r"COPY <<'EOF' /etc/sir-convert-a-lot/config\.toml\n(.*?)\nEOF\n", DOCKERFILE, re.S
    )
    assert match, "the Dockerfile no longer writes /etc/sir-convert-a-lot/config.toml"
    return tomllib.loads(match.group(1))


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    runtime = DOCKERFILE.split(" AS runtime", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", runtime, re.M | re.S):
        for key, value in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", block):
            env[key] = value
    return env


# ---- the Compose Specification -------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    pytest.importorskip(
        "check_jsonschema", reason="the compose-spec schema comes with check-jsonschema"
    )
    path = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


@pytest.mark.parametrize("name", ["compose.yaml", "compose.nvidia.yaml"])
def test_validates_against_the_compose_specification(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(without_resets(load(name))), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_can_fail() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    broken = without_resets(load("compose.yaml"))
    broken["services"]["prod"]["ports"] = "127.0.0.1:8085:8085"  # a string, not a list
    broken["services"]["eval"]["portz"] = ["8086:8086"]
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


# ---- what the runbook promises -------------------------------------------------------


def test_one_service_per_profile_from_one_image() -> None:
    default = {n for n, s in BASE["services"].items() if not s.get("profiles")}
    assert default == set(PROFILES)  # opt-in compose profiles (engine) start nothing by default
    images = {service(p)["image"] for p in PROFILES}
    builds = {json.dumps(service(p)["build"], sort_keys=True) for p in PROFILES}
    assert len(images) == 1 and len(builds) == 1
    for profile in PROFILES:
        assert service(profile)["command"] == ["run", "--profile", profile]
        assert env_of(service(profile))["SIR_CONVERT_A_LOT_PROFILE"] == profile


def test_ports_are_published_on_loopback_only_at_the_profiles_port() -> None:
    config = container_config()["profiles"]
    defaults = tomllib.loads((REPO / "daemon" / "default_config.toml").read_text())["profiles"]
    for profile in PROFILES:
        port = config[profile]["http_port"]
        assert port == defaults[profile]["http_port"]  # 8085 / 8086, as outside containers
        assert service(profile)["ports"] == [f"127.0.0.1:{port}:{port}"]
    for name in ("compose.yaml", "compose.nvidia.yaml"):
        text = (REPO / name).read_text()
        assert "0.0.0.0:" not in text and "network_mode: host" not in text


def mounts(profile: str) -> dict[str, tuple[str, str | None]]:
    """Container path → (source, mode) for the service's volumes."""
    found: dict[str, tuple[str, str | None]] = {}
    for item in service(profile)["volumes"]:
        source, target, *mode = item.split(":")
        found[target] = (source, mode[0] if mode else None)
    return found


def test_each_profile_has_its_own_data_volume_at_its_data_root() -> None:
    config = container_config()["profiles"]
    sources = []
    for profile in PROFILES:
        data_root = config[profile]["data_root"]
        source, mode = mounts(profile)[data_root]
        assert mode is None, "the data root must be writable"
        assert source in BASE["volumes"], f"{source} is not a named volume"
        sources.append(source)
    assert len(set(sources)) == len(PROFILES), "profiles share a data volume"


def test_models_are_shared_and_read_only() -> None:
    config = container_config()["profiles"]
    for profile in PROFILES:
        models_dir = config[profile]["models_dir"]
        assert mounts(profile)[models_dir] == ("models", "ro")
    assert 'VOLUME ["/models"]' in DOCKERFILE
    assert dockerfile_env()["HF_HUB_OFFLINE"] == "1"
    assert dockerfile_env()["SIR_CONVERT_A_LOT_MODELS_DIR"] == "/models"


def test_healthcheck_asks_readyz_on_the_profiles_port() -> None:
    for profile in PROFILES:
        check = service(profile)["healthcheck"]
        port = container_config()["profiles"][profile]["http_port"]
        command = " ".join(check["test"])
        assert check["test"][0] == "CMD"
        assert f"http://127.0.0.1:{port}/readyz" in command
        assert "start_period" in check


def test_restart_and_stop_policy_match_the_systemd_unit() -> None:
    unit = (REPO / "systemd" / "sir-convert-a-lot@.service").read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert stop
    for profile in PROFILES:
        svc = service(profile)
        assert svc["restart"] == "unless-stopped"
        assert svc["stop_grace_period"] == f"{stop.group(1)}s"
        assert svc["stop_signal"] == "SIGTERM"
        assert svc["init"] is True


def test_rocm_devices_by_default() -> None:
    for profile in PROFILES:
        svc = service(profile)
        assert svc["devices"] == ["/dev/kfd", "/dev/dri"]
        groups = " ".join(svc["group_add"])
        assert "video" in groups and "render" in groups
        assert svc["build"]["args"]["TORCH_RUNTIME"].startswith("rocm")
        assert svc["build"]["args"]["TORCH_INDEX"] == "${TORCH_INDEX:-}"  # from the environment


def test_nvidia_variant_replaces_devices_with_a_gpu_reservation() -> None:
    assert set(NVIDIA["services"]) == set(PROFILES)
    for profile in PROFILES:
        svc = NVIDIA["services"][profile]
        assert svc["devices"] is RESET and svc["group_add"] is RESET
        (reservation,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["driver"] == "nvidia" and "gpu" in reservation["capabilities"]
        assert svc["image"] != service(profile)["image"]
        assert svc["build"]["args"]["TORCH_RUNTIME"].startswith("cu")


def test_the_revision_comes_from_the_environment_ops_compose_sets() -> None:
    wanted = "${SIR_CONVERT_A_LOT_SERVICE_REVISION"
    for profile in PROFILES:
        svc = service(profile)
        assert svc["build"]["args"]["SIR_CONVERT_A_LOT_SERVICE_REVISION"].startswith(wanted)
        # Baked in at build time only: set at run time, an old image would
        # report the revision of the checkout that started it.
        assert "SIR_CONVERT_A_LOT_SERVICE_REVISION" not in env_of(svc)
    for svc in NVIDIA["services"].values():
        assert "SIR_CONVERT_A_LOT_SERVICE_REVISION" not in env_of(svc)
    assert "ARG SIR_CONVERT_A_LOT_SERVICE_REVISION" in DOCKERFILE
    assert "SIR_CONVERT_A_LOT_SERVICE_REVISION=${SIR_CONVERT_A_LOT_SERVICE_REVISION}" in DOCKERFILE


def test_the_daemon_accepts_the_containers_config_and_environment(tmp_path: Path) -> None:
    """What the container runs with would not make the daemon exit 78."""
    config = tmp_path / "config.toml"
    text = DOCKERFILE.split("COPY <<'EOF' /etc/sir-convert-a-lot/config.toml\n", 1)[1]
    config.write_text(text.split("\nEOF\n", 1)[0].replace("/data/", f"{tmp_path}/data/"))
    for profile in PROFILES:
        env = {
            k: v
            for k, v in {**dockerfile_env(), **env_of(service(profile))}.items()
            if k.startswith("SIR_CONVERT_A_LOT_")
        }
        env["SIR_CONVERT_A_LOT_CONFIG"] = str(config)
        env["SIR_CONVERT_A_LOT_SERVICE_REVISION"] = "0" * 40
        _, settings = load_settings(environ=env)
        assert settings.name == profile
        assert settings.allow_non_loopback  # binds 0.0.0.0 inside the container only


# ---- the image -----------------------------------------------------------------------


def test_dockerfile_builds_in_stages_and_runs_as_a_user() -> None:
    stages = re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, re.M)
    assert stages == ["build", "runtime"]
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert DOCKERFILE.rstrip().splitlines()[-2:] == [
        'ENTRYPOINT ["sir-convert-a-lot"]',
        'CMD ["run", "--profile", "prod"]',
    ]


def test_runtime_image_has_what_weasyprint_needs() -> None:
    runtime = DOCKERFILE.split(" AS runtime", 1)[1]
    for package in ("libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0", "fonts-"):
        assert package in runtime, package
    assert "pandoc" not in re.findall(r"apt-get install[^&]*", runtime)[0].split()


def test_nothing_is_downloaded_at_build_time_but_packages() -> None:
    instructions = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    lowered = "\n".join(instructions).lower()
    for forbidden in ("models fetch", "huggingface", "hf_hub_download", "curl ", "wget "):
        assert forbidden not in lowered, forbidden


def test_dockerignore_sends_only_what_pip_install_needs() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(?!<<)(.*) \S+$", DOCKERFILE, re.M))
    needed = {part for item in copied for part in item.split()}
    assert needed <= included, f"{needed - included} are copied but ignored"
    for path in included:
        assert (REPO / path).exists() or path == "README.md", path


def test_the_engine_profile_is_a_one_host_trial_of_the_shared_engine() -> None:
    services = BASE["services"]
    engine = {n for n, s in services.items() if "engine" in s.get("profiles", [])}
    assert engine == {"engine-db", "engine-init", "engine-ingest", "engine-worker"}
    worker = services["engine-worker"]
    assert worker["command"][0] == "worker"
    # A worker node has no path to the data root: models only, read-only.
    assert [v.split(":")[1] for v in worker["volumes"]] == ["/models"]
    env = env_of(worker)
    assert "@" in env["SIR_CONVERT_A_LOT_ENGINE_URL"]
    assert ":" not in env["SIR_CONVERT_A_LOT_ENGINE_URL"].split("//")[1].split("@")[0]
    assert env["SIR_CONVERT_A_LOT_ENGINE_PASSWORD_FILE"].startswith("/run/secrets/")
    assert services["engine-init"]["command"][:2] == ["engine", "init"]
