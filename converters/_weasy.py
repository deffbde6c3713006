"""WeasyPrint plumbing shared by md→pdf and html→pdf.

Two things live here: a resource policy that decides what a document may load
(``ResourcePolicy``, plain Python, no WeasyPrint import) and the render helper
that wires the policy into WeasyPrint as its URL fetcher.

What a document may load:

* ``file:`` URLs (relative references resolve against the drop folder) only when
  the resolved path (symlinks and ``..`` followed) lies inside ``allowed_root``,
  or is the input file itself. Anything else: warning ``local_resource_blocked``.
* ``data:`` URLs up to ``limits.max_data_url_bytes`` (length of the URL text).
  Larger ones: warning ``data_url_too_large``.
* Every other scheme (http, https, ftp, ...): warning ``remote_resource_blocked``.
  The fetcher never opens a socket.
* Raster images whose width x height exceeds ``limits.max_pixels`` are refused
  with warning ``image_too_large`` (read from the image header; nothing is
  decoded). The job still succeeds, without that image.
* Local files larger than ``limits.max_input_bytes``: warning ``resource_too_large``.

A refused resource makes WeasyPrint skip it; the conversion still succeeds and
the warning codes (deduplicated) land in ``ConversionResult.warnings``.
"""

from __future__ import annotations

import base64
import functools
import io
import mimetypes
import os
import stat
import warnings
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes, urlsplit
from urllib.request import url2pathname

from converters.base import ConversionRequest, ConversionResult, Limits, WorkerContext
from converters.errors import (
    ConverterFailed,
    DependencyMissing,
    OptionsInvalid,
    SirError,
    TooManyPages,
)

__all__ = [
    "DATA_URL_TOO_LARGE",
    "IMAGE_TOO_LARGE",
    "LOCAL_RESOURCE_BLOCKED",
    "REMOTE_RESOURCE_BLOCKED",
    "RESOURCE_TOO_LARGE",
    "ResourcePolicy",
    "ResourceRefused",
    "default_stylesheet_text",
    "render_pdf",
    "warm_weasyprint",
    "weasyprint_problems",
    "weasyprint_version",
]

REMOTE_RESOURCE_BLOCKED = "remote_resource_blocked"
LOCAL_RESOURCE_BLOCKED = "local_resource_blocked"
DATA_URL_TOO_LARGE = "data_url_too_large"
IMAGE_TOO_LARGE = "image_too_large"
RESOURCE_TOO_LARGE = "resource_too_large"

_TEXT_LIKE = ("text/", "image/svg", "application/xml", "application/xhtml")


class ResourceRefused(ValueError):
    """A resource the policy refuses; WeasyPrint logs it and renders without it."""


@dataclass
class ResourcePolicy:
    """Decides and performs every resource load on behalf of one document."""

    allowed_root: Path
    limits: Limits
    input_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.allowed_root = self.allowed_root.resolve()
        if self.input_path is not None:
            self.input_path = self.input_path.resolve()

    def warn(self, code: str) -> None:
        if code not in self.warnings:
            self.warnings.append(code)

    def refuse(self, code: str, message: str) -> NoReturn:
        self.warn(code)
        raise ResourceRefused(f"{code}: {message}")

    def load(self, url: str) -> tuple[bytes, str, str]:
        """Return ``(body, content_type, url)`` for an absolute URL, or refuse it."""
        scheme, sep, _ = url.partition(":")
        scheme = scheme.lower() if sep else ""
        if not scheme:
            self.refuse(LOCAL_RESOURCE_BLOCKED, f"relative URL without a base: {url[:200]}")
        if scheme == "data":
            body, mime = self._load_data_url(url)
        elif scheme == "file":
            body, mime, url = self._load_file_url(url)
        else:
            self.refuse(REMOTE_RESOURCE_BLOCKED, f"not fetched: {url[:200]}")
        self._check_image(body, mime)
        return body, mime, url

    def is_allowed_path(self, path: Path) -> bool:
        """Whether a path (any symlinks and ``..`` resolved) may be read."""
        resolved = path.resolve()
        if self.input_path is not None and resolved == self.input_path:
            return True
        return resolved.is_relative_to(self.allowed_root)

    def _load_data_url(self, url: str) -> tuple[bytes, str]:
        if len(url) > self.limits.max_data_url_bytes:
            self.refuse(
                DATA_URL_TOO_LARGE,
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

    def _load_file_url(self, url: str) -> tuple[bytes, str, str]:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            self.refuse(REMOTE_RESOURCE_BLOCKED, f"file URL on host {parts.netloc!r}")
        path = Path(url2pathname(parts.path))
        if not path.is_absolute() or not self.is_allowed_path(path):
            self.refuse(LOCAL_RESOURCE_BLOCKED, f"outside the drop folder: {parts.path[:200]}")
        resolved = path.resolve()
        body = self._read_regular_file(resolved)
        mime = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        return body, mime, resolved.as_uri()

    def _read_regular_file(self, path: Path) -> bytes:
        # O_NONBLOCK: a FIFO in the drop folder must not hang the worker;
        # O_NOFOLLOW: the final component was resolved, it must not turn into a link.
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                self.refuse(LOCAL_RESOURCE_BLOCKED, f"not a regular file: {path.name}")
            if info.st_size > self.limits.max_input_bytes:
                self.refuse(RESOURCE_TOO_LARGE, f"{path.name} is {info.st_size} bytes")
            return handle.read(self.limits.max_input_bytes + 1)

    def _check_image(self, body: bytes, mime: str) -> None:
        """Refuse raster images over the pixel limit, reading only their header."""
        if mime.startswith(_TEXT_LIKE):
            return
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(io.BytesIO(body)) as image:
                    width, height = image.size
            except Image.DecompressionBombError:
                self.refuse(IMAGE_TOO_LARGE, "image over Pillow's bomb threshold")
            except Exception:
                return  # not a raster image Pillow knows; WeasyPrint decides
        if width * height > self.limits.max_pixels:
            self.refuse(IMAGE_TOO_LARGE, f"{width}x{height} pixels > {self.limits.max_pixels}")


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
    try:
        return metadata.version("weasyprint")
    except metadata.PackageNotFoundError:
        return "missing"


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


def render_pdf(
    request: ConversionRequest,
    ctx: WorkerContext,
    *,
    html_string: str | None = None,
    default_stylesheet: bool = False,
) -> ConversionResult:
    """Render HTML (``html_string``, else the request's input file) to the output PDF.

    Relative references resolve against ``request.allowed_root``. The stylesheet is
    ``options.stylesheet`` when set, else the packaged print.css when
    ``default_stylesheet`` is true. More than ``limits.max_pages`` rendered pages
    raise TooManyPages and no output is written.
    """
    weasyprint = _import_weasyprint()
    from weasyprint.text.fonts import FontConfiguration

    policy = ResourcePolicy(request.allowed_root, ctx.limits, input_path=request.input_path)
    fetcher = _fetcher_class()(policy)
    fonts = FontConfiguration()
    base_url = policy.allowed_root.as_uri() + "/"
    stylesheets: list[Any] = []
    sheet = request.options.stylesheet
    try:
        if sheet is not None:
            if not sheet.is_file():
                raise OptionsInvalid(f"stylesheet {sheet} does not exist", stylesheet=str(sheet))
            stylesheets.append(
                weasyprint.CSS(filename=str(sheet), url_fetcher=fetcher, font_config=fonts)
            )
        elif default_stylesheet:
            stylesheets.append(
                weasyprint.CSS(
                    string=default_stylesheet_text(), url_fetcher=fetcher, font_config=fonts
                )
            )
        if html_string is not None:
            html = weasyprint.HTML(string=html_string, base_url=base_url, url_fetcher=fetcher)
        else:
            html = weasyprint.HTML(
                filename=str(request.input_path), base_url=base_url, url_fetcher=fetcher
            )
        document = html.render(stylesheets=stylesheets, font_config=fonts)
        pages = len(document.pages)
        if pages > ctx.limits.max_pages:
            raise TooManyPages(
                f"the rendered document has {pages} pages, the limit is {ctx.limits.max_pages}",
                pages=pages,
                limit=ctx.limits.max_pages,
            )
        document.write_pdf(target=str(request.output_path))
    except SirError:
        raise
    except RecursionError:
        raise ConverterFailed("the document is nested too deeply to lay out") from None
    except Exception as exc:
        raise ConverterFailed(f"weasyprint failed: {type(exc).__name__}: {exc}") from exc
    return ConversionResult(warnings=list(policy.warnings), pages=pages, device="cpu")


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
