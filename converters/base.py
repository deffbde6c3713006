"""The datamodel every converter speaks: routes, options, requests and results.

Nothing here imports a conversion library. The main process uses this module to
know the routes and their lanes; only worker processes import the libraries.
"""

from __future__ import annotations

import enum
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from converters.dropfolder import DropFolder
from converters.errors import SirError

__all__ = [
    "GPU_POLICIES",
    "AccelerationInfo",
    "ConversionRequest",
    "ConversionResult",
    "ConvertOptions",
    "Converter",
    "Device",
    "GpuPolicy",
    "ImagesMode",
    "Lane",
    "Limits",
    "Route",
    "RuntimeKind",
    "WorkerContext",
    "PDF_VARIANTS",
    "package_versions",
    "parse_pages",
]

Format = Literal["pdf", "md", "docx", "pptx", "xlsx", "html"]
Target = Literal["md", "pdf", "docx"]
# The one spelling of the GPU policy (config, CLI, sidecar, wire, converters/gpu.py).
GpuPolicy = Literal["required", "preferred", "cpu"]
GPU_POLICIES: tuple[str, ...] = get_args(GpuPolicy)
RuntimeKind = Literal["cuda", "rocm", "none"]
Device = Literal["cpu", "cuda"]
# How pictures reach Markdown: a comment, PNG files in <stem>.images/, or data: URIs.
ImagesMode = Literal["placeholder", "referenced", "embedded"]
# The PDF variants WeasyPrint can write (weasyprint.pdf.VARIANTS, less "debug").
PdfVariant = Literal[
    "pdf/a-1a", "pdf/a-1b", "pdf/a-2a", "pdf/a-2b", "pdf/a-2u", "pdf/a-3a", "pdf/a-3b",
    "pdf/a-3u", "pdf/a-4e", "pdf/a-4f", "pdf/a-4u", "pdf/ua-1", "pdf/ua-2",
    "pdf/x-1a", "pdf/x-3", "pdf/x-4", "pdf/x-5g",
]  # fmt: skip
PDF_VARIANTS: tuple[str, ...] = get_args(PdfVariant)
MAX_PAGE_RANGES = 100


def parse_pages(spec: str) -> list[tuple[int, int]]:
    """``"2-5,9"`` as sorted, merged 1-based inclusive ranges; ValueError when malformed."""
    ranges: list[tuple[int, int]] = []
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or len(parts) > MAX_PAGE_RANGES:
        raise ValueError(f'pages must be like "2-5,9" (at most {MAX_PAGE_RANGES} ranges)')
    for part in parts:
        low, dash, high = part.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError(f"pages: {part[:40]!r} is not a page number or a range like 2-5")
        first, last = int(low), int(high) if dash else int(low)
        if first < 1 or last < first:
            raise ValueError(f"pages: {part[:40]!r} is not a range of pages counted from 1")
        ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


class Lane(enum.StrEnum):
    """Which pool of workers runs a route."""

    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True, order=True)
class Route:
    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


class Limits(BaseModel):
    """Hard limits applied inside converters. Exceeding one fails the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_input_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_pages: int = Field(default=2000, gt=0)
    max_pixels: int = Field(default=178_956_970, gt=0)  # Pillow's own bomb threshold
    # All pictures of one Office file together (converters/office_media.py).
    max_total_pixels: int = Field(default=1_000_000_000, gt=0)
    max_data_url_bytes: int = Field(default=2 * 1024 * 1024, ge=0)
    max_unzipped_bytes: int = Field(default=500 * 1024 * 1024, gt=0)


class ConvertOptions(BaseModel):
    """Per-job conversion options: profile defaults, overridden per inbox folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ocr: Literal["off", "auto", "force"] = "auto"
    table_mode: Literal["fast", "accurate"] = "fast"
    normalize_markdown: bool = True
    stylesheet: Path | None = None
    reference_docx: Path | None = None
    auto_ocr_min_chars_per_page: int = Field(default=32, ge=0)
    # What a conversion publishes beside its main output (docs/routes.md, *Outputs*).
    images: ImagesMode = "referenced"
    max_images: int = Field(default=500, ge=0)
    max_image_pixels: int = Field(default=25_000_000, gt=0)
    page_markers: bool = False
    pages: str | None = None
    also: tuple[Literal["json", "chunks"], ...] = ()
    pdf_variant: PdfVariant | None = None

    @field_validator("pages")
    @classmethod
    def _pages_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pages(value)
        return value

    @field_validator("also")
    @classmethod
    def _also_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))

    @property
    def page_ranges(self) -> list[tuple[int, int]] | None:
        return parse_pages(self.pages) if self.pages is not None else None


class AccelerationInfo(BaseModel):
    """What really ran a job."""

    model_config = ConfigDict(extra="forbid")

    policy: GpuPolicy
    device: Device | None = None
    runtime_kind: RuntimeKind | None = None
    device_name: str | None = None


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows when it builds and warms its converters."""

    gpu_policy: GpuPolicy
    models_dir: Path | None
    limits: Limits
    device: Device
    runtime_kind: RuntimeKind
    device_name: str | None = None


@dataclass(frozen=True)
class ConversionRequest:
    input_path: Path
    output_path: Path
    options: ConvertOptions
    # The folder the document was dropped in, pinned as a descriptor when the
    # daemon claimed the file (never a path: the dropper can still swap it).
    # Relative references (images, stylesheets) are read through it, and
    # nothing outside it may be read on behalf of the document.
    drop_folder: DropFolder
    # Where the companions of the output go, by kind ("images", "json",
    # "chunks"), beside output_path in the job's work folder; the daemon names
    # them (daemon.sidecar.companion_paths) and publishes whatever is there.
    companions: dict[str, Path] = field(default_factory=dict)


@dataclass
class ConversionResult:
    warnings: list[str] = field(default_factory=list)
    pages: int | None = None
    device: Device | None = None
    # The 1-based pages whose content is in the output, when the route knows pages.
    pages_converted: list[int] | None = None
    # The PDF variant the output declares, when one was asked.
    pdf_variant: str | None = None


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions by distribution name (``missing`` when absent), without
    importing anything: what every route's ``versions()`` reports."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


@runtime_checkable
class Converter(Protocol):
    """One route. Implementations import their library lazily, in the worker."""

    @property
    def route(self) -> Route: ...

    @property
    def name(self) -> str: ...

    @property
    def lane(self) -> Lane: ...

    def versions(self) -> dict[str, str]:
        """Versions of the libraries and tools used, for the sidecar."""
        ...

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        """Why this route cannot run here (empty when it can), as typed errors
        (``models_missing``, ``dependency_missing``…) so readiness reports codes."""
        ...

    def warm(self, ctx: WorkerContext) -> None:
        """Build and cache whatever is expensive, once per worker."""
        ...

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult: ...
