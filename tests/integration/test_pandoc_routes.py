"""md→docx and html→docx through pandoc, called as a worker calls them.

Covers what issue 10 (finding 12) changed: HTML in a declared legacy charset is
transcoded (the same text as html→pdf and html→md), and a docx without text or
pictures says ``empty_output``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from converters.base import (
    ConversionRequest,
    ConversionResult,
    ConvertOptions,
    Limits,
    WorkerContext,
)
from converters.dropfolder import DropFolder
from converters.html_docx import HtmlToDocx
from converters.md_docx import MarkdownToDocx
from converters.output_check import docx_has_content
from tests.fixtures.web_docs import make_png

pytestmark = pytest.mark.integration

CTX = WorkerContext(
    gpu_policy="cpu",
    models_dir=None,
    limits=Limits(),
    device="cpu",
    runtime_kind="none",
)


def _convert(conv: MarkdownToDocx, source: Path, out: Path) -> ConversionResult:
    with DropFolder.open(source.parent) as folder:
        return conv.convert(ConversionRequest(source, out, ConvertOptions(), folder), CTX)


def _media(path: Path) -> list[bytes]:
    """The pictures a .docx holds, in name order."""
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("word/media/"))
        return [zf.read(n) for n in names]


def _docx_text(path: Path) -> str:
    import docx

    return "\n".join(p.text for p in docx.Document(str(path)).paragraphs)


def test_html_in_a_declared_legacy_charset_keeps_its_characters(tmp_path: Path) -> None:
    source = tmp_path / "old.html"
    page = "<html><head><meta charset='windows-1252'></head><body><p>Café crème</p></body></html>"
    source.write_bytes(page.encode("cp1252"))
    out = tmp_path / "out.docx"
    result = _convert(HtmlToDocx(), source, out)
    assert "Café crème" in _docx_text(out)
    assert result.warnings == []


def test_a_document_with_nothing_in_it_says_empty_output(tmp_path: Path) -> None:
    source = tmp_path / "blank.html"
    source.write_text("<!doctype html><html><head></head><body><p> </p></body></html>")
    out = tmp_path / "out.docx"
    result = _convert(HtmlToDocx(), source, out)
    assert out.is_file()
    assert result.warnings == ["empty_output"]


def test_an_image_only_markdown_keeps_its_picture(tmp_path: Path) -> None:
    make_png(tmp_path / "chart.png", (10, 10))
    source = tmp_path / "chart.md"
    source.write_text("![](chart.png)\n", encoding="utf-8")
    out = tmp_path / "out.docx"
    result = _convert(MarkdownToDocx(), source, out)
    assert _media(out) == [(tmp_path / "chart.png").read_bytes()]
    assert result.warnings == []


def test_an_image_only_markdown_whose_picture_is_missing_is_empty(tmp_path: Path) -> None:
    source = tmp_path / "chart.md"
    source.write_text("![](chart.png)\n", encoding="utf-8")
    out = tmp_path / "out.docx"
    result = _convert(MarkdownToDocx(), source, out)
    assert result.warnings == ["resource_missing", "empty_output"]


def test_text_counts_as_content(tmp_path: Path) -> None:
    source = tmp_path / "note.md"
    source.write_text("# Note\n\nSomething to say.\n", encoding="utf-8")
    out = tmp_path / "out.docx"
    result = _convert(MarkdownToDocx(), source, out)
    assert docx_has_content(out)
    assert result.warnings == []


def test_a_reference_docx_styles_the_output(tmp_path: Path) -> None:
    import docx

    reference = docx.Document()
    reference.styles["Heading 1"].font.name = "Courier New"
    reference.save(str(tmp_path / "house.docx"))
    source = tmp_path / "memo.md"
    source.write_text("# Memo\n\nBody.\n", encoding="utf-8")
    out = tmp_path / "out.docx"
    options = ConvertOptions(reference_docx=tmp_path / "house.docx")
    with DropFolder.open(tmp_path) as folder:
        MarkdownToDocx().convert(ConversionRequest(source, out, options, folder), CTX)
    with zipfile.ZipFile(out) as zf:
        assert "Courier New" in zf.read("word/styles.xml").decode("utf-8")
