"""md→pdf and html→pdf through WeasyPrint, called exactly as a worker calls them.

Covers the text and title that come through, the relative image, and the
confined URL fetcher: no network, nothing outside the drop folder, data: URL and
image-size limits, and the page cap.
"""

from __future__ import annotations

import base64
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.base import (
    ConversionRequest,
    ConversionResult,
    Converter,
    ConvertOptions,
    Lane,
    Limits,
    Route,
    WorkerContext,
)
from converters.dropfolder import DropFolder as PinnedFolder
from converters.errors import OptionsInvalid, TooManyPages, UnsupportedContent
from converters.html_pdf import HtmlToPdf
from converters.md_pdf import MarkdownToPdf
from tests.fixtures.web_docs import (
    CODE_LINE,
    HTML_HEADING,
    HTML_PARAGRAPH,
    HTML_TABLE_CELL,
    HTML_TITLE,
    MD_HEADING,
    MD_LIST_ITEM,
    MD_PARAGRAPH,
    MD_TABLE_CELL,
    MD_TITLE,
    DropFolder,
    make_invalid_utf8_md,
    make_markdown,
    make_png,
    make_png_header_only,
)

pytestmark = pytest.mark.integration

SECRET_MARK = "LEAKED-SECRET-7731"
INSIDE_MARK = "INSIDE-STYLE-4410"


def _ctx(limits: Limits | None = None) -> WorkerContext:
    return WorkerContext(
        gpu_policy="cpu",
        models_dir=None,
        limits=limits or Limits(),
        device="cpu",
        runtime_kind="none",
    )


def _convert(
    conv: Converter,
    source: Path,
    root: Path,
    out: Path,
    *,
    limits: Limits | None = None,
    options: ConvertOptions | None = None,
) -> ConversionResult:
    ctx = _ctx(limits)
    assert conv.problems(ctx) == []
    conv.warm(ctx)
    with PinnedFolder.open(root) as folder:
        return conv.convert(
            ConversionRequest(source, out, options or ConvertOptions(), folder), ctx
        )


def _pdf_text(path: Path) -> str:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return "\n".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def _pdf_title(path: Path) -> str:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return str(document.get_metadata_dict().get("Title", ""))
    finally:
        document.close()


def _pdf_image_count(path: Path) -> int:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    document = pdfium.PdfDocument(str(path))
    try:
        return sum(
            len(list(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=5)))
            for page in document
        )
    finally:
        document.close()


# --- an audit hook that sees every file Python opens ------------------------

_OPENED: list[str] = []
_RECORDING = threading.Event()


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _RECORDING.is_set() and event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    _OPENED.clear()
    _RECORDING.set()
    try:
        yield _OPENED
    finally:
        _RECORDING.clear()


def _drop_html(tmp_path: Path, body: str, head: str = "") -> DropFolder:
    root = tmp_path / "drop"
    root.mkdir(exist_ok=True)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    document = state / "job.html"
    document.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>t</title>{head}</head>"
        f"<body><h1>Probe</h1>{body}</body></html>",
        encoding="utf-8",
    )
    return DropFolder(root=root, document=document)


# --- routes -----------------------------------------------------------------


def test_converters_declare_their_routes() -> None:
    assert (MarkdownToPdf().route, MarkdownToPdf().lane) == (Route("md", "pdf"), Lane.CPU)
    assert (HtmlToPdf().route, HtmlToPdf().lane) == (Route("html", "pdf"), Lane.CPU)
    assert MarkdownToPdf().name == "weasyprint"
    assert set(MarkdownToPdf().versions()) == {"pandoc", "weasyprint"}


def test_markdown_to_pdf_keeps_text_and_front_matter_title(tmp_path: Path) -> None:
    source = make_markdown(tmp_path / "field-report.md")
    out = tmp_path / "out.pdf"
    result = _convert(MarkdownToPdf(), source, tmp_path, out)

    assert out.read_bytes().startswith(b"%PDF-")
    text = _pdf_text(out)
    for words in (MD_TITLE, MD_HEADING, MD_PARAGRAPH, MD_LIST_ITEM, MD_TABLE_CELL, CODE_LINE):
        assert words in text
    assert "1 / 1" in text  # page number footer from print.css
    assert _pdf_title(out) == MD_TITLE
    assert result.pages == 1
    assert result.warnings == []


def test_markdown_title_falls_back_to_first_heading(tmp_path: Path) -> None:
    source = make_markdown(tmp_path / "notes.md", front_matter=False)
    out = tmp_path / "out.pdf"
    _convert(MarkdownToPdf(), source, tmp_path, out)

    assert _pdf_title(out) == MD_HEADING
    assert _pdf_text(out).count(MD_HEADING) == 1  # no extra title block


def test_markdown_title_falls_back_to_file_stem(tmp_path: Path) -> None:
    source = tmp_path / "meeting-minutes.md"
    source.write_text("Nothing but a paragraph here.\n", encoding="utf-8")
    out = tmp_path / "out.pdf"
    _convert(MarkdownToPdf(), source, tmp_path, out)

    assert _pdf_title(out) == "meeting-minutes"
    assert "Nothing but a paragraph here." in _pdf_text(out)


def test_markdown_invalid_utf8_is_refused(tmp_path: Path) -> None:
    source = make_invalid_utf8_md(tmp_path / "latin1.md")
    with pytest.raises(UnsupportedContent):
        _convert(MarkdownToPdf(), source, tmp_path, tmp_path / "out.pdf")


def test_markdown_profile_stylesheet_replaces_print_css(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    profile.mkdir()
    sheet = profile / "house.css"
    sheet.write_text(f"h1::before {{ content: '{INSIDE_MARK} ' }}", encoding="utf-8")
    source = make_markdown(tmp_path / "report.md")
    out = tmp_path / "out.pdf"
    _convert(MarkdownToPdf(), source, tmp_path, out, options=ConvertOptions(stylesheet=sheet))

    text = _pdf_text(out)
    assert INSIDE_MARK in text
    assert "1 / 1" not in text  # the default footer is gone with print.css

    with pytest.raises(OptionsInvalid):
        _convert(
            MarkdownToPdf(),
            source,
            tmp_path,
            tmp_path / "again.pdf",
            options=ConvertOptions(stylesheet=profile / "missing.css"),
        )


def test_html_to_pdf_keeps_text_title_and_relative_image(web_drop: DropFolder) -> None:
    out = web_drop.root.parent / "out.pdf"
    result = _convert(HtmlToPdf(), web_drop.document, web_drop.root, out)

    text = _pdf_text(out)
    for words in (HTML_HEADING, HTML_PARAGRAPH, HTML_TABLE_CELL):
        assert words in text
    assert _pdf_title(out) == HTML_TITLE
    assert _pdf_image_count(out) == 1  # images/figure.png resolved from the drop folder
    assert result.warnings == []


# --- the confined fetcher ---------------------------------------------------


def test_remote_urls_are_never_fetched(tmp_path: Path, web_server: tuple[str, list[str]]) -> None:
    base, hits = web_server
    drop = _drop_html(
        tmp_path,
        f"<img src='{base}/x.png'><object data='{base}/o.png'></object>"
        f"<div style=\"background: url('{base}/bg.png')\">bg</div>",
        head=f"<link rel='stylesheet' href='{base}/s.css'>"
        f"<style>@import url('{base}/i.css'); @font-face {{ font-family: Net; "
        f"src: url('{base}/f.woff') }} p {{ font-family: Net }}</style>",
    )
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf(), drop.document, drop.root, out)

    assert hits == []
    assert "FROM-THE-NETWORK" not in _pdf_text(out)
    assert "Probe" in _pdf_text(out)
    assert result.warnings == ["remote_resource_blocked"]


def test_markdown_remote_image_is_never_fetched(
    tmp_path: Path, web_server: tuple[str, list[str]]
) -> None:
    base, hits = web_server
    source = tmp_path / "remote.md"
    source.write_text(f"# Remote\n\n![chart]({base}/chart.png)\n", encoding="utf-8")
    out = tmp_path / "out.pdf"
    result = _convert(MarkdownToPdf(), source, tmp_path, out)

    assert hits == []
    assert result.warnings == ["remote_resource_blocked"]
    assert "Remote" in _pdf_text(out)


def test_files_outside_the_drop_folder_are_not_read(
    tmp_path: Path, opened_files: list[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    leak = outside / "leak.css"
    leak.write_text(f"body::after {{ content: '{SECRET_MARK}' }}", encoding="utf-8")
    drop = _drop_html(
        tmp_path,
        "<img src='file:///etc/passwd'><iframe src='file:///etc/passwd'></iframe>"
        "<object data='file:///etc/passwd'></object><embed src='file:///etc/passwd'>"
        "<svg width='20' height='20'><image href='file:///etc/passwd' width='9' height='9'/>"
        "<use href='file:///etc/passwd#x'/></svg>"
        "<a rel='attachment' href='file:///etc/passwd'>attached</a>"
        "<p>body text</p>",
        head="<link rel='stylesheet' href='file:///etc/passwd'>"
        "<link rel='attachment' href='file:///etc/passwd'>"
        "<link rel='stylesheet' href='../outside/leak.css'>"
        "<link rel='stylesheet' href='linked.css'>"
        "<link rel='stylesheet' href='inside.css'>"
        "<style>@import url('file:///etc/passwd');</style>",
    )
    (drop.root / "inside.css").write_text(
        f"h1::after {{ content: ' {INSIDE_MARK}' }}", encoding="utf-8"
    )
    (drop.root / "linked.css").symlink_to(leak)  # a link inside the folder pointing out
    out = tmp_path / "out.pdf"
    opened_files.clear()
    result = _convert(HtmlToPdf(), drop.document, drop.root, out)

    text = _pdf_text(out)
    assert INSIDE_MARK in text  # control: files in the drop folder are served
    assert SECRET_MARK not in text
    assert "root:" not in text
    assert "/etc/passwd" not in opened_files
    assert str(leak) not in opened_files
    assert "inside.css" in opened_files  # opened by name beneath the pinned folder
    assert result.warnings == ["local_resource_blocked"]


def test_data_urls_over_the_limit_are_refused(tmp_path: Path) -> None:
    import random

    from PIL import Image

    small = make_png(tmp_path / "small.png", (4, 4)).read_bytes()
    noise = Image.frombytes("RGB", (40, 40), random.Random(7).randbytes(40 * 40 * 3))
    noise.save(tmp_path / "big.png")
    big = (tmp_path / "big.png").read_bytes()
    assert len(small) < 500 < 3000 < len(big)

    def data_url(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    drop = _drop_html(tmp_path, f"<img src='{data_url(small)}'><img src='{data_url(big)}'>")
    out = tmp_path / "out.pdf"
    limits = Limits(max_data_url_bytes=2000)
    result = _convert(HtmlToPdf(), drop.document, drop.root, out, limits=limits)

    assert _pdf_image_count(out) == 1  # the small one only
    assert result.warnings == ["data_url_too_large"]


def test_images_over_the_pixel_limit_are_refused(tmp_path: Path) -> None:
    drop = _drop_html(tmp_path, "<img src='giant.png'><img src='small.png'>")
    # 30000 x 30000 claimed by a file of a few hundred bytes: never decoded
    make_png_header_only(drop.root / "giant.png", 30_000, 30_000)
    make_png(drop.root / "small.png", (20, 20))
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf(), drop.document, drop.root, out)

    assert _pdf_image_count(out) == 1
    assert result.warnings == ["image_too_large"]

    strict = Limits(max_pixels=100)
    result = _convert(HtmlToPdf(), drop.document, drop.root, tmp_path / "strict.pdf", limits=strict)
    assert _pdf_image_count(tmp_path / "strict.pdf") == 0
    assert result.warnings == ["image_too_large"]


def test_rendered_page_cap(tmp_path: Path) -> None:
    pages = "".join(f"<p style='break-after: page'>page {i}</p>" for i in range(3))
    drop = _drop_html(tmp_path, pages)
    out = tmp_path / "out.pdf"
    with pytest.raises(TooManyPages):
        _convert(HtmlToPdf(), drop.document, drop.root, out, limits=Limits(max_pages=2))
    assert not out.exists()

    result = _convert(HtmlToPdf(), drop.document, drop.root, out, limits=Limits(max_pages=3))
    assert result.pages == 3


# --- the pinned drop folder (issue 10, findings 1 and 7) ---------------------

SECRET_BYTES = b"PAYROLL-SECRET-9043 alice=120000"


def _pdf_attachments(path: Path) -> list[bytes]:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return [
            bytes(document.get_attachment(i).get_data())
            for i in range(document.count_attachments())
        ]
    finally:
        document.close()


def _leaked(out: Path) -> bool:
    """The secret anywhere: raw PDF bytes, attachments (decompressed), page text."""
    return (
        SECRET_BYTES in out.read_bytes()
        or any(SECRET_BYTES in data for data in _pdf_attachments(out))
        or SECRET_BYTES.decode() in _pdf_text(out)
    )


def _hostile_source(folder: Path, kind: str, secret: Path) -> Path:
    """A document asking for the secret three ways, plus a control attachment."""
    refs = (
        f"<link rel='attachment' href='file://{secret}'>"
        "<link rel='attachment' href='file:///etc/passwd'>"
        "<link rel='attachment' href='sub/secret.txt'>"
        "<link rel='attachment' href='notes.txt'>"
    )
    if kind == "html":
        source = folder / "evil.html"
        source.write_text(
            f"<!doctype html><html><head><title>t</title>{refs}</head>"
            "<body><h1>Probe</h1></body></html>",
            encoding="utf-8",
        )
    else:
        source = folder / "evil.md"
        source.write_text(f"# Probe\n\n{refs}\n", encoding="utf-8")
    return source


@pytest.mark.parametrize("kind", ["html", "md"])
def test_attachments_outside_or_through_links_are_not_embedded(tmp_path: Path, kind: str) -> None:
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    secret = secret_dir / "secret.txt"
    secret.write_bytes(SECRET_BYTES)
    folder = tmp_path / "inbox" / "to-pdf" / "x.tmp"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_bytes(b"CONTROL-ATTACHMENT-1207")
    (folder / "sub").symlink_to(secret_dir)  # a folder that is a link, inside the drop
    source = _hostile_source(tmp_path, kind, secret)
    conv: Converter = HtmlToPdf() if kind == "html" else MarkdownToPdf()
    out = tmp_path / "out.pdf"
    result = _convert(conv, source, folder, out)

    assert not _leaked(out)
    assert b"root:x:0:0" not in out.read_bytes()
    assert not any(b"root:" in data for data in _pdf_attachments(out))
    assert _pdf_attachments(out) == [b"CONTROL-ATTACHMENT-1207"]  # the method can see one
    assert result.warnings == ["local_resource_blocked"]


@pytest.mark.parametrize("kind", ["html", "md"])
def test_a_folder_swapped_for_a_symlink_after_the_claim_leaks_nothing(
    tmp_path: Path, kind: str
) -> None:
    """``rmdir x.tmp && ln -s / x.tmp`` (and a rename) after the folder was pinned."""
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_bytes(SECRET_BYTES)
    folder = tmp_path / "x.tmp"
    folder.mkdir()
    source = _hostile_source(tmp_path, kind, secret_dir / "secret.txt")
    source.write_text(source.read_text().replace("sub/secret.txt", "secret.txt"))
    ctx = _ctx()
    conv: Converter = HtmlToPdf() if kind == "html" else MarkdownToPdf()
    conv.warm(ctx)
    out = tmp_path / "out.pdf"
    with PinnedFolder.open(folder) as pinned:
        folder.rmdir()
        folder.symlink_to(secret_dir)  # the old path now names the secret's folder
        result = conv.convert(ConversionRequest(source, out, ConvertOptions(), pinned), ctx)

    assert not _leaked(out)
    assert _pdf_attachments(out) == []
    assert result.warnings == ["local_resource_blocked", "resource_missing"]


@pytest.mark.parametrize("kind", ["html", "md"])
def test_hard_linked_resources_are_refused(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret.css"
    secret.write_bytes(b"h1::after { content: '" + SECRET_BYTES + b"' }")
    folder = tmp_path / "drop"
    folder.mkdir()
    os.link(secret, folder / "sec.css")
    refs = "<link rel='attachment' href='sec.css'><link rel='stylesheet' href='sec.css'>"
    if kind == "html":
        source = tmp_path / "page.html"
        source.write_text(f"<!doctype html><head>{refs}</head><h1>Probe</h1>", encoding="utf-8")
    else:
        source = tmp_path / "page.md"
        source.write_text(f"# Probe\n\n{refs}\n", encoding="utf-8")
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf() if kind == "html" else MarkdownToPdf(), source, folder, out)

    assert not _leaked(out)
    assert _pdf_attachments(out) == []
    assert "Probe" in _pdf_text(out)
    assert result.warnings == ["local_resource_blocked"]


@pytest.mark.parametrize("kind", ["html", "md"])
def test_pictures_beside_and_below_load_and_missing_ones_are_named(
    tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "drop"
    (folder / "images").mkdir(parents=True)
    make_png(folder / "beside.png", (30, 20))
    make_png(folder / "images" / "below.png", (20, 30))
    if kind == "html":
        source = tmp_path / "page.html"
        source.write_text(
            "<!doctype html><h1>Pictures</h1><img src='beside.png'>"
            "<img src='images/below.png'><img src='images/gone.png'>",
            encoding="utf-8",
        )
    else:
        source = tmp_path / "page.md"
        source.write_text(
            "# Pictures\n\n![a](beside.png)\n\n![b](images/below.png)\n\n![c](images/gone.png)\n",
            encoding="utf-8",
        )
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf() if kind == "html" else MarkdownToPdf(), source, folder, out)

    assert _pdf_image_count(out) == 2
    assert result.warnings == ["resource_missing"]


def test_stylesheet_urls_resolve_in_the_drop_folder(tmp_path: Path) -> None:
    """A profile stylesheet (a trusted copy) whose url()s name drop-folder files."""
    folder = tmp_path / "drop"
    folder.mkdir()
    make_png(folder / "logo.png", (20, 20))
    (folder / "more.css").write_text(f"h1::after {{ content: ' {INSIDE_MARK}' }}")
    sheet = tmp_path / "job" / "stylesheet.css"
    sheet.parent.mkdir()
    sheet.write_text(
        "@import url('more.css'); @import url('file:///etc/passwd');"
        "body { background: url('logo.png') no-repeat }",
        encoding="utf-8",
    )
    source = make_markdown(tmp_path / "styled.md")
    out = tmp_path / "out.pdf"
    result = _convert(
        MarkdownToPdf(), source, folder, out, options=ConvertOptions(stylesheet=sheet)
    )

    assert INSIDE_MARK in _pdf_text(out).replace("\ufffe", "-")  # pdfium: a soft hyphen
    assert _pdf_image_count(out) == 1
    assert result.warnings == ["local_resource_blocked"]


# --- garbage is not success (finding 12) ---------------------------------------


def test_legacy_charset_html_renders_the_right_characters(tmp_path: Path) -> None:
    source = tmp_path / "old.html"
    source.write_bytes(
        "<html><head><meta charset='windows-1252'><title>t</title></head>"
        "<body><p>Café crème \u2013 naïve</p></body></html>".encode("cp1252")
    )
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf(), source, tmp_path, out)
    assert "Café crème \u2013 naïve" in _pdf_text(out)
    assert result.warnings == []


def test_an_html_page_without_anything_to_show_is_flagged(tmp_path: Path) -> None:
    source = tmp_path / "blank.html"
    source.write_text("<!doctype html><html><head><title>x</title></head><body> </body></html>")
    out = tmp_path / "out.pdf"
    result = _convert(HtmlToPdf(), source, tmp_path, out)
    assert out.read_bytes().startswith(b"%PDF-")
    assert result.warnings == ["empty_output"]


@pytest.mark.parametrize("variant", ["pdf/a-3b", "pdf/a-2b"])
def test_pdf_variant_is_declared_in_the_output_metadata(tmp_path: Path, variant: str) -> None:
    """PDF/A: the XMP metadata names the part and conformance (not externally validated)."""
    source = tmp_path / "invoice.md"
    source.write_text("# Invoice 42\n\nTotal: 10 EUR.\n")
    out = tmp_path / "invoice.pdf"
    result = _convert(
        MarkdownToPdf(), source, tmp_path, out, options=ConvertOptions(pdf_variant=variant)
    )
    assert result.pdf_variant == variant
    part, conformance = variant.removeprefix("pdf/a-")[0], variant[-1].upper()
    xmp = _xmp(out.read_bytes())
    assert f'pdfaid:part="{part}"'.encode() in xmp
    assert f'pdfaid:conformance="{conformance}"'.encode() in xmp
    assert "Invoice 42" in _pdf_text(out)


def _xmp(pdf: bytes) -> bytes:
    """The XMP metadata packet of a PDF (WeasyPrint compresses its streams)."""
    import re
    import zlib

    for match in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            data = match.group(1)
        if b"<x:xmpmeta" in data:
            return data
    raise AssertionError("the PDF has no XMP metadata")
