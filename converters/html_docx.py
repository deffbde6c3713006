"""html → docx with pandoc."""

from __future__ import annotations

from converters._pandoc import pandoc_version
from converters.base import ConversionRequest, ConversionResult, Route, WorkerContext
from converters.md_docx import MarkdownToDocx, pandoc_to_docx

__all__ = ["HtmlToDocx"]


class HtmlToDocx(MarkdownToDocx):
    route = Route("html", "docx")

    def versions(self) -> dict[str, str]:
        return {"pandoc": pandoc_version()}

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        return pandoc_to_docx(request, ctx, "html")
