"""Reading text inputs: strict UTF-8 Markdown, and HTML in UTF-8 or a declared charset.

Markdown has no way to say its encoding, so it must be UTF-8 (a BOM is allowed).

HTML may declare one (``<meta charset>``, ``<meta http-equiv=Content-Type>``,
an XML declaration), and old exports in windows-1252 or Shift_JIS are real
documents. Every HTML route reads its input through ``read_html_input`` and
hands the converter the same UTF-8 text, with the declaration rewritten to
``utf-8``: so html → pdf, html → docx and html → md accept exactly the same
files and show the same characters (pandoc reads only UTF-8, and a library that
honoured the old declaration would otherwise read the transcoded bytes wrong).
A file that is neither valid UTF-8 nor valid in a charset it declares and
Python knows is refused with ``unsupported_content``: random bytes are not
"HTML in some legacy encoding". Valid UTF-8 wins over a declaration that says
otherwise (tools re-save files without fixing the ``<meta>``).
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from converters.errors import UnsupportedContent

__all__ = ["declared_html_charset", "decode_html", "read_html_input", "read_text_input"]

# The HTML prescan looks at the first 1024 bytes; allow a longer head (comments).
DECLARATION_WINDOW = 8192
_META_CHARSET = re.compile(
    rb"""<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([A-Za-z0-9._:\-]{1,40})""", re.IGNORECASE
)
_XML_ENCODING = re.compile(
    rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:\-]{1,40})["']""", re.IGNORECASE
)
_META_CHARSET_TEXT = re.compile(_META_CHARSET.pattern.decode(), re.IGNORECASE)
_XML_ENCODING_TEXT = re.compile(_XML_ENCODING.pattern.decode(), re.IGNORECASE)
_ASCII_PROBE = '<meta charset="x">&#;!-?/+ abcXYZ019\n'


def read_text_input(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsupportedContent(
            f"{path.name} is not valid UTF-8 (byte {exc.start}): save it as UTF-8 and retry"
        ) from None


def declared_html_charset(head: bytes) -> str | None:
    """The codec name of the charset ``head`` declares, if Python knows it as an
    ASCII-compatible text encoding (UTF-7, UTF-16/32 and non-text codecs are not)."""
    head = head[:DECLARATION_WINDOW]
    found = _XML_ENCODING.match(head) or _META_CHARSET.search(head)
    if found is None:
        return None
    label = found.group(1).decode("ascii")
    try:
        info = codecs.lookup(label)
        if _ASCII_PROBE.encode(info.name) != _ASCII_PROBE.encode("ascii"):
            return None
    except (LookupError, UnicodeError, ValueError):
        return None
    return info.name


def decode_html(data: bytes, name: str) -> str:
    """The text of an HTML file (see the module docstring); declaration set to utf-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    charset = declared_html_charset(data)
    if charset is None:
        raise UnsupportedContent(
            f"{name} is neither UTF-8 nor declares a known charset (<meta charset>): "
            "save it as UTF-8 and retry"
        )
    try:
        text = data.decode(charset)
    except UnicodeDecodeError as exc:
        raise UnsupportedContent(
            f"{name} declares {charset} but is not valid {charset} (byte {exc.start})"
        ) from None
    return _declare_utf8(text)


def _declare_utf8(text: str) -> str:
    head = text[:DECLARATION_WINDOW]
    found = _XML_ENCODING_TEXT.match(head) or _META_CHARSET_TEXT.search(head)
    if found is None:
        return text
    return text[: found.start(1)] + "utf-8" + text[found.end(1) :]


def read_html_input(path: Path) -> str:
    """Read and decode an HTML input (the job's own copy, in its job folder)."""
    return decode_html(path.read_bytes(), path.name)
