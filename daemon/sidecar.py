"""The sidecar JSON that automation reads: ``<output>.meta.json`` or ``<input>.error.json``.

The success sidecar is the commit marker: it is written after the output, so a
reader that sees it can trust the output is complete. Its JSON Schema is
published in docs/sidecar.schema.json (``sir-convert-a-lot schema``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
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
    "ReusedFrom",
    "RouteInfo",
    "ServiceInfo",
    "Sidecar",
    "ARTIFACT_SUFFIXES",
    "ERROR_SUFFIX",
    "META_SUFFIX",
    "PRUNING_SUFFIX",
    "ArtifactInfo",
    "ArtifactKind",
    "artifact_kind",
    "companion_paths",
    "Timings",
    "error_details",
]

# The sidecars' names: ``<output>.meta.json`` next to a result, ``<input>.error.json``
# next to a failed input. Spelled here only.
META_SUFFIX = ".meta.json"
ERROR_SUFFIX = ".error.json"
# Retention renames a sidecar to ".<name><sidecar suffix>.pruning" before it removes
# the sidecar's entry (daemon/retention.py): no reader trusts it, the next sweep
# finishes the removal.
PRUNING_SUFFIX = ".pruning"

# What else a job may publish beside its main output ``<stem>.<ext>``: the
# companions are named ``<stem><suffix>`` (``paper.images/``, ``paper.docling.json``,
# ``paper.chunks.jsonl``). Spelled here only; workers get the paths in their request.
ArtifactKind = Literal["main", "images", "json", "chunks"]
ARTIFACT_SUFFIXES: dict[str, str] = {
    "images": ".images",
    "json": ".docling.json",
    "chunks": ".chunks.jsonl",
}


def _stem(name: str) -> str:
    """The stem companions of ``name`` share in the work folder: the name less
    its extension, shortened (whole characters) so the longest companion fits
    NAME_MAX. Publishing picks the outbox names afresh (daemon.publish)."""
    from daemon.durable import _fit, _split  # durable imports this module

    longest = max(len(suffix) for suffix in ARTIFACT_SUFFIXES.values())
    return _fit(_split(name)[0], "", longest)


def companion_paths(output: Path) -> dict[str, Path]:
    """Where the companions of ``output`` go, by kind, in the same folder."""
    stem = _stem(output.name)
    return {kind: output.with_name(stem + suffix) for kind, suffix in ARTIFACT_SUFFIXES.items()}


def artifact_kind(name: str, main: str) -> str | None:
    """The kind of the entry ``name`` beside the main output ``main`` (None: not one of ours)."""
    if name == main:
        return "main"
    stem = _stem(main)
    for kind, suffix in ARTIFACT_SUFFIXES.items():
        if name == stem + suffix:
            return kind
    return None


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


class _FileInfo(_Strict):
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


class ArtifactInfo(_FileInfo):
    """One published file (a folder such as ``<stem>.images/`` lists each file in it)."""

    kind: ArtifactKind = Field(
        description="main (the converted document), images (a picture crop), json (the "
        "DoclingDocument), chunks (one chunk a line)"
    )


class OutputInfo(_FileInfo):
    """The main output (``path`` …) and every file published with it (``artifacts``)."""

    artifacts: list[ArtifactInfo] = Field(
        default_factory=list,
        description="every published file of the job, the main output first; all are in "
        "place before the sidecar is",
    )
    pages: list[int] | None = Field(
        default=None,
        description="the page numbers (1-based) whose content the output holds, when the "
        "route knows pages",
    )
    pdf_variant: str | None = Field(
        default=None,
        description="the PDF variant the output declares (e.g. pdf/a-3b), when one was asked",
    )
    pdf_variant_validated: bool | None = Field(
        default=None,
        description="false: the variant is declared by WeasyPrint but no external validator "
        "checked it",
    )


class ConverterInfo(_Strict):
    name: str
    versions: dict[str, str] = Field(default_factory=dict)


class Timings(_Strict):
    detected_at: datetime
    started_at: datetime | None = None
    finished_at: datetime
    queue_seconds: float | None = None
    convert_seconds: float | None = None


class ReusedFrom(_Strict):
    """The earlier job whose output this one reused (docs/automation.md, Result reuse)."""

    job_id: str = Field(description="the job that converted the same input the same way")
    finished_at: datetime = Field(description="when that job finished")


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
    reused_from: ReusedFrom | None = Field(
        default=None,
        description="set when the output was not converted but reused from an earlier job "
        "with the same input, route, options and converter versions (convert_seconds is 0)",
    )

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")
