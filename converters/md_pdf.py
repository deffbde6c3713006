"""md → pdf: pandoc to standalone HTML5, then WeasyPrint with a print stylesheet.

The PDF title is the front-matter ``title``, else the first heading, else the file
name stem. Resources the document references go through the confined fetcher in
``converters._weasy`` (the pinned drop folder only, no network).
"""

from __future__ import annotations

from converters._pandoc import pandoc_version
from converters._weasy import render_pdf, warm_weasyprint, weasyprint_problems, weasyprint_version
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
)
from converters.errors import DependencyMissing, SirError
from converters.pandoc_resident import shared_pandoc
from converters.text import read_text_input

__all__ = ["MarkdownToPdf", "markdown_to_html"]


def markdown_to_html(text: str, fallback_title: str) -> str:
    """Markdown → standalone HTML5 with a <title>, by the worker's resident pandoc
    (its reader sandboxed). The title is the front-matter ``title``, else the
    first heading, else ``fallback_title``."""
    return shared_pandoc().to_html(text, fallback_title or "document")


class MarkdownToPdf:
    route = Route("md", "pdf")
    name = "weasyprint"
    lane = Lane.CPU

    def versions(self) -> dict[str, str]:
        return {"pandoc": pandoc_version(), "weasyprint": weasyprint_version()}

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        found: list[SirError] = []
        try:
            pandoc_version()
        except SirError as exc:
            found.append(exc)
        except OSError as exc:
            found.append(DependencyMissing(f"pandoc unavailable: {exc}"))
        return found + weasyprint_problems()

    def warm(self, ctx: WorkerContext) -> None:
        pandoc_version()
        shared_pandoc().warm()
        warm_weasyprint()

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        text = read_text_input(request.input_path)  # invalid UTF-8 → UnsupportedContent
        html = markdown_to_html(text, request.input_path.stem)
        return render_pdf(request, ctx, html_string=html, default_stylesheet=True)
