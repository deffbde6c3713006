"""Settings: one validated model per profile, built once and passed down.

Sources, lowest precedence first: the embedded default (or the TOML file given
by ``--config`` / ``SIR_CONVERT_A_LOT_CONFIG``), then ``SIR_CONVERT_A_LOT_*``
environment variables for the selected profile. Unknown keys and unknown
variables are refused, so a renamed setting is never silently ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from converters.base import ConvertOptions, GpuPolicy, Lane, Limits
from daemon.automation_settings import EventsSettings, NotifySettings, RetentionSettings
from daemon.errors import ConfigError, DataRootOverlap
from daemon.lane_settings import LANE_DEFAULTS, LaneSettings

__all__ = [
    "ENV_PREFIX",
    "DEFAULT_IGNORE_DIRS",
    "DEFAULT_IGNORE_PATTERNS",
    "EnvOverrides",
    "EventsSettings",
    "NotifySettings",
    "RetentionSettings",
    "ProfileSettings",
    "Settings",
    "check_data_roots",
    "load_settings",
]

ENV_PREFIX = "SIR_CONVERT_A_LOT_"
# Variables with our prefix that are not profile overrides: read by the tools and
# tests, or (FAULTS) the opt-in fault injection of daemon/faults.py, a testing knob.
_FOREIGN_ENV = {"REMOTE_HOST", "REMOTE_ROOT", "REMOTE_SSH_OPTS", "TEST_LONG", "CONFIG", "FAULTS"}

DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    ".*",
    "~$*",
    "*.part",
    "*.crdownload",
    "*.tmp",
    "._*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
)
DEFAULT_IGNORE_DIRS: tuple[str, ...] = ("@eaDir", ".stfolder", ".Trashes", "__MACOSX")
# Files a document may reference (images, stylesheets, fonts). They stay in the
# inbox untouched so that an HTML or Markdown file next to them can use them.
DEFAULT_ASSET_EXTENSIONS: tuple[str, ...] = (
    "png",
    "jpg",
    "jpeg",
    "gif",
    "svg",
    "webp",
    "css",
    "woff",
    "woff2",
    "ttf",
    "otf",
)


class ProfileSettings(BaseModel):
    """Everything one daemon process needs. Frozen: settings are never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", description="filled in from the table name")
    data_root: Path
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8085, ge=0, le=65535)
    allow_non_loopback: bool = False
    gpu_policy: GpuPolicy = "preferred"
    models_dir: Path | None = None
    service_revision: str | None = None
    expected_revision: str | None = None

    observer: Literal["inotify", "polling"] = "inotify"
    polling_interval_seconds: float = Field(default=1.0, gt=0)
    settle_seconds: float = Field(default=2.0, ge=0)
    rescan_interval_seconds: float = Field(default=30.0, gt=0)
    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    extra_ignore_patterns: tuple[str, ...] = ()
    ignore_dirs: tuple[str, ...] = DEFAULT_IGNORE_DIRS
    asset_extensions: tuple[str, ...] = DEFAULT_ASSET_EXTENSIONS
    default_targets: dict[str, Literal["md", "pdf", "docx"]] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "pdf": "md",
            "docx": "md",
            "pptx": "md",
            "xlsx": "md",
            "html": "md",
            "htm": "md",
            "md": "pdf",
            "markdown": "pdf",
        }
    )
    on_success: Literal["archive", "delete"] = "archive"
    # Result reuse (daemon/reuse.py): an input converted before, the same way, is
    # not converted again; its earlier output is copied from a cache in .state.
    reuse: bool = True
    reuse_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)

    queue_size: int = Field(default=64, ge=1)
    max_attempts: int = Field(default=3, ge=1, description="crash/worker-loss retries")
    drain_seconds: float = Field(default=60.0, ge=0)
    cpu: LaneSettings = LaneSettings.model_validate(LANE_DEFAULTS["cpu"])
    gpu: LaneSettings = LaneSettings.model_validate(LANE_DEFAULTS["gpu"])
    min_free_disk_mb: int = Field(default=512, ge=0)
    heartbeat_timeout_seconds: float = Field(default=30.0, gt=0)

    options: ConvertOptions = ConvertOptions()
    limits: Limits = Limits()
    events: EventsSettings = EventsSettings()
    notify: NotifySettings = NotifySettings()
    retention: RetentionSettings = RetentionSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The shared job engine (docs/architecture.md, "outgrowing one host"). Unset: embedded.
    engine_url: str | None = None
    engine_password_file: Path | None = None
    # Lanes this node converts itself (with an engine: their overflow goes there);
    # a lane not named here goes to the engine only.
    local_lanes: tuple[Lane, ...] = (Lane.GPU, Lane.CPU)
    engine_max_input_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Jobs handed to the engine and not yet back (bounds intake while it is down).
    engine_max_outstanding: int = Field(default=256, ge=1)
    engine_stall_seconds: float = Field(default=30.0, gt=0)
    engine_poll_seconds: float = Field(default=0.2, gt=0)
    # This node's name in sidecars (service.worker_host) and the engine; default: the host name.
    node_name: str | None = None

    @field_validator("engine_url")
    @classmethod
    def _no_password_in_url(cls, value: str | None) -> str | None:
        """A password is read from ``engine_password_file`` or libpq's password
        file, never from the URL (it would show in ps, logs and /status)."""
        if value is None or not value.strip():
            return None
        if re.search(r"://[^/@]*:[^/@]*@", value) or re.search(r"(^|[\s?&])password=", value):
            raise ValueError(
                "engine_url must not hold a password; use engine_password_file or ~/.pgpass"
            )
        return value

    @field_validator("local_lanes", mode="before")
    @classmethod
    def _lane_list(cls, value: object) -> object:
        """``"gpu,cpu"`` (the environment's spelling) or a list; empty: no local lane."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def engine_lanes(self) -> tuple[Lane, ...]:
        """The lanes this ingest node hands to the engine only (none when embedded)."""
        if self.engine_url is None:
            return ()
        return tuple(lane for lane in (Lane.GPU, Lane.CPU) if lane not in self.local_lanes)

    @field_validator("cpu", "gpu", mode="before")
    @classmethod
    def _lane_over_defaults(cls, value: object, info: ValidationInfo) -> object:
        """A lane table names the keys it changes; the others keep *that lane's* defaults.

        Without this, ``cpu = { workers = 4 }`` silently took LaneSettings' own
        defaults for the rest: a 600 s time-out and no express worker.
        """
        if isinstance(value, Mapping):
            return {**LANE_DEFAULTS[str(info.field_name)], **value}
        return value

    @field_validator("data_root", "models_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """Relative paths are taken from the working directory, once, at load time."""
        return value.absolute() if value is not None else None

    @field_validator("http_host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("http_host must not be empty")
        return value

    @property
    def all_ignore_patterns(self) -> tuple[str, ...]:
        return self.ignore_patterns + self.extra_ignore_patterns


class Settings(BaseModel):
    """The whole file: every profile, so overlaps between them can be checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, ProfileSettings]
    source: str = "embedded default"

    def profile(self, name: str) -> ProfileSettings:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"unknown profile {name!r} (known: {known})") from None


class EnvOverrides(BaseSettings):
    """The ``SIR_CONVERT_A_LOT_*`` variables that override the selected profile."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    config: Path | None = None
    profile: str | None = None
    data_root: Path | None = None
    http_host: str | None = None
    http_port: int | None = None
    gpu_policy: GpuPolicy | None = None
    models_dir: Path | None = None
    service_revision: str | None = None
    expected_revision: str | None = None
    engine_url: str | None = None
    engine_password_file: Path | None = None
    local_lanes: str | None = None
    node_name: str | None = None


def _check_env_names(environ: Mapping[str, str]) -> None:
    known = {name.upper() for name in EnvOverrides.model_fields} | _FOREIGN_ENV
    unknown = sorted(
        key for key in environ if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :] not in known
    )
    if unknown:
        allowed = ", ".join(ENV_PREFIX + n for n in sorted(known - _FOREIGN_ENV))
        raise ConfigError(
            f"unknown environment variable(s): {', '.join(unknown)}. Known: {allowed}"
        )


def _expand(raw: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or str(Path.home())
    xdg = environ.get("XDG_DATA_HOME") or f"{home}/.local/share"

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "XDG_DATA_HOME":
            return xdg
        if name in environ:
            return environ[name]
        raise ConfigError(f"data_root refers to ${{{name}}}, which is not set")

    expanded = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, raw)
    if expanded.startswith("~"):
        expanded = home + expanded[1:]
    return expanded


def _format_validation(error: ValidationError, where: str) -> str:
    lines = [f"invalid configuration in {where}:"]
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        lines.append(f"  {loc}: {item['msg']}")
    return "\n".join(lines)


def _parse(raw: dict[str, object], where: str, environ: Mapping[str, str]) -> Settings:
    profiles = raw.get("profiles")
    extra = sorted(set(raw) - {"profiles"})
    if extra:
        raise ConfigError(f"unknown top-level key(s) in {where}: {', '.join(extra)}")
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError(f"{where} defines no [profiles.NAME] table")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(f"profiles.{name} in {where} must be a table")
        if "name" in table:
            raise ConfigError(f"profiles.{name}.name is implied by the table name; remove it")
        table["name"] = name
        if isinstance(table.get("data_root"), str):
            table["data_root"] = _expand(table["data_root"], environ)
    try:
        return Settings.model_validate({"profiles": profiles, "source": where})
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where)) from None


def _read_file(path: Path, environ: Mapping[str, str]) -> Settings:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return _parse(raw, str(path), environ)


def _embedded(environ: Mapping[str, str]) -> Settings:
    text = resources.files("daemon").joinpath("default_config.toml").read_text("utf-8")
    return _parse(tomllib.loads(text), "embedded default", environ)


def load_settings(
    *,
    config_path: Path | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, ProfileSettings]:
    """Build the settings once. Returns every profile and the selected one.

    The selected profile has the environment overrides applied; the others are
    as the file says (they are only used for the overlap check).
    """
    env = os.environ if environ is None else environ
    _check_env_names(env)
    try:
        # pydantic-settings reads the process environment itself; a mapping given
        # explicitly (tests, `check`) is validated through the same model.
        overrides = (
            EnvOverrides() if environ is None else EnvOverrides.model_validate(_env_values(env))
        )
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, "environment")) from None
    path = config_path or overrides.config
    settings = _read_file(path, env) if path else _embedded(env)

    name = profile or overrides.profile
    if name is None:
        raise ConfigError("no profile selected: pass --profile or set SIR_CONVERT_A_LOT_PROFILE")
    if profile and overrides.profile and profile != overrides.profile:
        raise ConfigError(
            f"--profile {profile} disagrees with SIR_CONVERT_A_LOT_PROFILE={overrides.profile}"
        )
    base = settings.profile(name)
    changes = {
        key: value
        for key, value in overrides.model_dump(exclude={"config", "profile"}).items()
        if value is not None
    }
    try:
        selected = ProfileSettings.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, "environment overrides")) from None
    profiles = dict(settings.profiles)
    profiles[name] = selected
    settings = Settings(profiles=profiles, source=settings.source)
    return settings, selected


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """Our variables, lower-cased without the prefix (pydantic validates them)."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            field = key[len(ENV_PREFIX) :].lower()
            if field in EnvOverrides.model_fields:
                out[field] = value
    return out


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_data_roots(settings: Settings, *, code_dirs: list[Path]) -> None:
    """Refuse equal, nested or symlink-aliased data roots, and roots over code or venv."""
    roots = {name: _real(p.data_root) for name, p in settings.profiles.items()}
    names = sorted(roots)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if _overlaps(roots[first], roots[second]):
                raise DataRootOverlap(
                    f"data roots of profiles {first!r} ({roots[first]}) and {second!r} "
                    f"({roots[second]}) overlap; every profile needs its own data root",
                    profiles=[first, second],
                )
    for name in names:
        for code in code_dirs:
            real_code = _real(code)
            if _overlaps(roots[name], real_code):
                raise DataRootOverlap(
                    f"data root of profile {name!r} ({roots[name]}) overlaps {real_code}, "
                    "which holds the program or its virtual environment",
                    profile=name,
                )
