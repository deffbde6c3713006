"""md → docx with pandoc."""

from __future__ import annotations

import tempfile
from pathlib import Path

from converters._pandoc import pandoc_version, run_pandoc
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
)
from converters.errors import DependencyMissing, SirError
from converters.output_check import docx_has_content
from converters.text import read_html_input, read_text_input
from converters.warning_codes import WarningCode

__all__ = ["MarkdownToDocx", "pandoc_to_docx"]


def pandoc_to_docx(request: ConversionRequest, reader: str) -> ConversionResult:
    """Shared by md→docx and html→docx: pandoc's docx writer, optional reference doc.

    Images are not embedded: the sandbox lets pandoc read only the document, so
    each one it leaves out is reported as ``local_resource_blocked`` (a file) or
    ``remote_resource_blocked`` (a URL). pandoc reads only UTF-8: HTML in a
    charset it declares is transcoded first (``read_html_input``), into a
    private temporary copy, so html → docx accepts what html → pdf and
    html → md accept. A docx without text or pictures carries ``empty_output``.
    """
    with tempfile.TemporaryDirectory(prefix="sir-docx-") as tmp:
        source = request.input_path
        if reader == "html":
            source = Path(tmp) / "input.html"
            source.write_text(read_html_input(request.input_path), encoding="utf-8")
        else:
            read_text_input(source)  # refuses invalid UTF-8 with a clear code
        args = ["-f", reader, "-t", "docx", "-o", str(request.output_path)]
        if request.options.reference_docx is not None:
            args.append(f"--reference-doc={request.options.reference_docx}")
        args.append(str(source))
        warnings: list[str] = []
        run_pandoc(args, cwd=request.input_path.parent, warnings=warnings)
    if not docx_has_content(request.output_path):
        warnings.append(WarningCode.EMPTY_OUTPUT)
    return ConversionResult(warnings=warnings, device="cpu")


class MarkdownToDocx:
    route = Route("md", "docx")
    name = "pandoc"
    lane = Lane.CPU

    def versions(self) -> dict[str, str]:
        return {"pandoc": pandoc_version()}

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        try:
            pandoc_version()
        except SirError as exc:
            return [exc]
        except OSError as exc:
            return [DependencyMissing(f"pandoc unavailable: {exc}")]
        return []

    def warm(self, ctx: WorkerContext) -> None:
        pandoc_version()

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        return pandoc_to_docx(request, "markdown")
