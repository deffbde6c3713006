"""docx / pptx / xlsx / html → md with docling's simple pipelines (no models needed)."""

from __future__ import annotations

import importlib
import io
from typing import TYPE_CHECKING, Any

from converters._docling import (
    DOCLING_PACKAGES,
    build_simple_converter,
    docling_problem,
    export_markdown,
    run_docling,
)
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
    package_versions,
)
from converters.errors import SirError
from converters.outputs import write_outputs
from converters.text import read_html_input
from converters.warning_codes import WarningCode

if TYPE_CHECKING:
    from docling.document_converter import DocumentConverter

__all__ = ["SIMPLE_SOURCES", "DoclingSimpleToMarkdown"]

# Source format → the library docling's backend reads it with (for the sidecar).
SIMPLE_SOURCES: dict[str, str] = {
    "docx": "python-docx",
    "pptx": "python-pptx",
    "xlsx": "openpyxl",
    "html": "beautifulsoup4",
}


def _sample(source: str) -> bytes:
    """A tiny valid document of ``source``, made with the library docling reads it with."""
    buffer = io.BytesIO()
    if source == "docx":
        import docx

        document = docx.Document()
        document.add_heading("Warm up", level=1)
        document.add_paragraph("warm")
        document.save(buffer)
    elif source == "pptx":
        from pptx import Presentation

        presentation = Presentation()
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = "Warm up"
        presentation.save(buffer)
    elif source == "xlsx":
        openpyxl: Any = importlib.import_module("openpyxl")  # no type stubs

        workbook = openpyxl.Workbook()
        sheet = workbook.active
        if sheet is not None:
            sheet.append(["warm", 1])
        workbook.save(buffer)
    else:
        buffer.write(b"<html><body><h1>Warm up</h1><p>warm</p></body></html>")
    return buffer.getvalue()


class DoclingSimpleToMarkdown:
    name = "docling"
    lane = Lane.CPU

    def __init__(self, source: str) -> None:
        if source not in SIMPLE_SOURCES:
            raise ValueError(f"docling's simple pipeline does not handle {source!r}")
        self.source = source
        self.route = Route(source, "md")
        self._converter: DocumentConverter | None = None

    def versions(self) -> dict[str, str]:
        return package_versions((*DOCLING_PACKAGES, SIMPLE_SOURCES[self.source]))

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        problem = docling_problem()
        return [problem] if problem is not None else []

    def _get(self) -> DocumentConverter:
        if self._converter is None:
            self._converter = build_simple_converter(self.source)
        return self._converter

    def warm(self, ctx: WorkerContext) -> None:
        """Build the converter and push a tiny sample through it (loads the backend)."""
        result, _ = run_docling(
            self._get(),
            data=_sample(self.source),
            source=self.source,
            display_name=f"warm-up {self.source}",
            limits=ctx.limits,
        )
        export_markdown(result)

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        if self.source == "html":
            # The same UTF-8 text every html route sees (converters.text), with a
            # BOM so BeautifulSoup cannot second-guess the encoding.
            data = b"\xef\xbb\xbf" + read_html_input(request.input_path).encode("utf-8")
        else:
            data = request.input_path.read_bytes()
        result, warnings = run_docling(
            self._get(),
            data=data,
            source=self.source,
            display_name=request.input_path.name,
            limits=ctx.limits,
        )
        written, output_warnings = write_outputs(result.document, request, pages=None)
        warnings.extend(output_warnings)
        if not written.strip():
            warnings.append(WarningCode.EMPTY_OUTPUT)
        page_count = int(result.input.page_count or 0)
        return ConversionResult(
            warnings=sorted(set(warnings)),
            pages=page_count or None,
            device="cpu",
        )
