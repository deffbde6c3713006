"""pdf → docx with pdf2docx (PyMuPDF underneath).

The page count is checked with pypdfium2 first (encrypted → EncryptedInput,
unreadable → CorruptInput, too long → TooManyPages). pdf2docx is chatty: its
root-logger INFO lines are dropped, the handler its import installs is removed,
PyMuPDF messages are routed to the ``pymupdf`` logger, and nothing reaches
stdout. Pages pdf2docx had to skip are reported as the warning
``pdf_pages_skipped``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from converters.base import (
    ConversionRequest,
    ConversionResult,
    Lane,
    Route,
    WorkerContext,
    package_versions,
)
from converters.errors import ConverterFailed, DependencyMissing, SirError
from converters.output_check import docx_has_content
from converters.sniff import inspect_pdf
from converters.warning_codes import WarningCode

__all__ = ["PdfToDocx"]


class _Pdf2DocxFilter(logging.Filter):
    """Drops pdf2docx's records on the root logger; counts the pages it skipped."""

    def __init__(self, package_dir: str) -> None:
        super().__init__("pdf2docx-quiet")
        self.package_dir = package_dir
        self.skipped_pages = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.package_dir):
            return True
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Ignore page"):
            self.skipped_pages += 1
        return record.levelno >= logging.ERROR


@functools.cache
def _load_pdf2docx() -> tuple[Any, _Pdf2DocxFilter]:
    """Import pdf2docx once, undoing the logging set-up it does at import time."""
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    level_before = root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the fitz API is deprecated"
            import pdf2docx
            import pymupdf
    except ImportError as exc:
        raise DependencyMissing(f"pdf2docx cannot be imported: {exc}") from None
    finally:
        for handler in list(root.handlers):
            if handler not in handlers_before:
                root.removeHandler(handler)
        root.setLevel(level_before)
    # PyMuPDF prints its messages to stdout by default.
    mupdf: Any = pymupdf
    mupdf.set_messages(pylogging_name="pymupdf", pylogging_level=logging.DEBUG)
    mupdf.set_log(pylogging_name="pymupdf", pylogging_level=logging.DEBUG)
    with contextlib.suppress(AttributeError):
        mupdf.TOOLS.mupdf_display_warnings(False)
    package_dir = str(Path(pdf2docx.__file__).parent)
    quiet = _Pdf2DocxFilter(package_dir)
    root.addFilter(quiet)
    return pdf2docx.Converter, quiet


class PdfToDocx:
    route = Route("pdf", "docx")
    name = "pdf2docx"
    lane = Lane.CPU

    def versions(self) -> dict[str, str]:
        return package_versions(("pdf2docx", "pymupdf", "pypdfium2"))

    def problems(self, ctx: WorkerContext) -> list[SirError]:
        try:
            _load_pdf2docx()
            import pypdfium2  # noqa: F401
        except SirError as exc:
            return [exc]
        except (ImportError, OSError) as exc:
            return [DependencyMissing(f"pdf2docx unavailable: {exc}")]
        return []

    def warm(self, ctx: WorkerContext) -> None:
        _load_pdf2docx()
        import pypdfium2  # noqa: F401

    def convert(self, request: ConversionRequest, ctx: WorkerContext) -> ConversionResult:
        pages = inspect_pdf(request.input_path, ctx.limits).pages
        converter_cls, quiet = _load_pdf2docx()
        quiet.skipped_pages = 0
        # Anything printed (pdf2docx has a stray print()) goes to stderr, not stdout.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                converter = converter_cls(str(request.input_path))
            except Exception as exc:
                raise ConverterFailed(f"pdf2docx could not open the PDF: {exc}") from exc
            try:
                converter.convert(str(request.output_path), multi_processing=False)
            except Exception as exc:
                raise ConverterFailed(f"pdf2docx failed: {type(exc).__name__}: {exc}") from exc
            finally:
                converter.close()
        if not request.output_path.is_file():
            raise ConverterFailed("pdf2docx finished without writing a document")
        warnings: list[str] = [WarningCode.PDF_PAGES_SKIPPED] if quiet.skipped_pages else []
        if not docx_has_content(request.output_path):
            warnings.append(WarningCode.EMPTY_OUTPUT)
        return ConversionResult(warnings=warnings, pages=pages, device="cpu")
