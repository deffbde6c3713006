"""Shared docling plumbing: offline mode, versions, building converters, error mapping.

Everything that imports docling does it inside a function: the main process
imports the route modules (for routes and lanes) and must never load docling.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from converters.base import Limits
from converters.errors import (
    ConverterFailed,
    CorruptInput,
    DependencyMissing,
    GpuUnavailable,
    ModelsMissing,
    SirError,
    TooManyPages,
    UnsupportedContent,
)
from converters.markdown import separate_tables
from converters.warning_codes import WarningCode

if TYPE_CHECKING:
    from docling.datamodel.document import ConversionResult as DoclingResult
    from docling.document_converter import DocumentConverter

__all__ = [
    "DOCLING_PACKAGES",
    "PICTURE_SCALE",
    "actual_device",
    "build_pdf_converter",
    "build_simple_converter",
    "docling_problem",
    "export_markdown",
    "force_offline",
    "map_docling_error",
    "num_threads",
    "run_docling",
    "warmup_pdf_bytes",
]

DOCLING_PACKAGES = ("docling", "docling-core", "docling-parse")

# Picture crops are rendered at 2 x 72 dpi (144 dpi): legible, and a page's
# render costs a quarter of what 300 dpi would.
PICTURE_SCALE = 2.0

_INPUT_FORMATS = {"pdf": "PDF", "docx": "DOCX", "pptx": "PPTX", "xlsx": "XLSX", "html": "HTML"}


def force_offline() -> None:
    """Never let the hub download anything in a worker: artifacts come from models_dir."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads the variable once, at import; catch up if it is loaded.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (a module, not typed)


def docling_problem() -> DependencyMissing | None:
    """Why docling cannot be used here, or None."""
    if importlib.util.find_spec("docling") is None:
        return DependencyMissing("docling is not installed (pip install docling)")
    return None


def num_threads() -> int:
    """CPU threads for torch / onnxruntime inside docling: the cores we may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _input_format(source: str) -> Any:
    from docling.datamodel.base_models import InputFormat

    return InputFormat[_INPUT_FORMATS[source]]


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def map_docling_error(exc: Exception, *, what: str) -> SirError:
    """Turn an exception escaping docling into one of our typed errors."""
    if isinstance(exc, SirError):
        return exc
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    text = f"{type(exc).__name__}: {exc}"[:1500]
    if "AcceleratorDeviceNotAvailableError" in names:
        return GpuUnavailable(f"{what}: the requested accelerator is not available: {text}")
    if "OutOfMemoryError" in names:
        return ConverterFailed(f"{what}: the accelerator ran out of memory: {text}")
    if "DocumentLoadError" in names:
        return CorruptInput(f"{what}: the document could not be read: {text}")
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return ModelsMissing(
            f"{what}: a model file is missing: {text}. "
            "Run `sir-convert-a-lot models fetch` (or copy a fetched models folder)."
        )
    if any(isinstance(e, ImportError) for e in chain):
        return DependencyMissing(f"{what}: a library docling needs is missing: {text}")
    return ConverterFailed(f"{what}: docling failed: {text}")


def _finish_pipeline_init(converter: DocumentConverter, source: str, what: str) -> None:
    try:
        converter.initialize_pipeline(_input_format(source))
    except Exception as exc:
        raise map_docling_error(exc, what=what) from exc


def build_pdf_converter(
    models_dir: Path,
    device: Literal["cpu", "cuda"],
    *,
    ocr: bool,
    table_mode: Literal["fast", "accurate"] | None,
    pictures: bool = False,
) -> DocumentConverter:
    """docling's standard PDF pipeline, models from ``models_dir``, initialised.

    ``ocr`` switches RapidOCR on in full-page mode (every page is rendered and
    read); ``table_mode`` None switches TableFormer off; ``pictures`` keeps a
    crop of every picture (at ``PICTURE_SCALE`` x 72 dpi) for the figures.
    """
    force_offline()
    from docling.datamodel.accelerator_options import AcceleratorOptions
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import (
        OcrMode,
        PdfPipelineOptions,
        RapidOcrOptions,
        TableFormerMode,
        TableStructureOptions,
    )
    from docling.document_converter import DocumentConverter, PdfFormatOption

    options = PdfPipelineOptions(
        artifacts_path=models_dir,
        enable_remote_services=False,
        allow_external_plugins=False,
        accelerator_options=AcceleratorOptions(device=device, num_threads=num_threads()),
        do_ocr=ocr,
        ocr_options=RapidOcrOptions(mode=OcrMode.FULL_PAGE, backend="onnxruntime"),
        do_table_structure=table_mode is not None,
        table_structure_options=TableStructureOptions(mode=TableFormerMode(table_mode or "fast")),
        do_picture_classification=False,
        do_picture_description=False,
        do_code_enrichment=False,
        do_formula_enrichment=False,
        generate_page_images=False,
        generate_picture_images=pictures,
        images_scale=PICTURE_SCALE if pictures else 1.0,
    )
    converter = DocumentConverter(
        allowed_formats=[InputFormat.PDF],
        format_options={InputFormat.PDF: PdfFormatOption(pipeline_options=options)},
    )
    _finish_pipeline_init(converter, "pdf", "building the PDF pipeline")
    return converter


def build_simple_converter(source: str) -> DocumentConverter:
    """docling's simple (model-free) pipeline for one office/HTML format, initialised."""
    force_offline()
    from docling.document_converter import DocumentConverter

    converter = DocumentConverter(allowed_formats=[_input_format(source)])
    _finish_pipeline_init(converter, source, f"building the {source} pipeline")
    return converter


def actual_device(converter: DocumentConverter) -> Literal["cpu", "cuda"] | None:
    """The torch device docling's layout model really sits on (None when unknown)."""
    for pipeline in converter.initialized_pipelines.values():
        engine = getattr(getattr(pipeline, "layout_model", None), "engine", None)
        device = getattr(engine, "_device", None)
        if device is not None:
            kind = str(getattr(device, "type", device))
            return "cuda" if kind.startswith("cuda") else "cpu"
    return None


def warmup_pdf_bytes() -> bytes:
    """A one-page image-only PDF with a few words, to push a pipeline through once."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=72)
    draw.text((120, 160), "Warm up 123", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PDF", resolution=150.0)
    return buffer.getvalue()


def _stream(data: bytes, name: str) -> Any:
    from docling.datamodel.base_models import DocumentStream

    return DocumentStream(name=name, stream=io.BytesIO(data))


def run_docling(
    converter: DocumentConverter,
    *,
    data: bytes,
    source: str,
    display_name: str,
    limits: Limits,
    page_range: tuple[int, int] | None = None,
) -> tuple[DoclingResult, list[str]]:
    """Convert ``data`` as ``source``; typed errors on failure, warnings on partial success.

    The stream is named ``input.<source>`` so docling's format detection does
    not depend on the name the user gave the file.
    """
    from docling.datamodel.base_models import ConversionStatus

    what = f"converting {display_name}"
    try:
        result = converter.convert(
            _stream(data, f"input.{source}"),
            raises_on_error=False,
            max_num_pages=limits.max_pages,
            max_file_size=limits.max_input_bytes,
            page_range=page_range or (1, sys.maxsize),
        )
    except Exception as exc:
        raise map_docling_error(exc, what=what) from exc

    status = result.status
    messages = [str(e.error_message) for e in result.errors]
    detail = "; ".join(messages)[:1500] or "no detail"
    if status == ConversionStatus.SUCCESS:
        return result, []
    if status == ConversionStatus.PARTIAL_SUCCESS:
        return result, [WarningCode.PARTIAL_CONVERSION]
    if any("max_num_pages" in m for m in messages):
        raise TooManyPages(
            f"{display_name} has {result.input.page_count} pages, the limit is {limits.max_pages}",
            pages=result.input.page_count,
            limit=limits.max_pages,
        )
    if status == ConversionStatus.SKIPPED:
        raise UnsupportedContent(
            f"{display_name} is not a .{source} document (docling sees another format): {detail}"
        )
    if not result.input.valid:
        raise CorruptInput(f"{display_name} could not be read as {source}: {detail}")
    raise ConverterFailed(f"docling failed on {display_name}: {detail}")


def export_markdown(result: DoclingResult) -> str:
    """docling's Markdown for a converted document (errors typed).

    A table docling writes straight under a list item gets a blank line before it,
    so Markdown readers see a table and not more text of that item.
    """
    try:
        markdown = str(result.document.export_to_markdown())
    except Exception as exc:
        raise map_docling_error(exc, what="exporting Markdown") from exc
    return separate_tables(markdown)
