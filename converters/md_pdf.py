"""md → pdf: pandoc to standalone HTML5, then WeasyPrint with a print stylesheet.

The PDF title is the front-matter ``title``, else the first heading, else the file
name stem. Resources the document references go through the confined fetcher in
``converters._weasy`` (the pinned drop folder only, no network).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from converters._pandoc import pandoc_version, run_pandoc
from converters._weasy import render_pdf, warm_weasyprint, weasyprint_problems, weasyprint_version
from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
)
from converters.errors import DependencyMissing, SirError
from converters.text import read_text_input

__all__ = ["MarkdownToPdf", "markdown_to_html"]

# Sets ``pagetitle`` (the HTML <title>, hence the PDF title) when the document has
# no ``title``: first heading, else the fallback passed in as metadata. Using
# pagetitle rather than title avoids repeating the heading as a title block.
_TITLE_FILTER = """
function Pandoc(doc)
  local fallback = doc.meta["sir-fallback-title"]
  doc.meta["sir-fallback-title"] = nil
  if doc.meta.title == nil and doc.meta.pagetitle == nil then
    local found = nil
    for _, block in ipairs(doc.blocks) do
      if block.t == "Header" then
        found = pandoc.utils.stringify(block.content)
        break
      end
    end
    if found == nil or found == "" then
      found = pandoc.utils.stringify(fallback or "")
    end
    doc.meta.pagetitle = found
  end
  return doc
end
"""


def markdown_to_html(input_path: Path, fallback_title: str) -> str:
    """Pandoc (sandboxed) markdown → standalone HTML5 with a <title>, as text."""
    with tempfile.TemporaryDirectory(prefix="sir-md-pdf-") as tmp:
        workdir = Path(tmp)
        lua = workdir / "title.lua"
        lua.write_text(_TITLE_FILTER, encoding="utf-8")
        out = workdir / "document.html"
        run_pandoc(
            [
                "-f",
                "markdown",
                "-t",
                "html5",
                "--standalone",
                "--metadata=document-css=false",
                f"--metadata=sir-fallback-title:{fallback_title or 'document'}",
                f"--lua-filter={lua}",
                "-o",
                str(out),
                str(input_path),
            ],
            cwd=input_path.parent,
        )
        return out.read_text(encoding="utf-8")


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
        warm_weasyprint()

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        read_text_input(request.input_path)  # invalid UTF-8 → UnsupportedContent
        html = markdown_to_html(request.input_path, request.input_path.stem)
        return render_pdf(request, ctx, html_string=html, default_stylesheet=True)
