"""html → pdf with WeasyPrint.

The page is read and decoded here (``read_html_input``: UTF-8, or the charset
it declares) and handed to WeasyPrint as text. Relative references resolve in
the folder the document was dropped in, pinned as ``request.drop_folder``; the
confined fetcher in ``converters._weasy`` refuses everything outside it and
every network URL. The document's own styling is kept;
``options.stylesheet`` is added when a profile sets one.
"""

from __future__ import annotations

from converters._weasy import render_pdf, warm_weasyprint, weasyprint_problems, weasyprint_version
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
)
from converters.errors import SirError
from converters.text import read_html_input

__all__ = ["HtmlToPdf"]


class HtmlToPdf:
    route = Route("html", "pdf")
    name = "weasyprint"
    lane = Lane.CPU

    def versions(self) -> dict[str, str]:
        return {"weasyprint": weasyprint_version()}

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        return weasyprint_problems()

    def warm(self, ctx: WorkerContext) -> None:
        warm_weasyprint()

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        return render_pdf(request, ctx, html_string=read_html_input(request.input_path))
