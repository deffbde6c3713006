"""Content sniffing and the pre-conversion input checks, on real generated files."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from converters.base import Limits
from converters.errors import (
    CorruptInput,
    EncryptedInput,
    InputTooLarge,
    NotRegularFile,
    SirError,
    TooManyPages,
    UnsupportedContent,
)
from converters.sniff import check_input, sniff_format
from tests.fixtures.web_docs import (
    make_billion_laughs_docx,
    make_docx,
    make_encrypted_pdf,
    make_gif,
    make_html_page,
    make_invalid_utf8_md,
    make_jpeg,
    make_markdown,
    make_ole_file,
    make_ooxml_stub,
    make_png,
    make_png_named_pdf,
    make_text_pdf,
    make_truncated_pdf,
    make_zip_bomb_docx,
)

pytestmark = pytest.mark.unit

LIMITS = Limits()


def _zip(dest: Path, members: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


CONTENT_TYPES = '<?xml version="1.0"?><Types/>'


# --- sniff_format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name", "expected"),
    [
        (make_text_pdf, "a.pdf", "pdf"),
        (make_png, "a.png", "png"),
        (make_jpeg, "a.jpg", "jpeg"),
        (make_gif, "a.gif", "gif"),
        (make_docx, "a.docx", "docx"),
        (lambda p: make_ooxml_stub(p, "pptx"), "a.pptx", "pptx"),
        (lambda p: make_ooxml_stub(p, "xlsx"), "a.xlsx", "xlsx"),
        (lambda p: _zip(p, {"notes.txt": "hello"}), "a.zip", "zip"),
        (make_markdown, "a.md", "md"),
        (lambda p: make_html_page(p.parent, p.name), "a.html", "html"),
        (make_ole_file, "a.doc", "ole"),
        (make_invalid_utf8_md, "a.md", None),
    ],
)
def test_sniff_format(
    tmp_path: Path, make: Callable[[Path], object], name: str, expected: str | None
) -> None:
    path = tmp_path / name
    make(path)
    assert sniff_format(path) == expected


@pytest.mark.parametrize(
    "prefix",
    [b"<!DOCTYPE html>", b"\xef\xbb\xbf  \n<!doctype HTML>", b"\n\t<HTML lang='en'>", b"<html>"],
)
def test_sniff_html_after_bom_and_whitespace(tmp_path: Path, prefix: bytes) -> None:
    path = tmp_path / "x.html"
    path.write_bytes(prefix + b"<body><p>hi</p></body></html>")
    assert sniff_format(path) == "html"


def test_sniff_html_fragment_is_text(tmp_path: Path) -> None:
    path = tmp_path / "x.html"
    path.write_bytes(b"<h1>Fragment</h1><p>no doctype</p>")
    assert sniff_format(path) == "md"


def test_sniff_pdf_header_after_junk(tmp_path: Path) -> None:
    path = tmp_path / "x.pdf"
    path.write_bytes(b"\x00" * 200 + make_text_pdf(tmp_path / "real.pdf").read_bytes())
    assert sniff_format(path) == "pdf"
    (tmp_path / "late.pdf").write_bytes(b"\x00" * 2000 + b"%PDF-1.7")
    assert sniff_format(tmp_path / "late.pdf") is None


def test_sniff_text_with_nul_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "x.md"
    path.write_bytes("# Title\n".encode("utf-16"))
    assert sniff_format(path) is None


def test_sniff_utf8_cut_at_head_boundary_is_text(tmp_path: Path) -> None:
    path = tmp_path / "x.md"
    path.write_bytes(b"a" * 8191 + "é and more".encode())  # é straddles the 8 KiB head
    assert sniff_format(path) == "md"


# --- check_input: good inputs pass ------------------------------------------


@pytest.mark.parametrize(
    ("make", "name", "source"),
    [
        (lambda p: make_text_pdf(p, pages=2), "a.pdf", "pdf"),
        (make_docx, "a.docx", "docx"),
        (lambda p: make_ooxml_stub(p, "pptx"), "a.pptx", "pptx"),
        (lambda p: make_ooxml_stub(p, "xlsx"), "a.xlsx", "xlsx"),
        (make_markdown, "a.md", "md"),
        (lambda p: make_html_page(p.parent, p.name), "a.html", "html"),
        (lambda p: p.write_bytes(b"<h1>fragment</h1>"), "b.html", "html"),
        (
            lambda p: p.write_bytes(b"<!doctype html><meta charset=latin1><p>caf\xe9</p>"),
            "c.html",
            "html",
        ),
    ],
)
def test_good_inputs_pass(
    tmp_path: Path, make: Callable[[Path], object], name: str, source: str
) -> None:
    path = tmp_path / name
    make(path)
    check_input(path, source, LIMITS)


# --- check_input: hostile inputs are refused with the right code -------------


@pytest.mark.parametrize(
    ("make", "name", "source", "error", "words"),
    [
        (make_png_named_pdf, "picture.pdf", "pdf", UnsupportedContent, "PNG image"),
        (make_encrypted_pdf, "locked.pdf", "pdf", EncryptedInput, "password"),
        (make_truncated_pdf, "cut.pdf", "pdf", CorruptInput, "not a readable PDF"),
        (make_zip_bomb_docx, "bomb.docx", "docx", InputTooLarge, "zip bomb"),
        (
            make_billion_laughs_docx,
            "laughs.docx",
            "docx",
            UnsupportedContent,
            "XML entity declarations are refused",
        ),
        (make_invalid_utf8_md, "latin1.md", "md", UnsupportedContent, "UTF-8"),
        (make_png, "image.docx", "docx", UnsupportedContent, "PNG image"),
        (make_markdown, "text.docx", "docx", CorruptInput, "not a zip"),
        (make_text_pdf, "report.md", "md", UnsupportedContent, "a PDF"),
        (make_jpeg, "photo.html", "html", UnsupportedContent, "JPEG"),
        (make_ole_file, "legacy.docx", "docx", UnsupportedContent, "legacy"),
        (
            lambda p: make_ole_file(p, encrypted_ooxml=True),
            "secret.xlsx",
            "xlsx",
            EncryptedInput,
            "password",
        ),
        (
            lambda p: make_ooxml_stub(p, "pptx"),
            "slides.docx",
            "docx",
            UnsupportedContent,
            "PowerPoint",
        ),
        (
            lambda p: _zip(p, {"a.txt": "x"}),
            "plain.docx",
            "docx",
            CorruptInput,
            "not an Office Open XML",
        ),
        (
            lambda p: p.write_bytes(b"PK\x03\x04garbage"),
            "broken.docx",
            "docx",
            CorruptInput,
            "damaged",
        ),
    ],
)
def test_hostile_inputs_are_refused(
    tmp_path: Path,
    make: Callable[[Path], object],
    name: str,
    source: str,
    error: type[SirError],
    words: str,
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(error) as caught:
        check_input(path, source, LIMITS)
    assert type(caught.value) is error
    assert words in caught.value.message


def test_empty_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.touch()
    with pytest.raises(CorruptInput, match="empty file"):
        check_input(path, "pdf", LIMITS)


def test_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile):
        check_input(tmp_path, "pdf", LIMITS)


def test_input_size_limit(tmp_path: Path) -> None:
    path = make_markdown(tmp_path / "a.md")
    with pytest.raises(InputTooLarge):
        check_input(path, "md", Limits(max_input_bytes=path.stat().st_size - 1))
    check_input(path, "md", Limits(max_input_bytes=path.stat().st_size))


def test_pdf_page_limit(tmp_path: Path) -> None:
    path = make_text_pdf(tmp_path / "a.pdf", pages=3)
    with pytest.raises(TooManyPages):
        check_input(path, "pdf", Limits(max_pages=2))
    check_input(path, "pdf", Limits(max_pages=3))


def test_total_unzipped_size_limit(tmp_path: Path) -> None:
    path = make_docx(tmp_path / "a.docx")
    with zipfile.ZipFile(path) as zf:
        total = sum(i.file_size for i in zf.infolist())
    with pytest.raises(InputTooLarge, match="zip bomb"):
        check_input(path, "docx", Limits(max_unzipped_bytes=total - 1))
    check_input(path, "docx", Limits(max_unzipped_bytes=total))


def test_central_directory_claiming_too_many_members(tmp_path: Path) -> None:
    path = make_ooxml_stub(tmp_path / "many.docx", "docx")
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 12] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    path.write_bytes(bytes(data))
    with pytest.raises(InputTooLarge, match="zip bomb"):
        check_input(path, "docx", LIMITS)


def _docx_with_document(tmp_path: Path, xml: str | bytes) -> Path:
    return _zip(
        tmp_path / "x.docx",
        {"[Content_Types].xml": CONTENT_TYPES, "word/document.xml": xml},
    )


def test_dtd_without_entities_is_refused(tmp_path: Path) -> None:
    path = _docx_with_document(
        tmp_path, '<?xml version="1.0"?><!DOCTYPE doc SYSTEM "http://example.com/x.dtd"><doc/>'
    )
    with pytest.raises(UnsupportedContent, match="DTD declarations are refused"):
        check_input(path, "docx", LIMITS)


def test_entity_declaration_hidden_after_a_long_comment(tmp_path: Path) -> None:
    padding = "<!--" + "x" * 100_000 + "-->"
    xml = f'<?xml version="1.0"?>{padding}<!DOCTYPE d [<!ENTITY e "boom">]><d>&e;</d>'
    with pytest.raises(UnsupportedContent, match="entity declarations"):
        check_input(_docx_with_document(tmp_path, xml), "docx", LIMITS)


def test_utf16_xml_with_entities_is_refused(tmp_path: Path) -> None:
    xml = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY e "x">]><d>&e;</d>'
    path = _docx_with_document(tmp_path, xml.encode("utf-16"))
    with pytest.raises(UnsupportedContent, match="entity declarations"):
        check_input(path, "docx", LIMITS)


def test_endless_xml_prolog_is_refused(tmp_path: Path) -> None:
    xml = '<?xml version="1.0"?>' + "<!-- a comment that never ends " + "y" * 400_000
    with pytest.raises(UnsupportedContent, match="prolog"):
        check_input(_docx_with_document(tmp_path, xml), "docx", LIMITS)


def test_entity_text_inside_the_document_body_is_fine(tmp_path: Path) -> None:
    xml = '<?xml version="1.0"?><!-- <!DOCTYPE in a comment --><d>&lt;!DOCTYPE x&gt;</d>'
    check_input(_docx_with_document(tmp_path, xml), "docx", LIMITS)


def test_bomb_is_judged_without_decompressing_it(tmp_path: Path) -> None:
    """The checker reads the central directory only: a member whose data is garbage
    (it would fail to inflate) is still refused as a bomb by its declared sizes."""
    path = make_zip_bomb_docx(tmp_path / "bomb.docx", member_bytes=4 * 1024 * 1024)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("word/document.xml")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[offset + 64 : offset + 2048] = b"\xff" * (2048 - 64)  # corrupt the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(InputTooLarge, match="zip bomb"):
        check_input(path, "docx", LIMITS)


# --- garbage is not success (issue 10, finding 12) --------------------------


@pytest.mark.parametrize(
    ("encoding", "prefix"),
    [
        ("utf-32", b""),  # with its BOM, FF FE 00 00: not UTF-16
        ("utf-32-le", b""),
        ("utf-32-be", b""),
        ("utf-32-be", b"\x00\x00\xfe\xff"),
    ],
)
def test_utf32_xml_parts_are_refused(tmp_path: Path, encoding: str, prefix: bytes) -> None:
    xml = '<?xml version="1.0" encoding="UTF-32"?><!DOCTYPE d [<!ENTITY e "x">]><d>&e;</d>'
    path = _docx_with_document(tmp_path, prefix + xml.encode(encoding))
    with pytest.raises(UnsupportedContent, match="encoding Office never writes"):
        check_input(path, "docx", LIMITS)


@pytest.mark.parametrize("label", ["UTF-7", "x-no-such-charset", "UTF-16"])
def test_xml_declaring_an_encoding_the_scan_cannot_read_is_refused(
    tmp_path: Path, label: str
) -> None:
    # UTF-7 hides "<!DOCTYPE" as "+ADw-!DOCTYPE" from a UTF-8 scan; a UTF-16
    # declaration on UTF-8 bytes is a lie the parser may believe.
    hidden = "+ADw-!DOCTYPE d +AFs-+ADw-!ENTITY e +ACI-x+ACI-+AD4-+AF0-+AD4-"
    xml = f'<?xml version="1.0" encoding="{label}"?>{hidden}<d/>'
    with pytest.raises(UnsupportedContent, match="encoding Office never writes"):
        check_input(_docx_with_document(tmp_path, xml), "docx", LIMITS)


def test_xml_in_an_ascii_compatible_legacy_encoding_is_judged(tmp_path: Path) -> None:
    ok = '<?xml version="1.0" encoding="ISO-8859-1"?><d>caf\xe9</d>'.encode("latin-1")
    check_input(_docx_with_document(tmp_path, ok), "docx", LIMITS)
    bad = '<?xml version="1.0" encoding="ISO-8859-1"?><!DOCTYPE d [<!ENTITY e "x">]><d/>'
    with pytest.raises(UnsupportedContent, match="entity declarations"):
        check_input(_docx_with_document(tmp_path, bad.encode("latin-1")), "docx", LIMITS)


def test_random_bytes_named_html_are_refused(tmp_path: Path) -> None:
    import random

    noise = random.Random(10).randbytes(100 * 1024).replace(b"\x00", b"\x01")
    path = tmp_path / "noise.html"
    path.write_bytes(noise)
    with pytest.raises(UnsupportedContent, match="neither UTF-8 nor declares"):
        check_input(path, "html", LIMITS)


@pytest.mark.parametrize(
    ("declaration", "body", "accepted"),
    [
        ("<meta charset='windows-1252'>", "Café \u2013 naïve".encode("cp1252"), True),
        (
            "<meta http-equiv='Content-Type' content='text/html; charset=Shift_JIS'>",
            "日本語".encode("shift_jis"),
            True,
        ),
        ("<meta charset='windows-1252'>", b"bad \x81\x8d\x90 bytes", False),  # undefined in cp1252
        ("<meta charset='klingon'>", "Café".encode("cp1252"), False),
        ("<meta charset='utf-7'>", "Café".encode("cp1252"), False),
        ("<meta charset='utf-8'>", "Café".encode("cp1252"), False),
        ("", "Café".encode("cp1252"), False),
    ],
)
def test_non_utf8_html_needs_a_charset_it_really_is_in(
    tmp_path: Path, declaration: str, body: bytes, accepted: bool
) -> None:
    path = tmp_path / "old.html"
    path.write_bytes(b"<html><head>" + declaration.encode() + b"</head><body>" + body)
    if accepted:
        check_input(path, "html", LIMITS)
    else:
        with pytest.raises(UnsupportedContent):
            check_input(path, "html", LIMITS)


def test_legacy_html_decodes_to_the_same_text_for_every_route(tmp_path: Path) -> None:
    from converters.text import read_html_input

    path = tmp_path / "old.html"
    path.write_bytes("<meta charset=windows-1252><p>Café</p>".encode("cp1252"))
    assert read_html_input(path) == "<meta charset=utf-8><p>Café</p>"


@pytest.mark.parametrize("source", ["md", "html"])
@pytest.mark.parametrize("content", [b" ", b"\n\n\t  \r\n", b"\xef\xbb\xbf  \n", b" " * 3_000_000])
def test_white_space_only_text_is_corrupt(tmp_path: Path, source: str, content: bytes) -> None:
    path = tmp_path / f"blank.{source}"
    path.write_bytes(content)
    with pytest.raises(CorruptInput, match="only white space"):
        check_input(path, source, LIMITS)
