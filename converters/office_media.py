"""The pictures inside an Office package, judged by their headers before conversion.

A 50 KB .docx can hold forty 13,000-pixel pictures: each is under Pillow's
bomb threshold, the zip ratios are harmless (one bit a pixel), yet the
converter decodes every one to RGB, ~500 MB and over a second each. So the
pixels of all pictures together are bounded by ``limits.max_total_pixels``
(and each by ``max_pixels``), read from the image headers only: nothing is
decoded here.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

from converters.base import Limits
from converters.errors import InputTooLarge

__all__ = ["PixelBomb", "check_media_pixels", "header_size"]

# Enough for any PNG/GIF header and for the frame header of all but the most
# bloated JPEG (EXIF blocks are at most 64 KiB).
_HEADER_BYTES = 128 * 1024
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


class PixelBomb(ValueError):
    """A header whose size Pillow itself calls a decompression bomb."""


def header_size(head: bytes) -> tuple[int, int] | None:
    """Width and height of a raster image from its first bytes, nothing decoded.

    None when Pillow does not know the format (EMF, SVG, damaged): the converter
    decides. Raises PixelBomb past Pillow's own bomb threshold. Shared by the
    Office picture check and WeasyPrint's resource policy.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(head)) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            raise PixelBomb("over Pillow's bomb threshold") from None
        except Exception:
            return None
    return int(width), int(height)


def _picture_size(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int] | None:
    """Width and height from the member's header, or None if Pillow cannot tell."""
    with zf.open(info) as member:
        head = member.read(_HEADER_BYTES)
    try:
        return header_size(head)
    except PixelBomb:
        what = f"picture {info.filename} is over Pillow's bomb threshold"
        raise InputTooLarge(what, member=info.filename) from None


def check_media_pixels(path: Path, zf: zipfile.ZipFile, limits: Limits) -> None:
    """Refuse a package whose pictures (``*/media/*``) hold more pixels than allowed."""
    total = 0
    for info in zf.infolist():
        name = info.filename.lower()
        if "/media/" not in name or not name.endswith(_RASTER_SUFFIXES):
            continue  # a thumbnail in docProps/ is never decoded by a converter
        size = _picture_size(zf, info)
        if size is None:
            continue
        width, height = size
        if width * height > limits.max_pixels:
            raise InputTooLarge(
                f"{path.name}: picture {info.filename} is {width}x{height} pixels, "
                f"more than max_pixels ({limits.max_pixels})",
                member=info.filename,
                limit=limits.max_pixels,
            )
        total += width * height
        if total > limits.max_total_pixels:
            raise InputTooLarge(
                f"{path.name}: its pictures hold more than max_total_pixels "
                f"({limits.max_total_pixels}) pixels together",
                limit=limits.max_total_pixels,
            )
