"""pdf → docx with pdf2docx, called exactly as a worker calls it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from converters.base import (
    ConversionRequest,
    ConversionResult,
    ConvertOptions,
    Lane,
    Limits,
    Route,
    WorkerContext,
)
from converters.dropfolder import DropFolder
from converters.errors import ConverterFailed, CorruptInput, EncryptedInput, TooManyPages
from converters.pdf_docx import PdfToDocx
from tests.fixtures.web_docs import PDF_LINES, make_text_pdf

pytestmark = pytest.mark.integration


def _convert(source: Path, out: Path, limits: Limits | None = None) -> ConversionResult:
    ctx = WorkerContext(
        gpu_policy="cpu",
        models_dir=None,
        limits=limits or Limits(),
        device="cpu",
        runtime_kind="none",
    )
    conv = PdfToDocx()
    assert conv.problems(ctx) == []
    conv.warm(ctx)
    with DropFolder.open(source.parent) as drop_folder:
        return conv.convert(ConversionRequest(source, out, ConvertOptions(), drop_folder), ctx)


def _docx_text(path: Path) -> str:
    import docx

    document = docx.Document(str(path))
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        parts.extend(cell.text for row in table.rows for cell in row.cells)
    return "\n".join(parts)


def test_route() -> None:
    conv = PdfToDocx()
    assert (conv.route, conv.lane, conv.name) == (Route("pdf", "docx"), Lane.CPU, "pdf2docx")
    assert set(conv.versions()) == {"pdf2docx", "pymupdf", "pypdfium2"}


def test_pdf_to_docx_keeps_the_text(
    web_pdf: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out.docx"
    with caplog.at_level(logging.DEBUG):
        result = _convert(web_pdf, out, None)

    text = " ".join(_docx_text(out).split())
    for line in PDF_LINES:
        assert line in text
    assert result.pages == 1
    assert result.warnings == []
    # pdf2docx is quiet: nothing on stdout, none of its progress lines in the logs
    assert capfd.readouterr().out == ""
    assert not [r for r in caplog.records if "Parsing pages" in r.getMessage()]


def test_encrypted_pdf_is_refused(hostile_encrypted_pdf: Path, tmp_path: Path) -> None:
    with pytest.raises(EncryptedInput):
        _convert(hostile_encrypted_pdf, tmp_path / "out.docx")
    assert not (tmp_path / "out.docx").exists()


def test_truncated_pdf_is_refused(hostile_truncated_pdf: Path, tmp_path: Path) -> None:
    with pytest.raises(CorruptInput):
        _convert(hostile_truncated_pdf, tmp_path / "out.docx")


def test_page_limit_is_checked_before_converting(tmp_path: Path) -> None:
    source = make_text_pdf(tmp_path / "three.pdf", pages=3)
    out = tmp_path / "out.docx"
    with pytest.raises(TooManyPages):
        _convert(source, out, Limits(max_pages=2))
    assert not out.exists()

    assert _convert(source, out, Limits(max_pages=3)).pages == 3
    assert _docx_text(out).count(PDF_LINES[1]) == 3


def test_a_pdf_of_blank_pages_gives_an_empty_docx_that_says_so(tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    document.new_page(595, 842)
    document.save(str(tmp_path / "blank.pdf"))
    document.close()
    out = tmp_path / "out.docx"
    result = _convert(tmp_path / "blank.pdf", out)
    assert out.is_file()
    assert result.warnings == ["empty_output"]


def _pdf_with_a_bad_page(dest: Path, pages: int, bad: set[int]) -> Path:
    """Text on every page; on the ``bad`` ones (1-based) also an image in a colour
    space PyMuPDF cannot read, which fails pdf2docx's whole-document analysis."""
    import pymupdf

    mupdf: Any = pymupdf
    document: Any = mupdf.open()
    for number in range(1, pages + 1):
        page = document.new_page()
        page.insert_text((72, 72), f"Text of page {number}.", fontsize=12)
        if number in bad:
            image = document.get_new_xref()
            document.update_object(
                image,
                "<< /Type /XObject /Subtype /Image /Width 4 /Height 4"
                " /ColorSpace /DeviceN /BitsPerComponent 8 >>",
            )
            document.update_stream(image, b"\x00" * 48)
            document.xref_set_key(page.xref, "Resources", f"<< /XObject << /Im0 {image} 0 R >> >>")
            document.update_stream(page.get_contents()[0], b"q 100 0 0 100 72 300 cm /Im0 Do Q")
    document.save(str(dest))
    document.close()
    return dest


def test_a_page_that_fails_the_whole_document_is_skipped_and_the_rest_converted(
    tmp_path: Path,
) -> None:
    source = _pdf_with_a_bad_page(tmp_path / "three.pdf", 3, {2})
    out = tmp_path / "out.docx"
    result = _convert(source, out)
    text = _docx_text(out)
    assert "Text of page 1." in text
    assert "Text of page 3." in text
    assert "Text of page 2." not in text  # its page failed on its own too
    assert result.pages == 3
    assert result.warnings == ["pdf_converted_page_by_page", "pdf_pages_skipped"]


def test_a_pdf_whose_every_page_fails_says_precisely_why(tmp_path: Path) -> None:
    source = _pdf_with_a_bad_page(tmp_path / "bad.pdf", 1, {1})
    out = tmp_path / "out.docx"
    with pytest.raises(ConverterFailed) as caught:
        _convert(source, out)
    assert caught.value.code == "converter_failed"
    assert caught.value.details["cause"] == "no_page_converted"
    assert caught.value.details["pages"] == [1]
    assert caught.value.details["exception"]  # the library's own exception type
    assert "colorspace" in caught.value.message
