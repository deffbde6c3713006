"""The worker wire: typed JSON lines between the main process and a worker, bounded on both sides.

One module defines every message both ends speak, as pydantic models: the
``Hello`` the main process sends first, the worker's ``Ready``, then a
``JobRequest`` and a ``JobReply`` per job; a converter's ``Problem`` (a typed
``{code, message, details}``) travels inside both. The one-shot ``convert``
and, later, remote workers use the same models. The rescan helper
(daemon/scanner.py) speaks ``ScanSetup`` and ``ScanReply``.

A worker's reply quotes whatever a library put into its error message, and a
hostile document decides that: WeasyPrint quoted a 20 MB ``viewBox`` token,
the line passed the reader's limit, and the slot that read it died. So the
sender cuts every string and the whole line (``encode``), and the main process
treats anything it cannot read back (``decode``: not JSON, or not the model it
expects) as a worker crash, never as an exception of its own.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from converters.base import ConvertOptions, Device, GpuPolicy, Lane, Limits, RuntimeKind
from converters.errors import SirError
from daemon.errors import error_for_code

__all__ = [
    "LINE_LIMIT",
    "MAX_FIELD_CHARS",
    "MAX_ITEMS",
    "MAX_LINE_BYTES",
    "MAX_RESOURCES",
    "MAX_RESOURCE_BYTES",
    "Hello",
    "JobReply",
    "JobRequest",
    "Problem",
    "Ready",
    "ScanReply",
    "ScanSetup",
    "WireError",
    "cap",
    "decode",
    "encode",
    "json_safe",
]

# What the main process's reader accepts; far above what a worker sends.
LINE_LIMIT = 16 * 1024 * 1024
# What a worker sends at most: per string, per list or dict, per line.
MAX_FIELD_CHARS = 16 * 1024
MAX_ITEMS = 500
MAX_LINE_BYTES = 1024 * 1024
# Files read beside a document that a reply lists at most, and their bytes in all
# (more: not listed, and the result is not reusable: checking them again costs too much).
MAX_RESOURCES = 64
MAX_RESOURCE_BYTES = 64 * 1024 * 1024
# Top-level fields kept when a capped message is still too long.
_ESSENTIAL = ("event", "ok", "retryable", "pid", "lane", "warm", "rss_mb")

M = TypeVar("M", bound=BaseModel)


class WireError(ValueError):
    """A line that is not a well-formed message of the protocol."""


class _Message(BaseModel):
    # Unknown fields are ignored: a newer worker may say more than this side reads.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Problem(_Message):
    """A typed error on the wire: a converter's problem, or a failed job's error."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, exc: SirError) -> Problem:
        return cls(code=exc.code, message=exc.message, details=json_safe(exc.details))

    def error(self) -> SirError:
        """The typed error again, by its code (unknown codes: ``converter_failed``)."""
        return error_for_code(self.code, self.message, self.details)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Hello(_Message):
    """The first line to a worker: what it serves and under which limits."""

    event: Literal["hello"] = "hello"
    lane: Lane
    gpu_policy: GpuPolicy
    models_dir: str | None = None
    limits: Limits
    # The worker's end of the socket that carries each job's drop folder (SCM_RIGHTS).
    fd_channel: int | None = None
    # An express worker warms only these routes ("md->pdf"…); None: every route of the lane.
    routes: list[str] | None = None
    # The lane's hard cap (RLIMIT_DATA), CPU lane only.
    data_limit_mb: int | None = None


class Ready(_Message):
    """The worker's answer to ``Hello`` once its converters are built and warm."""

    event: Literal["ready"] = "ready"
    pid: int
    lane: Lane | None = None
    warm: bool = True
    warm_seconds: float | None = None
    device: Device = "cpu"
    runtime_kind: RuntimeKind = "none"
    device_name: str | None = None
    probe: dict[str, Any] | None = None
    # Why each route cannot run here, per route ("md->pdf"); empty lists when it can.
    problems: dict[str, list[Problem]] = Field(default_factory=dict)
    versions: dict[str, dict[str, str]] = Field(default_factory=dict)


class JobRequest(_Message):
    """One job. ``input_path`` stays: lane budgets are sized by the input's bytes."""

    job_id: str
    source: str
    target: str
    input_path: str
    output_path: str
    options: ConvertOptions = Field(default_factory=ConvertOptions)
    # The drop folder's descriptor was sent on the fd channel right before this line.
    drop_fd: bool = False

    @property
    def route(self) -> str:
        return f"{self.source}->{self.target}"


class JobReply(_Message):
    """The result of one job: ``ok`` with what ran, or the ``error`` it failed with."""

    ok: StrictBool
    error: Problem | None = None
    retryable: bool = False
    warnings: list[str] = Field(default_factory=list)
    pages: int | None = None
    # The files the job wrote into its work folder (names, the main output
    # first, then its companions: daemon.sidecar.companion_paths), the pages
    # whose content the output holds, and the PDF variant it declares.
    files: list[str] = Field(default_factory=list)
    pages_converted: list[int] | None = None
    pdf_variant: str | None = None
    device: Device | None = None
    converter: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    convert_seconds: float | None = None
    rss_mb: float | None = None
    # What the conversion read beside the document (daemon/reuse.py): the base64 of
    # each path's bytes -> ``sha256:<hex>`` of its content or the refusal's warning
    # code. None: not known (or more than MAX_RESOURCES / MAX_RESOURCE_BYTES): not reused.
    resources: dict[str, str] | None = None
    # Set by an engine worker node (daemon/engine): where the job ran, and on what.
    worker_host: str | None = None
    runtime_kind: RuntimeKind | None = None
    device_name: str | None = None

    @model_validator(mode="after")
    def _failure_has_error(self) -> Self:
        if not self.ok and self.error is None:
            raise ValueError("failure reply without an error")
        return self

    @classmethod
    def failed(cls, exc: SirError) -> JobReply:
        return cls(ok=False, error=Problem.of(exc), retryable=exc.retryable)


class ScanSetup(_Message):
    """The first line to the rescan helper (daemon/scanner.py): what to walk and ignore."""

    inbox: str
    ignore_patterns: list[str]
    ignore_dirs: list[str]
    asset_extensions: list[str]
    # Folders named like documents of these extensions are entries (``x.pdf/``).
    entry_dir_extensions: list[str]


class ScanReply(_Message):
    """One rescan: entries that could be jobs, and the changes among ignored entries.

    Not capped like a worker's reply (the helper is the daemon's own code and a
    big inbox's first scan lists every ignored entry); paths are absolute.
    """

    candidates: list[str]
    ignored: list[tuple[str, str]]  # (path, reason), new since the helper's last scan
    vanished: list[str]  # ignored at the helper's last scan, gone now
    entries: int
    seconds: float


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (anything else as its ``str``), cut to size."""
    try:
        plain = json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        plain = str(value)
    return _cap(plain)[0]


def _cut(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_FIELD_CHARS:
        return text, False
    return f"{text[:MAX_FIELD_CHARS]} [cut: {len(text) - MAX_FIELD_CHARS} more characters]", True


def _cap(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        cut = len(value) > MAX_ITEMS
        for key, item in list(value.items())[:MAX_ITEMS]:
            short_key, key_cut = _cut(str(key))
            out[short_key], item_cut = _cap(item)
            cut = cut or key_cut or item_cut
        return out, cut
    if isinstance(value, list | tuple):
        items = [_cap(item) for item in list(value)[:MAX_ITEMS]]
        return [v for v, _ in items], len(value) > MAX_ITEMS or any(c for _, c in items)
    return value, False


def cap(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with every string, list and dict cut to size; ``truncated`` says so."""
    capped, cut = _cap(message)
    out: dict[str, Any] = capped
    if cut:
        out["truncated"] = True
    return out


def encode(message: BaseModel | dict[str, Any]) -> bytes:
    """One line for the wire, never longer than ``MAX_LINE_BYTES``."""
    plain = message.model_dump(mode="json") if isinstance(message, BaseModel) else message
    capped = cap(plain)
    line = json.dumps(capped).encode() + b"\n"
    if len(line) <= MAX_LINE_BYTES:
        return line
    # Many fields, each under the cap: keep what the other side needs to decide.
    short = {k: capped[k] for k in _ESSENTIAL if k in capped}
    error = capped.get("error")
    if isinstance(error, dict):
        short["error"] = {
            "code": str(error.get("code")),
            "message": str(error.get("message"))[:4096],
        }
    short["truncated"] = True
    return json.dumps(short).encode() + b"\n"


def decode(line: bytes, model: type[M]) -> M:
    """Parse one line as ``model``; anything else is a ``WireError``."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"not a JSON line ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise WireError(f"a {type(message).__name__}, not an object")
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        errors = exc.errors()
        what = (
            f"{'.'.join(str(p) for p in errors[0]['loc']) or 'message'}: {errors[0]['msg']}"
            if errors
            else "invalid"
        )
        raise WireError(f"not a {model.__name__} ({what})") from None
