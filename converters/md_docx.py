"""md → docx with pandoc (the worker's resident one, ``converters.pandoc_resident``)."""

from __future__ import annotations

from converters._pandoc import pandoc_version
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
)
from converters.errors import DependencyMissing, SirError
from converters.output_check import docx_has_content
from converters.pandoc_resident import shared_pandoc
from converters.resource_policy import ResourcePolicy
from converters.text import read_html_input, read_text_input
from converters.warning_codes import WarningCode

__all__ = ["MarkdownToDocx", "pandoc_to_docx"]


def pandoc_to_docx(request: ConversionRequest, ctx: WorkerContext, reader: str) -> ConversionResult:
    """Shared by md→docx and html→docx: pandoc's docx writer, optional reference doc.

    Pictures are embedded under the rules of the PDF routes
    (``converters.resource_policy``): files in the drop folder, read through its
    pinned descriptor; anything else is left out with its warning code
    (``local_resource_blocked``, ``remote_resource_blocked``, ``resource_missing``,
    ``resource_too_large``, ``image_too_large``, ``data_url_too_large``) and its
    description stays in the text. pandoc reads no file on behalf of the
    document: it gets the vetted bytes. pandoc reads only UTF-8: HTML in a
    charset it declares is transcoded first (``read_html_input``), so html → docx
    accepts what html → pdf and html → md accept. A docx without text or
    pictures carries ``empty_output``.
    """
    if reader == "html":
        text = read_html_input(request.input_path)
    else:
        text = read_text_input(request.input_path)  # refuses invalid UTF-8 with a clear code
    policy = ResourcePolicy(request.drop_folder, ctx.limits)
    docx = shared_pandoc().to_docx(
        text, reader, policy.picture, reference_doc=request.options.reference_docx
    )
    request.output_path.write_bytes(docx)
    warnings = list(policy.warnings)
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
        shared_pandoc().warm()

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        return pandoc_to_docx(request, ctx, "markdown")
