"""Whether an output holds anything: the ``empty_output`` check for pdf and docx.

A route can succeed and still produce nothing a reader would want: a page of
markup without text, a PDF of blank pages turned into a docx. Such a job still
succeeds (the input may really be empty), but the sidecar says so with
``empty_output`` instead of a silent ``succeeded``. "Anything" is text that is
not white space, or a picture (a raster image or vector drawing).

Both checks read our own freshly written output, never a dropper's file.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

__all__ = ["docx_has_content", "pdf_has_content"]

# w:t holds the text of a run; drawings, pictures and embedded objects are pictures.
_DOCX_TEXT = re.compile(rb"<w:t(?:\s[^>]*)?>([^<]*)</w:t>")
_DOCX_PICTURE = re.compile(rb"<(?:w:drawing|w:pict|w:object|v:imagedata|pic:pic)[\s>/]")
_DOCX_PARTS = re.compile(r"^word/(?:document|header\d*|footer\d*|footnotes|endnotes)\.xml$")


def pdf_has_content(path: Path) -> bool:
    """Text on any page, or an image or a drawn path (pdfium, page by page)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pictures = [pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_PATH]
    document = pdfium.PdfDocument(str(path))
    try:
        for page in document:
            textpage = page.get_textpage()
            try:
                if textpage.get_text_range().strip():
                    return True
            finally:
                textpage.close()
            if next(iter(page.get_objects(filter=pictures, max_depth=5)), None) is not None:
                return True
        return False
    finally:
        document.close()


def docx_has_content(path: Path) -> bool:
    """Non-blank run text or a picture in the body, headers, footers or notes."""
    with zipfile.ZipFile(path) as package:
        for name in package.namelist():
            if not _DOCX_PARTS.match(name):
                continue
            xml = package.read(name)
            if _DOCX_PICTURE.search(xml):
                return True
            if any(text.strip() for text in _DOCX_TEXT.findall(xml)):
                return True
    return False
