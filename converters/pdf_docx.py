"""pdf → docx with pdf2docx (PyMuPDF underneath).

The page count is checked with pypdfium2 first (encrypted → EncryptedInput,
unreadable → CorruptInput, too long → TooManyPages). pdf2docx is chatty: its
root-logger INFO lines are dropped, the handler its import installs is removed,
PyMuPDF messages are routed to the ``pymupdf`` logger, and nothing reaches
stdout. Pages pdf2docx had to skip are reported as the warning
``pdf_pages_skipped``.

pdf2docx analyses the whole document before it converts the pages (fonts,
headers and footers, sections), and one odd page there failed the whole
document. When that happens each page is converted on its own instead
(warning ``pdf_converted_page_by_page``); the pages that fail alone too are
skipped (``pdf_pages_skipped``, their numbers in the worker's log). A job
fails only when no page converts, and then, like every other failure of the
library, as ``converter_failed`` with a precise ``details.cause``
(``FailureCause``) and the library's exception type.
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
from converters.errors import ConverterFailed, DependencyMissing, FailureCause, SirError
from converters.output_check import docx_has_content
from converters.sniff import inspect_pdf
from converters.warning_codes import WarningCode

__all__ = ["PdfToDocx"]

log = logging.getLogger("sir_convert_a_lot.pdf_docx")


class _Pdf2DocxFilter(logging.Filter):
    """Drops pdf2docx's records on the root logger; notes the pages it skipped."""

    def __init__(self, package_dir: str) -> None:
        super().__init__("pdf2docx-quiet")
        self.package_dir = package_dir
        self.skipped_pages: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.package_dir):
            return True
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Ignore page"):
            page = record.args[0] if isinstance(record.args, tuple) and record.args else 0
            self.skipped_pages.add(page if isinstance(page, int) else 0)
        return record.levelno >= logging.ERROR


def _failed(
    cause: FailureCause, message: str, exc: BaseException | None, **more: object
) -> SirError:
    details: dict[str, object] = {"cause": cause.value, **more}
    if exc is not None:
        details["exception"] = type(exc).__name__
        message = f"{message}: {type(exc).__name__}: {exc}"
    return ConverterFailed(message[:2000], **details)


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
        quiet.skipped_pages = set()
        warnings: list[str] = []
        # Anything printed (pdf2docx has a stray print()) goes to stderr, not stdout.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                converter = converter_cls(str(request.input_path))
            except Exception as exc:
                raise _failed(
                    FailureCause.OPEN_FAILED, "pdf2docx could not open the PDF", exc
                ) from exc
            try:
                try:
                    converter.convert(str(request.output_path), multi_processing=False)
                    skipped = set(quiet.skipped_pages)
                except Exception as exc:
                    log.warning(
                        "pdf2docx failed on the whole document (%s: %s); page by page now",
                        type(exc).__name__,
                        str(exc)[:300],
                    )
                    warnings.append(WarningCode.PDF_CONVERTED_PAGE_BY_PAGE)
                    skipped = _page_by_page(converter, quiet, pages, str(request.output_path))
            finally:
                converter.close()
        if not request.output_path.is_file():
            raise _failed(FailureCause.NO_OUTPUT, "pdf2docx wrote no document", None)
        if skipped:
            log.warning("pdf2docx skipped pages %s", sorted(skipped))
            warnings.append(WarningCode.PDF_PAGES_SKIPPED)
        if not docx_has_content(request.output_path):
            warnings.append(WarningCode.EMPTY_OUTPUT)
        return ConversionResult(warnings=warnings, pages=pages, device="cpu")


def _page_by_page(converter: Any, quiet: _Pdf2DocxFilter, pages: int, output: str) -> set[int]:
    """Convert each page on its own into one document; the numbers of the pages
    that failed. Raises ``converter_failed`` (``no_page_converted``) when none converts."""
    import docx

    settings = dict(converter.default_settings, multi_processing=False)
    parsed: list[Any] = []
    skipped: set[int] = set()
    last_error: Exception | None = None
    for index in range(pages):
        quiet.skipped_pages = set()
        try:
            # Each round makes fresh page objects: the parsed ones kept here stay as they are.
            converter.load_pages(pages=[index]).parse_document(**settings).parse_pages(**settings)
            page = converter.pages[index]
        except Exception as exc:
            last_error = exc
            skipped.add(index + 1)
            continue
        if page.finalized and not quiet.skipped_pages:
            parsed.append(page)
        else:
            skipped.add(index + 1)
    if not parsed:
        raise _failed(
            FailureCause.NO_PAGE_CONVERTED,
            f"pdf2docx converted none of the {pages} pages, not even one by one",
            last_error,
            pages=sorted(skipped)[:100],
        )
    document = docx.Document()
    for page in parsed:
        try:
            page.make_docx(document)
        except Exception:
            skipped.add(page.id + 1)
    try:
        document.save(output)
    except Exception as exc:
        raise _failed(FailureCause.WRITE_FAILED, "the docx could not be written", exc) from exc
    return skipped
