"""What a document may load, decided and performed in one place: ``ResourcePolicy``.

Shared by the routes that render documents with pictures and stylesheets:
md/html → pdf (WeasyPrint's URL fetcher calls ``load``) and md/html → docx
(the daemon vets each image source pandoc found with ``picture`` and hands
pandoc the bytes). Plain Python: no WeasyPrint, no pandoc.

* Files in the drop folder, and nothing else on disk. No renderer ever sees a
  real path: references resolve against the synthetic base URL
  ``DROP_BASE_URL``; a ``file:`` URL under it names a path relative to the drop
  folder, which is read through the pinned descriptor
  (``converters.dropfolder``: no symbolic link on the way, a regular file with
  one link, size-capped). Every other ``file:`` URL (``file:///etc/passwd``,
  an absolute path, ``../x`` that climbed out of the base) is refused:
  ``local_resource_blocked``. A file that does not exist: ``resource_missing``;
  one larger than ``limits.max_input_bytes``: ``resource_too_large``.
* ``data:`` URLs up to ``limits.max_data_url_bytes`` (length of the URL text).
  Larger ones: warning ``data_url_too_large``.
* Every other scheme (http, https, ftp, ...): warning ``remote_resource_blocked``.
  Nothing here opens a socket.
* Raster images whose width x height exceeds ``limits.max_pixels`` are refused
  with warning ``image_too_large`` (read from the image header; nothing is
  decoded). The job still succeeds, without that image.

A refused resource is left out; the conversion still succeeds and the warning
codes (deduplicated) land in ``ConversionResult.warnings``.
"""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from converters.base import Limits
from converters.dropfolder import DropFolder, ResourceUnavailable
from converters.office_media import PixelBomb, header_size
from converters.warning_codes import WarningCode

__all__ = ["DROP_BASE_URL", "Picture", "ResourcePolicy", "ResourceRefused"]

# The drop folder as the renderers see it. No such folder exists, and none is ever
# opened by this name: URLs under it are mapped to paths relative to the pinned
# drop folder descriptor.
DROP_BASE_URL = "file:///sir-convert-a-lot-drop/"
_DROP_PREFIX = urlsplit(DROP_BASE_URL).path

_TEXT_LIKE = ("text/", "image/svg", "application/xml", "application/xhtml")


@dataclass(frozen=True)
class Picture:
    """The vetted bytes of one picture a document references."""

    body: bytes
    mime: str


class ResourceRefused(ValueError):
    """A resource the policy refuses; the renderer goes on without it."""


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
        if scheme not in ("data", "file"):
            self.refuse(WarningCode.REMOTE_RESOURCE_BLOCKED, f"not fetched: {url[:200]}")
        try:
            body, mime = self._load_data_url(url) if scheme == "data" else self._load_file_url(url)
        except ResourceRefused:
            raise
        except ValueError as exc:  # bad base64, a malformed host: the same for every caller
            raise ResourceRefused(f"malformed URL: {exc}") from None
        self._check_image(body, mime)
        return body, mime, url

    def picture(self, reference: str) -> Picture | None:
        """The bytes of the picture a document names as ``reference`` (relative to
        the drop folder, absolute, or a URL), or None when the policy refuses it
        (the warning is recorded)."""
        try:
            body, mime, _ = self.load(urljoin(DROP_BASE_URL, reference))
        except ValueError:  # refused, or a reference no URL can be made of
            return None
        return Picture(body=body, mime=mime)

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
            return  # not a raster image Pillow knows; the renderer decides
        width, height = size
        if width * height > self.limits.max_pixels:
            self.refuse(
                WarningCode.IMAGE_TOO_LARGE, f"{width}x{height} pixels > {self.limits.max_pixels}"
            )
