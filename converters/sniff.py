"""Content sniffing and the safety checks a worker runs before every conversion.

``sniff_format`` names what a file really is from its first bytes (and, for a
zip, its central directory). ``check_input`` refuses inputs that are empty, too
big, not what their extension says, encrypted, corrupt, over the page limit,
zip bombs, or XML with DTD/entity declarations, each with a typed error.

Nothing here decompresses a whole member: zip sizes come from the central
directory and XML members are read only up to the end of their prolog (capped).
"""

from __future__ import annotations

import codecs
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from converters.base import Limits
from converters.errors import (
    CorruptInput,
    EncryptedInput,
    InputTooLarge,
    NotRegularFile,
    TooManyPages,
    UnsupportedContent,
)
from converters.office_media import check_media_pixels
from converters.text import declared_html_charset

__all__ = [
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_RATIO",
    "OOXML_FORMATS",
    "check_input",
    "PdfFacts",
    "inspect_pdf",
    "sniff_format",
]

OOXML_FORMATS = frozenset({"docx", "pptx", "xlsx"})
TEXT_FORMATS = frozenset({"md", "html"})
MAX_ZIP_RATIO = 100
# Members smaller than this are not judged by their ratio: tiny, very repetitive
# XML parts legitimately compress beyond 100:1 and cannot hurt anyone.
RATIO_FLOOR_BYTES = 1024 * 1024
MAX_ZIP_MEMBERS = 20_000
MAX_CENTRAL_DIRECTORY_BYTES = 16 * 1024 * 1024
XML_PROLOG_CAP = 256 * 1024

_HEAD_BYTES = 8192
_WHITE_SPACE = b" \t\n\r\f\v"
_ASCII_PROBE = '<!DOCTYPE x [<!ENTITY y "z">]>&;%?+-/ abcXYZ019\n'
_PDF_WINDOW = 1024
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_OOXML_FOLDERS = (("word/", "docx"), ("ppt/", "pptx"), ("xl/", "xlsx"))
_DESCRIPTIONS = {
    "pdf": "a PDF",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "gif": "a GIF image",
    "zip": "a zip archive",
    "ole": "a legacy binary Office file (.doc/.xls/.ppt)",
    "docx": "a Word document",
    "pptx": "a PowerPoint presentation",
    "xlsx": "an Excel workbook",
    "html": "HTML",
    "md": "plain text",
}


# --- sniffing ---------------------------------------------------------------


def _read_head(path: Path, size: int = _HEAD_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def sniff_format(path: Path) -> str | None:
    """What the content is: pdf, docx, pptx, xlsx, html, md, png, jpeg, gif, zip, ole.

    ``md`` means valid UTF-8 text without NUL bytes; ``None`` means unknown
    (binary, or text in another encoding).
    """
    head = _read_head(path)
    if not head:
        return None
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(_OLE_MAGIC):
        return "ole"
    if head.startswith(_ZIP_MAGICS):
        return _sniff_zip(path)
    if b"%PDF-" in head[:_PDF_WINDOW]:
        return "pdf"
    return _sniff_text(head, complete=len(head) < _HEAD_BYTES)


def _sniff_zip(path: Path) -> str:
    stats = _directory_stats(path)
    if stats is None or _directory_too_large(*stats):
        return "zip"  # check_input explains; never parse a hostile directory here
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "zip"
    if "[Content_Types].xml" not in names:
        return "zip"
    for folder, kind in _OOXML_FOLDERS:
        if any(name.startswith(folder) for name in names):
            return kind
    return "zip"


def _decode_utf8_head(head: bytes, *, complete: bool) -> str | None:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        # final=False tolerates a multi-byte character cut at the end of the head
        return decoder.decode(head, final=complete)
    except UnicodeDecodeError:
        return None


def _sniff_text(head: bytes, *, complete: bool) -> str | None:
    if b"\x00" in head:
        return None
    text = _decode_utf8_head(head, complete=complete)
    if text is None:
        return None
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if controls * 50 > max(len(text), 1):
        return None
    lead = text.lstrip().lower()
    if lead.startswith(("<!doctype html", "<html")):
        return "html"
    return "md"


# --- checks -----------------------------------------------------------------


def check_input(path: Path, source: str, limits: Limits, *, open_pdf: bool = True) -> None:
    """Refuse an input before conversion; ``source`` is its extension (pdf, docx, ...).

    Raises CorruptInput, InputTooLarge, UnsupportedContent, EncryptedInput,
    TooManyPages or NotRegularFile. Returns None when the input may be converted.
    ``open_pdf=False`` checks a PDF's signature only: the worker passes it
    because every PDF route opens the document itself with ``inspect_pdf``.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(f"{path.name} is not a regular file")
    if info.st_size == 0:
        raise CorruptInput(f"{path.name}: empty file")
    if info.st_size > limits.max_input_bytes:
        raise InputTooLarge(
            f"{path.name} is {info.st_size} bytes, the limit is {limits.max_input_bytes}",
            size=info.st_size,
            limit=limits.max_input_bytes,
        )
    source = source.lower().lstrip(".")
    found = sniff_format(path)
    if source == "pdf":
        if found != "pdf":
            raise _mismatch(path, source, found)
        if open_pdf:
            inspect_pdf(path, limits)
    elif source in OOXML_FORMATS:
        _check_ooxml(path, source, found, limits)
    elif source in TEXT_FORMATS:
        _check_text(path, source, found)
    else:
        raise UnsupportedContent(f"{path.name}: .{source} files are not supported")


def _mismatch(path: Path, source: str, found: str | None) -> UnsupportedContent:
    what = _DESCRIPTIONS.get(found or "", "unrecognised binary data")
    return UnsupportedContent(
        f"{path.name} is named .{source} but its content is {what}",
        source=source,
        detected=found,
    )


@dataclass(frozen=True)
class PdfFacts:
    pages: int
    text_chars: int | None  # non-blank characters of the text layer, when measured


def inspect_pdf(path: Path, limits: Limits, *, count_text: bool = False) -> PdfFacts:
    """Open a PDF with pdfium once: its page count (limit enforced) and, if asked,
    the size of its text layer; or a typed error (encrypted, corrupt, too long).

    The one PDF check: ``check_input`` and the PDF routes all use it, and the
    worker leaves it to the route, so a job opens its PDF once.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if exc.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise EncryptedInput(
                f"{path.name} is password-protected: remove the password and retry"
            ) from None
        raise CorruptInput(f"{path.name} is not a readable PDF ({exc})") from None
    try:
        pages = len(pdf)
        if pages == 0:
            raise CorruptInput(f"{path.name}: the PDF has no pages")
        if pages > limits.max_pages:
            raise TooManyPages(
                f"{path.name} has {pages} pages, the limit is {limits.max_pages}",
                pages=pages,
                limit=limits.max_pages,
            )
        if not count_text:
            return PdfFacts(pages=pages, text_chars=None)
        chars = 0
        for index in range(pages):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    chars += sum(not c.isspace() for c in textpage.get_text_range())
                finally:
                    textpage.close()
            finally:
                page.close()
        return PdfFacts(pages=pages, text_chars=chars)
    finally:
        pdf.close()


def _check_text(path: Path, source: str, found: str | None) -> None:
    if found not in TEXT_FORMATS and (found is not None or b"\x00" in _read_head(path)):
        raise _mismatch(path, source, found)
    if source == "md":
        if found is None:
            raise UnsupportedContent(f"{path.name} is not valid UTF-8: save it as UTF-8 and retry")
        _check_utf8(path)
    else:
        _check_html_encoding(path)
    if _only_white_space(path):
        raise CorruptInput(f"{path.name} holds only white space: there is nothing to convert")


def _check_html_encoding(path: Path) -> None:
    """UTF-8, or valid in the charset it declares (``converters.text``); else refused.

    Random bytes without a NUL are no HTML "in a legacy encoding": without a
    declaration Python knows, or when the bytes do not decode with it, the file
    is ``unsupported_content``, so no route turns it into mojibake marked
    ``succeeded``. The routes decode the same way (``read_html_input``).
    """
    if _decodes(path, "utf-8-sig") is None:
        return
    charset = declared_html_charset(_read_head(path))
    if charset is None:
        raise UnsupportedContent(
            f"{path.name} is neither UTF-8 nor declares a known charset (<meta charset>): "
            "save it as UTF-8 and retry"
        )
    offset = _decodes(path, charset)
    if offset is not None:
        raise UnsupportedContent(
            f"{path.name} declares {charset} but is not valid {charset} (byte {offset})"
        )


def _decodes(path: Path, encoding: str) -> int | None:
    """None when the whole file decodes strictly with ``encoding``, else the bad offset."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return offset
    return None


def _only_white_space(path: Path) -> bool:
    """Nothing but ASCII white space (and a UTF-8 BOM); stops at the first other byte."""
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(1024 * 1024):
            if first:
                chunk = chunk.removeprefix(codecs.BOM_UTF8)
                first = False
            if chunk.strip(_WHITE_SPACE):
                return False
    return True


def _check_utf8(path: Path) -> None:
    offset = _decodes(path, "utf-8-sig")
    if offset is not None:
        raise UnsupportedContent(
            f"{path.name} is not valid UTF-8 (byte {offset}): save it as UTF-8 and retry"
        )


# --- OOXML ------------------------------------------------------------------


def _check_ooxml(path: Path, source: str, found: str | None, limits: Limits) -> None:
    if found == "ole":
        if _looks_like_encrypted_ooxml(path):
            raise EncryptedInput(
                f"{path.name} is password-protected: remove the password and retry"
            )
        raise _mismatch(path, source, found)
    if found is not None and found not in (source, "zip", "md"):
        raise _mismatch(path, source, found)  # a PNG, a PDF, a .pptx named .docx, ...
    if found not in (source, "zip"):
        raise CorruptInput(f"{path.name} is not a zip package, so not a .{source} file")
    _check_central_directory(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if "[Content_Types].xml" not in {i.filename for i in infos}:
                raise CorruptInput(f"{path.name} is a zip but not an Office Open XML package")
            if found != source:
                folder = next(f for f, kind in _OOXML_FOLDERS if kind == source)
                raise CorruptInput(f"{path.name} has no {folder} part, so it is not a .{source}")
            _check_zip_sizes(path, infos, limits)
            for info in infos:
                _check_xml_member(path, zf, info)
            check_media_pixels(path, zf, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        raise CorruptInput(f"{path.name} is a damaged zip package ({exc})") from None


def _looks_like_encrypted_ooxml(path: Path) -> bool:
    """An encrypted docx/xlsx/pptx is an OLE2 file holding an EncryptedPackage stream."""
    with path.open("rb") as handle:
        data = handle.read(1024 * 1024)
    return "EncryptedPackage".encode("utf-16-le") in data


def _directory_stats(path: Path) -> tuple[int, int] | None:
    """(member count, central directory bytes) from the end-of-directory record."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - 65_557))  # EOCD (22) + longest comment (65535)
        tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
    return int(entries), int(directory_bytes)


def _directory_too_large(entries: int, directory_bytes: int) -> bool:
    # 0xFFFF / 0xFFFFFFFF (zip64 markers) count as too large: no Office file needs them
    return entries > MAX_ZIP_MEMBERS or directory_bytes > MAX_CENTRAL_DIRECTORY_BYTES


def _check_central_directory(path: Path) -> None:
    """Bound the member count and directory size before zipfile parses the directory."""
    stats = _directory_stats(path)
    if stats is None:
        raise CorruptInput(f"{path.name} is a damaged zip package (no central directory)")
    entries, directory_bytes = stats
    if _directory_too_large(entries, directory_bytes):
        raise InputTooLarge(
            f"zip bomb: {path.name} lists {entries} members in a {directory_bytes}-byte directory",
        )


def _check_zip_sizes(path: Path, infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    total = 0
    for info in infos:
        total += info.file_size
        if total > limits.max_unzipped_bytes:
            raise InputTooLarge(
                f"zip bomb: {path.name} unpacks to more than {limits.max_unzipped_bytes} bytes",
                limit=limits.max_unzipped_bytes,
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_ZIP_RATIO * max(
            info.compress_size, 1
        ):
            ratio = info.file_size // max(info.compress_size, 1)
            raise InputTooLarge(
                f"zip bomb: {path.name} member {info.filename} expands {ratio}:1",
                member=info.filename,
                ratio=ratio,
            )


def _check_xml_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    if info.is_dir() or info.file_size == 0:
        return
    if info.flag_bits & 0x1:
        raise EncryptedInput(f"{path.name} contains an encrypted zip member ({info.filename})")
    with zf.open(info) as member:
        verdict = _scan_prolog(member)
    if verdict == "entity":
        raise UnsupportedContent(
            f"{path.name}: XML entity declarations are refused ({info.filename})",
            member=info.filename,
        )
    if verdict == "doctype":
        raise UnsupportedContent(
            f"{path.name}: XML DTD declarations are refused ({info.filename})",
            member=info.filename,
        )
    if verdict == "encoding":
        raise UnsupportedContent(
            f"{path.name}: {info.filename} is XML in an encoding Office never writes "
            "(UTF-32, EBCDIC, UTF-7): refused",
            member=info.filename,
        )
    if verdict == "too_long":
        raise UnsupportedContent(
            f"{path.name}: the XML prolog of {info.filename} is longer than {XML_PROLOG_CAP} bytes",
            member=info.filename,
        )


def _scan_prolog(stream: IO[bytes]) -> str:
    """Read an XML stream up to its root element (capped) and judge the prolog.

    Returns ``ok`` (root element reached, or not XML at all), ``doctype``,
    ``entity`` (a DOCTYPE declaring entities), ``too_long`` or ``encoding``
    (UTF-32, EBCDIC or a declared encoding whose ASCII is not ASCII: the prolog
    could not be judged from the text this scanner sees, and Office never
    writes such parts).
    """
    first = stream.read(4096)
    encoding = _xml_encoding(first)
    if encoding is None:
        return "encoding"
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    text = decoder.decode(first)
    if not _declared_encoding_ok(text, encoding):
        return "encoding"
    consumed = len(first)
    while True:
        state = _prolog_state(text)
        if state == "doctype":
            if "<!ENTITY" in text.upper():
                return "entity"
            end = _doctype_end(text)
            if end is not None or consumed >= XML_PROLOG_CAP:
                return "doctype"
        elif state != "more":
            return "ok"
        if consumed >= XML_PROLOG_CAP:
            return "too_long"
        chunk = stream.read(16384)
        if not chunk:
            return "doctype" if state == "doctype" else "ok"
        consumed += len(chunk)
        text += decoder.decode(chunk)


def _xml_encoding(first: bytes) -> str | None:
    """The encoding to scan with, from the BOM or the first bytes (XML 1.0, appendix F).

    None for UTF-32 (any byte order, with or without a BOM) and EBCDIC. The
    UTF-32-LE BOM begins with the UTF-16-LE one, so it is tested first.
    """
    if first.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return None
    if first[:4] in (b"<\x00\x00\x00", b"\x00\x00\x00<", b"\x00<\x00\x00", b"\x00\x00<\x00"):
        return None
    if first.startswith(b"\x4c\x6f\xa7\x94"):  # "<?xm" in EBCDIC
        return None
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if first[:2] in (b"<\x00", b"\x00<"):
        return "utf-16-le" if first[0:1] == b"<" else "utf-16-be"
    return "utf-8"


_XML_DECLARED = re.compile(r"""^\ufeff?<\?xml\b[^>]*?\bencoding\s*=\s*["']([^"']{0,40})["']""")


def _declared_encoding_ok(text: str, scanned_as: str) -> bool:
    """Whether the declaration's encoding reads the prolog as this scanner did.

    A part declaring UTF-7 (or any encoding whose ASCII range is not ASCII)
    would show the parser a ``<!DOCTYPE`` this scanner cannot see.
    """
    found = _XML_DECLARED.match(text)
    if found is None:
        return True
    label = found.group(1)
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return False
    if name.startswith("utf-16"):
        return scanned_as.startswith("utf-16")
    if scanned_as.startswith("utf-16"):
        return False
    try:
        return _ASCII_PROBE.encode(name) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError, ValueError):
        return False


def _prolog_state(text: str) -> str:
    """``root``, ``doctype``, ``more`` (prolog not finished yet) or ``other`` (not XML)."""
    i = 1 if text.startswith("\ufeff") else 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            return "more"
        if text[i] != "<":
            return "other"
        if text.startswith("<?", i):
            end = text.find("?>", i + 2)
            if end < 0:
                return "more"
            i = end + 2
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                return "more"
            i = end + 3
        elif text[i : i + 9].upper() == "<!DOCTYPE":
            return "doctype"
        elif n - i < 9 and "<!DOCTYPE".startswith(text[i:].upper()):
            return "more"
        else:
            return "root"


def _doctype_end(text: str) -> int | None:
    at = text.upper().find("<!DOCTYPE")
    internal = text.find("[", at)
    close = text.find(">", at)
    if close < 0:
        return None
    if internal < 0 or internal > close:
        return close
    end = text.find("]>", internal)
    return None if end < 0 else end
