"""The route registry: one converter per (source, target), duplicates refused."""

from __future__ import annotations

from collections.abc import Iterator

from converters.base import Converter, Lane, Route
from converters.errors import UnsupportedRoute

__all__ = ["DuplicateRoute", "Registry", "default_registry"]


class DuplicateRoute(ValueError):
    """Two converters claimed the same route: a programming error."""


class Registry:
    def __init__(self) -> None:
        self._by_route: dict[Route, Converter] = {}

    def register(self, converter: Converter) -> None:
        route = converter.route
        if route in self._by_route:
            other = self._by_route[route].name
            raise DuplicateRoute(f"route {route} is already served by {other}")
        self._by_route[route] = converter

    def get(self, source: str, target: str) -> Converter:
        try:
            return self._by_route[Route(source, target)]
        except KeyError:
            raise UnsupportedRoute(
                f"no route converts {source} to {target}",
                source=source,
                target=target,
                routes=[str(r) for r in self.routes()],
            ) from None

    def routes(self) -> list[Route]:
        return sorted(self._by_route)

    def in_lane(self, lane: Lane) -> list[Converter]:
        return [c for c in self if c.lane is lane]

    def __iter__(self) -> Iterator[Converter]:
        return iter(self._by_route[r] for r in self.routes())

    def __len__(self) -> int:
        return len(self._by_route)


def default_registry() -> Registry:
    """Every route the product ships. Importing these modules is cheap."""
    from converters.docling_md import DoclingSimpleToMarkdown
    from converters.html_docx import HtmlToDocx
    from converters.html_pdf import HtmlToPdf
    from converters.md_docx import MarkdownToDocx
    from converters.md_pdf import MarkdownToPdf
    from converters.pdf_docx import PdfToDocx
    from converters.pdf_md import PdfToMarkdown

    registry = Registry()
    for converter in (
        PdfToMarkdown(),
        DoclingSimpleToMarkdown("docx"),
        DoclingSimpleToMarkdown("pptx"),
        DoclingSimpleToMarkdown("xlsx"),
        DoclingSimpleToMarkdown("html"),
        MarkdownToPdf(),
        HtmlToPdf(),
        MarkdownToDocx(),
        HtmlToDocx(),
        PdfToDocx(),
    ):
        registry.register(converter)
    return registry
