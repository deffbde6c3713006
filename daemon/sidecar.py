"""The sidecar JSON that automation reads: ``<output>.meta.json`` or ``<input>.error.json``.

The success sidecar is the commit marker: it is written after the output, so a
reader that sees it can trust the output is complete. Its JSON Schema is
published in docs/sidecar.schema.json (``sir-convert-a-lot schema``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from converters.base import AccelerationInfo
from daemon.wire import json_safe

__all__ = [
    "SCHEMA_VERSION",
    "ConverterInfo",
    "ErrorInfo",
    "InputInfo",
    "OutputInfo",
    "RouteInfo",
    "ServiceInfo",
    "Sidecar",
    "ERROR_SUFFIX",
    "META_SUFFIX",
    "Timings",
    "error_details",
]

# The sidecars' names: ``<output>.meta.json`` next to a result, ``<input>.error.json``
# next to a failed input. Spelled here only.
META_SUFFIX = ".meta.json"
ERROR_SUFFIX = ".error.json"

SCHEMA_VERSION = 1
# The most an error's details may take in a sidecar, as compact JSON.
MAX_DETAILS_BYTES = 16 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteInfo(_Strict):
    source: str
    target: str


class InputInfo(_Strict):
    name: str = Field(description="the file name; bytes that are not UTF-8 shown as U+FFFD")
    relative_path: str = Field(
        description="path relative to the inbox, '/'-separated; bytes that are not UTF-8 "
        "shown as U+FFFD"
    )
    relative_path_b64: str | None = Field(
        default=None,
        description="the exact bytes of relative_path in base64, present only when the name "
        "is not valid UTF-8 (relative_path is then lossy)",
    )
    sha256: str | None
    size_bytes: int | None
    pages: int | None = None


class OutputInfo(_Strict):
    path: str = Field(
        description="path relative to the outbox, '/'-separated; bytes that are not UTF-8 "
        "shown as U+FFFD"
    )
    path_b64: str | None = Field(
        default=None,
        description="the exact bytes of path in base64, present only when it is not valid UTF-8",
    )
    sha256: str
    size_bytes: int


class ConverterInfo(_Strict):
    name: str
    versions: dict[str, str] = Field(default_factory=dict)


class Timings(_Strict):
    detected_at: datetime
    started_at: datetime | None = None
    finished_at: datetime
    queue_seconds: float | None = None
    convert_seconds: float | None = None


class ServiceInfo(_Strict):
    revision: str
    host: str
    version: str
    worker_host: str | None = Field(
        default=None,
        description="the engine worker node that converted the file (docs/architecture.md); "
        "absent when this host converted it",
    )


class ErrorInfo(_Strict):
    code: str
    message: str
    retryable: bool
    details: dict[str, Any] | None = Field(
        default=None,
        description="what the error knows beyond its message (e.g. size and limit for "
        "input_too_large), as plain JSON; absent when it knows nothing more",
    )

    @model_serializer(mode="wrap")
    def _omit_empty_details(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent, not null: an error sidecar without details reads as it always did.
        data: dict[str, Any] = handler(self)
        if data.get("details") is None:
            data.pop("details", None)
        return data


def error_details(details: Mapping[str, object]) -> dict[str, Any] | None:
    """An error's details for the sidecar: plain JSON, each string cut, 16 KiB at most."""
    if not details:
        return None
    safe = json_safe(dict(details))
    if not isinstance(safe, dict):
        return None
    if len(json.dumps(safe).encode()) > MAX_DETAILS_BYTES:
        return {"truncated": True, "keys": sorted(safe)[:50]}
    return safe


class Sidecar(_Strict):
    schema_version: int = SCHEMA_VERSION
    status: Literal["succeeded", "failed"]
    job_id: str
    profile: str
    route: RouteInfo | None
    input: InputInfo
    output: OutputInfo | None = None
    converter: ConverterInfo | None = None
    acceleration: AccelerationInfo | None = None
    timings: Timings
    warnings: list[str] = Field(default_factory=list)
    service: ServiceInfo
    attempts: int = 1
    error: ErrorInfo | None = None

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")
