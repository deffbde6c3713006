"""pdf → md with docling's standard PDF pipeline (layout model, TableFormer, RapidOCR).

Models come from ``ctx.models_dir`` only (see :mod:`converters.models`); the
hub is forced offline. One docling ``DocumentConverter`` is built per pipeline
variant (OCR on/off, table mode), initialised at warm-up or on first use, and
reused for every later job of the worker.

OCR (``options.ocr``):

* ``off``: the PDF text layer only;
* ``force``: full-page RapidOCR on every page, the text layer is ignored;
* ``auto``: the text layer is measured first (pdfium, before any model runs);
  when it has fewer than ``auto_ocr_min_chars_per_page`` non-blank characters
  per page on average the document is converted with full-page OCR instead,
  and the result carries warning ``ocr_applied``.

Tables (``options.table_mode``): TableFormer fast/accurate. When that mode's
TableFormer artifacts are absent the job still runs, without table structure,
and carries warning ``table_model_missing``.

Pages (``options.pages``): docling runs once over the span from the first to
the last chosen page; the outputs keep the chosen pages only. Figures, page
markers, the JSON and the chunks come from that one pass (``converters.outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from converters._docling import (
    DOCLING_PACKAGES,
    actual_device,
    build_pdf_converter,
    docling_problem,
    export_markdown,
    run_docling,
    warmup_pdf_bytes,
)
from converters.base import (
    ConversionRequest,
    ConversionResult,
    ConvertOptions,
    Lane,
    Route,
    WorkerContext,
    package_versions,
)
from converters.errors import (
    ModelsMissing,
    SirError,
)
from converters.models import (
    LAYOUT,
    RAPIDOCR,
    TABLEFORMER_ACCURATE,
    TABLEFORMER_FAST,
    Artifact,
    missing_files,
)
from converters.outputs import chosen_pages, write_outputs
from converters.sniff import inspect_pdf
from converters.warning_codes import WarningCode

if TYPE_CHECKING:
    from docling.document_converter import DocumentConverter

__all__ = [
    "PdfToMarkdown",
]


TableMode = Literal["fast", "accurate"]
_TABLE_ARTIFACTS: dict[str, Artifact] = {"fast": TABLEFORMER_FAST, "accurate": TABLEFORMER_ACCURATE}
_MODEL_PACKAGES = ("docling-ibm-models", "torch", "transformers", "rapidocr", "onnxruntime")
_FETCH_HINT = "run `sir-convert-a-lot models fetch` on a host with internet and copy the folder"


def _models_missing(models_dir: Path | None, artifact: Artifact, why: str) -> ModelsMissing:
    where = str(models_dir / artifact.folder) if models_dir is not None else artifact.folder
    missing = ", ".join(missing_files(models_dir, artifact))
    return ModelsMissing(
        f"{why}: model folder {where} is missing or incomplete (missing: {missing}); {_FETCH_HINT}",
        folder=artifact.folder,
        models_dir=str(models_dir) if models_dir is not None else None,
    )


class PdfToMarkdown:
    route = Route("pdf", "md")
    name = "docling"
    lane = Lane.GPU

    def __init__(self) -> None:
        self._converters: dict[
            tuple[bool, TableMode | None, bool, str, Path], DocumentConverter
        ] = {}

    def versions(self) -> dict[str, str]:
        return package_versions((*DOCLING_PACKAGES, *_MODEL_PACKAGES))

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        out: list[SirError] = []
        problem = docling_problem()
        if problem is not None:
            out.append(problem)
        models_problem = self._models_problem(ctx)
        if models_problem is not None:
            out.append(models_problem)
        return out

    def _models_problem(self, ctx: WorkerContext) -> ModelsMissing | None:
        if ctx.models_dir is None:
            return ModelsMissing(
                f"models_dir is not set; the PDF route needs its model artifacts ({_FETCH_HINT})"
            )
        if missing_files(ctx.models_dir, LAYOUT):
            return _models_missing(ctx.models_dir, LAYOUT, "the layout model is required")
        return None

    def _models_dir(self, ctx: WorkerContext) -> Path:
        """models_dir with the layout model in it, or ModelsMissing (a few stat calls)."""
        problem = self._models_problem(ctx)
        if problem is not None:
            raise problem
        if ctx.models_dir is None:  # covered above; narrows the type
            raise ModelsMissing("models_dir is not set")
        return ctx.models_dir

    def _table_mode(
        self, models_dir: Path, wanted: TableMode
    ) -> tuple[TableMode | None, list[str]]:
        if missing_files(models_dir, _TABLE_ARTIFACTS[wanted]):
            return None, [WarningCode.TABLE_MODEL_MISSING]
        return wanted, []

    def _converter(
        self,
        ctx: WorkerContext,
        models_dir: Path,
        *,
        ocr: bool,
        table_mode: TableMode | None,
        pictures: bool,
    ) -> DocumentConverter:
        key = (ocr, table_mode, pictures, ctx.device, models_dir)
        converter = self._converters.get(key)
        if converter is None:
            converter = build_pdf_converter(
                models_dir, ctx.device, ocr=ocr, table_mode=table_mode, pictures=pictures
            )
            self._converters[key] = converter
        return converter

    def warm(self, ctx: WorkerContext) -> None:
        """Build and run once the pipelines the default options use (OCR off and on)."""
        models_dir = self._models_dir(ctx)
        defaults = ConvertOptions()
        table_mode, _ = self._table_mode(models_dir, defaults.table_mode)
        data = warmup_pdf_bytes()
        for ocr in (False, True):
            if ocr and missing_files(models_dir, RAPIDOCR):
                continue
            converter = self._converter(
                ctx,
                models_dir,
                ocr=ocr,
                table_mode=table_mode,
                pictures=defaults.images != "placeholder",
            )
            result, _ = run_docling(
                converter, data=data, source="pdf", display_name="warm-up PDF", limits=ctx.limits
            )
            export_markdown(result)

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        options = request.options
        models_dir = self._models_dir(ctx)
        facts = inspect_pdf(request.input_path, ctx.limits, count_text=options.ocr == "auto")
        pages = chosen_pages(facts.pages, options.page_ranges)
        warnings: list[str] = []

        ocr = options.ocr == "force"
        if options.ocr == "auto" and facts.text_chars is not None:
            ocr = facts.text_chars < options.auto_ocr_min_chars_per_page * facts.pages
            if ocr:
                warnings.append(WarningCode.OCR_APPLIED)
        if ocr and missing_files(models_dir, RAPIDOCR):
            why = "OCR was requested" if options.ocr == "force" else "the PDF has no text layer"
            raise _models_missing(models_dir, RAPIDOCR, f"{why} but the OCR models are absent")

        table_mode, table_warnings = self._table_mode(models_dir, options.table_mode)
        warnings.extend(table_warnings)

        converter = self._converter(
            ctx,
            models_dir,
            ocr=ocr,
            table_mode=table_mode,
            pictures=options.images != "placeholder",
        )
        result, run_warnings = run_docling(
            converter,
            data=request.input_path.read_bytes(),
            source="pdf",
            display_name=request.input_path.name,
            limits=ctx.limits,
            page_range=(pages[0], pages[-1]) if options.pages is not None and pages else None,
        )
        warnings.extend(run_warnings)
        written, output_warnings = write_outputs(
            result.document, request, pages=pages if options.pages is not None else None
        )
        warnings.extend(output_warnings)
        if not written.strip():
            warnings.append(WarningCode.EMPTY_OUTPUT)
        return ConversionResult(
            warnings=sorted(set(warnings)),
            pages=facts.pages,
            device=actual_device(converter) or ctx.device,
            pages_converted=pages,
        )
