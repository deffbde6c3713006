"""WeasyPrint plumbing shared by md→pdf and html→pdf.

Two things live here: a resource policy that decides what a document may load
(``ResourcePolicy``, plain Python, no WeasyPrint import) and the render helper
that wires the policy into WeasyPrint as its URL fetcher.

What a document may load:

* Files in its drop folder, and nothing else on disk. WeasyPrint never sees a
  real path: the document is rendered from text we read ourselves, with the
  synthetic base URL ``DROP_BASE_URL``; a ``file:`` URL under it names a path
  relative to the drop folder, which is read through the pinned descriptor
  (``converters.dropfolder``: no symbolic link on the way, a regular file with
  one link, size-capped). Every other ``file:`` URL (``file:///etc/passwd``,
  ``../x`` that climbed out of the base) is refused: ``local_resource_blocked``.
  A file that does not exist: ``resource_missing``; one larger than
  ``limits.max_input_bytes``: ``resource_too_large``.
* ``data:`` URLs up to ``limits.max_data_url_bytes`` (length of the URL text).
  Larger ones: warning ``data_url_too_large``.
* Every other scheme (http, https, ftp, ...): warning ``remote_resource_blocked``.
  The fetcher never opens a socket.
* Raster images whose width x height exceeds ``limits.max_pixels`` are refused
  with warning ``image_too_large`` (read from the image header; nothing is
  decoded). The job still succeeds, without that image.

A refused resource makes WeasyPrint skip it; the conversion still succeeds and
the warning codes (deduplicated) land in ``ConversionResult.warnings``.
"""

from __future__ import annotations

import base64
import functools
import io
import mimetypes
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from converters.base import (
    ConversionRequest,
    ConversionResult,
    Limits,
    WorkerContext,
    package_versions,
)
from converters.dropfolder import DropFolder, ResourceUnavailable
from converters.errors import (
    ConverterFailed,
    DependencyMissing,
    OptionsInvalid,
    SirError,
    TooManyPages,
)
from converters.office_media import PixelBomb, header_size
from converters.output_check import pdf_has_content
from converters.warning_codes import WarningCode

__all__ = [
    "DROP_BASE_URL",
    "ResourcePolicy",
    "ResourceRefused",
    "default_stylesheet_text",
    "render_pdf",
    "warm_weasyprint",
    "weasyprint_problems",
    "weasyprint_version",
]

# The drop folder as WeasyPrint sees it. No such folder exists, and none is ever
# opened by this name: URLs under it are mapped to paths relative to the pinned
# drop folder descriptor.
DROP_BASE_URL = "file:///sir-convert-a-lot-drop/"
_DROP_PREFIX = urlsplit(DROP_BASE_URL).path

_TEXT_LIKE = ("text/", "image/svg", "application/xml", "application/xhtml")


class ResourceRefused(ValueError):
    """A resource the policy refuses; WeasyPrint logs it and renders without it."""


@dataclass
class ResourcePolicy:
    """Decides and performs every resource load on behalf of one document."""

    drop_folder: DropFolder
    limits: Limits
    warnings: list[str] = field(default_factory=list)

    def warn(self, code: WarningCode) -> None:
        if code not in self.warnings:
            self.warnings.append(code)

    def refuse(self, code: WarningCode, message: str) -> NoReturn:
        self.warn(code)
        raise ResourceRefused(f"{code}: {message}")

    def load(self, url: str) -> tuple[bytes, str, str]:
        """Return ``(body, content_type, url)`` for an absolute URL, or refuse it."""
        scheme, sep, _ = url.partition(":")
        scheme = scheme.lower() if sep else ""
        if not scheme:
            self.refuse(
                WarningCode.LOCAL_RESOURCE_BLOCKED, f"relative URL without a base: {url[:200]}"
            )
        if scheme == "data":
            body, mime = self._load_data_url(url)
        elif scheme == "file":
            body, mime = self._load_file_url(url)
        else:
            self.refuse(WarningCode.REMOTE_RESOURCE_BLOCKED, f"not fetched: {url[:200]}")
        self._check_image(body, mime)
        return body, mime, url

    def _load_data_url(self, url: str) -> tuple[bytes, str]:
        if len(url) > self.limits.max_data_url_bytes:
            self.refuse(
                WarningCode.DATA_URL_TOO_LARGE,
                f"{len(url)} bytes > {self.limits.max_data_url_bytes}",
            )
        header, comma, payload = url[len("data:") :].partition(",")
        if not comma:
            raise ResourceRefused("malformed data: URL")
        params = [p.strip() for p in header.split(";")]
        is_base64 = bool(params) and params[-1].lower() == "base64"
        if is_base64:
            params.pop()
        mime = ";".join(params) if params and params[0] else "text/plain;charset=US-ASCII"
        raw = unquote_to_bytes(payload)
        body = base64.decodebytes(raw) if is_base64 else raw
        return body, mime

    def _load_file_url(self, url: str) -> tuple[bytes, str]:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            self.refuse(WarningCode.REMOTE_RESOURCE_BLOCKED, f"file URL on host {parts.netloc!r}")
        if not parts.path.startswith(_DROP_PREFIX):
            self.refuse(
                WarningCode.LOCAL_RESOURCE_BLOCKED, f"outside the drop folder: {parts.path[:200]}"
            )
        # Percent-escapes name the bytes of the file name, as the file system has them.
        relative = unquote(parts.path[len(_DROP_PREFIX) :], errors="surrogateescape")
        try:
            body = self.drop_folder.read(relative, max_bytes=self.limits.max_input_bytes)
        except ResourceUnavailable as exc:
            self.refuse(exc.code, exc.message)
        mime = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        return body, mime

    def _check_image(self, body: bytes, mime: str) -> None:
        """Refuse raster images over the pixel limit, reading only their header."""
        if mime.startswith(_TEXT_LIKE):
            return
        try:
            size = header_size(body)
        except PixelBomb:
            self.refuse(WarningCode.IMAGE_TOO_LARGE, "image over Pillow's bomb threshold")
        if size is None:
            return  # not a raster image Pillow knows; WeasyPrint decides
        width, height = size
        if width * height > self.limits.max_pixels:
            self.refuse(
                WarningCode.IMAGE_TOO_LARGE, f"{width}x{height} pixels > {self.limits.max_pixels}"
            )


@functools.cache
def _fetcher_class() -> type[Any]:
    """A WeasyPrint ``URLFetcher`` whose every load goes through a ResourcePolicy."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class _BytesResponse(URLFetcherResponse):  # type: ignore[misc]
        # ``path`` lets WeasyPrint re-read a file lazily by name; we hand over
        # the bytes we checked instead.
        @property
        def path(self) -> None:
            return None

    class ConfinedFetcher(URLFetcher):  # type: ignore[misc]
        def __init__(self, policy: ResourcePolicy) -> None:
            super().__init__(timeout=1, allow_redirects=False, fail_on_errors=False)
            self.policy = policy

        def fetch(self, url: str, headers: object = None) -> Any:
            body, mime, final_url = self.policy.load(url)
            return _BytesResponse(final_url, body, {"Content-Type": mime})

    return ConfinedFetcher


def default_stylesheet_text() -> str:
    """The packaged print stylesheet (``converters/print.css``)."""
    return resources.files("converters").joinpath("print.css").read_text(encoding="utf-8")


def weasyprint_version() -> str:
    return package_versions(["weasyprint"])["weasyprint"]


def weasyprint_problems() -> list[SirError]:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: Pango/HarfBuzz libraries missing
        return [DependencyMissing(f"weasyprint unavailable: {exc}")]
    return []


def _import_weasyprint() -> Any:
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise DependencyMissing(f"weasyprint cannot be imported: {exc}") from None
    return weasyprint


def _stylesheet(sheet: Path, limits: Limits) -> bytes:
    """The profile's or folder's stylesheet: a copy the daemon made in its job
    folder (trusted), read with a plain open. Its ``url()``s resolve against the
    drop folder like the document's."""
    try:
        with sheet.open("rb") as handle:
            data = handle.read(limits.max_input_bytes + 1)
    except OSError:
        raise OptionsInvalid(f"stylesheet {sheet} does not exist", stylesheet=str(sheet)) from None
    if len(data) > limits.max_input_bytes:
        raise OptionsInvalid(f"stylesheet {sheet} is too large", stylesheet=str(sheet))
    return data


def render_pdf(
    request: ConversionRequest,
    ctx: WorkerContext,
    *,
    html_string: str,
    default_stylesheet: bool = False,
) -> ConversionResult:
    """Render ``html_string`` to the output PDF.

    The HTML is text the route read itself (WeasyPrint never opens the input by
    name); relative references resolve against the pinned drop folder through
    ``DROP_BASE_URL``. The stylesheet is ``options.stylesheet`` when set, else
    the packaged print.css when ``default_stylesheet`` is true. More than
    ``limits.max_pages`` rendered pages raise TooManyPages and no output is
    written. A PDF without any text or picture carries ``empty_output``.
    ``options.pdf_variant`` (``pdf/a-3b``…) makes WeasyPrint write that variant's
    metadata and structure; nothing validates it externally.
    """
    weasyprint = _import_weasyprint()
    from weasyprint.text.fonts import FontConfiguration

    policy = ResourcePolicy(request.drop_folder, ctx.limits)
    fetcher = _fetcher_class()(policy)
    fonts = FontConfiguration()
    stylesheets: list[Any] = []
    sheet = request.options.stylesheet
    try:
        if sheet is not None:
            stylesheets.append(
                weasyprint.CSS(
                    file_obj=io.BytesIO(_stylesheet(sheet, ctx.limits)),
                    base_url=DROP_BASE_URL,
                    url_fetcher=fetcher,
                    font_config=fonts,
                )
            )
        elif default_stylesheet:
            stylesheets.append(
                weasyprint.CSS(
                    string=default_stylesheet_text(), url_fetcher=fetcher, font_config=fonts
                )
            )
        html = weasyprint.HTML(string=html_string, base_url=DROP_BASE_URL, url_fetcher=fetcher)
        document = html.render(stylesheets=stylesheets, font_config=fonts)
        pages = len(document.pages)
        if pages > ctx.limits.max_pages:
            raise TooManyPages(
                f"the rendered document has {pages} pages, the limit is {ctx.limits.max_pages}",
                pages=pages,
                limit=ctx.limits.max_pages,
            )
        variant = request.options.pdf_variant
        if variant is None:
            document.write_pdf(target=str(request.output_path))
        else:
            document.write_pdf(target=str(request.output_path), pdf_variant=variant)
    except SirError:
        raise
    except RecursionError:
        raise ConverterFailed("the document is nested too deeply to lay out") from None
    except Exception as exc:
        raise ConverterFailed(f"weasyprint failed: {type(exc).__name__}: {exc}") from exc
    found = list(policy.warnings)
    if not pdf_has_content(request.output_path):
        found.append(WarningCode.EMPTY_OUTPUT)
    return ConversionResult(
        warnings=found, pages=pages, device="cpu", pdf_variant=request.options.pdf_variant
    )


def warm_weasyprint() -> None:
    """Import WeasyPrint and render a tiny page once, so the first job is fast."""
    weasyprint = _import_weasyprint()
    from weasyprint.text.fonts import FontConfiguration

    fonts = FontConfiguration()
    css = weasyprint.CSS(string=default_stylesheet_text(), font_config=fonts)
    html = weasyprint.HTML(
        string="<!doctype html><title>warm</title><h1>Warm</h1><p>up <code>x</code></p>"
    )
    html.write_pdf(target=io.BytesIO(), stylesheets=[css], font_config=fonts)
