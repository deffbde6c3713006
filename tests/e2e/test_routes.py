"""Every conversion route through the running daemon, with the sidecar facts a user checks.

One daemon (eval profile, tiny docling models, GPU ``preferred`` on a CPU-only
machine) gets every sample at once; each test then waits for its results.
Default targets are exercised at the inbox root, the other routes through
``to-pdf/`` and ``to-docx/``, and per-folder options files under ``to-md/``.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docx
import pytest

from tests.fixtures import office_docs, web_docs
from tests.fixtures.daemon import Daemon, sha

pytestmark = pytest.mark.e2e

LONG = os.environ.get("SIR_CONVERT_A_LOT_TEST_LONG") == "1"

OPTIONS_FILE = ".sir-convert-a-lot.toml"

# inbox-relative input -> (route, converter name, output relative to the outbox)
ROUTES: dict[str, tuple[str, str, str]] = {
    "report.pdf": ("pdf->md", "docling", "report.md"),
    "handbook.docx": ("docx->md", "docling", "handbook.md"),
    "roadmap.pptx": ("pptx->md", "docling", "roadmap.md"),
    "jobs.xlsx": ("xlsx->md", "docling", "jobs.md"),
    "notes.html": ("html->md", "docling", "notes.md"),
    "field.md": ("md->pdf", "weasyprint", "field.pdf"),
    "to-pdf/survey/page.html": ("html->pdf", "weasyprint", "to-pdf/survey/page.pdf"),
    "to-docx/field.md": ("md->docx", "pandoc", "to-docx/field.docx"),
    "to-docx/page.html": ("html->docx", "pandoc", "to-docx/page.docx"),
    "to-docx/report.pdf": ("pdf->docx", "pdf2docx", "to-docx/report.docx"),
    "to-md/handbook.docx": ("docx->md", "docling", "to-md/handbook.md"),
    "to-pdf/styled/memo.md": ("md->pdf", "weasyprint", "to-pdf/styled/memo.pdf"),
    "to-docx/styled/memo.md": ("md->docx", "pandoc", "to-docx/styled/memo.docx"),
}


def words(text: str) -> str:
    return " ".join(text.split())


def pdf_text(path: Path) -> str:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        pages = []
        for page in pdf:
            textpage = page.get_textpage()
            pages.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return words("\n".join(pages))
    finally:
        pdf.close()


def pdf_image_count(path: Path) -> int:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = pdfium.PdfDocument(str(path))
    try:
        count = 0
        for page in pdf:
            count += sum(1 for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]))
            page.close()
        return count
    finally:
        pdf.close()


@dataclass
class DocxContent:
    paragraphs: list[tuple[str, str]]  # (style name, text)
    cells: list[str] = field(default_factory=list)

    def styled(self, prefix: str) -> list[str]:
        return [text for style, text in self.paragraphs if style.startswith(prefix)]

    @property
    def text(self) -> str:
        return words(" ".join([t for _, t in self.paragraphs] + self.cells))


def read_docx(path: Path) -> DocxContent:
    document = docx.Document(str(path))
    paragraphs = [
        (p.style.name if p.style is not None else "", p.text) for p in document.paragraphs
    ]
    cells = [cell.text for table in document.tables for row in table.rows for cell in row.cells]
    return DocxContent(paragraphs, cells)


@dataclass
class Drop:
    """The running daemon and the pristine copy of every file dropped into it."""

    daemon: Daemon
    sources: dict[str, Path]

    def output(self, output_relative: str) -> Path:
        return self.daemon.outbox / output_relative


def _make(kind: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text_pdf":
        return office_docs.make_text_pdf(dest)
    if kind == "long_pdf":
        return office_docs.make_text_pdf(dest, pages=LONG_PAGES)
    if kind == "scan_pdf":
        return office_docs.make_scanned_pdf(dest)
    if kind == "docx":
        return office_docs.make_docx(dest)
    if kind == "pptx":
        return office_docs.make_pptx(dest)
    if kind == "xlsx":
        return office_docs.make_xlsx(dest)
    if kind == "html":
        return office_docs.make_html(dest)
    if kind == "md":
        return web_docs.make_markdown(dest)
    if kind == "html_page":
        return web_docs.make_html_page(dest.parent, dest.name)
    raise ValueError(kind)


# inbox-relative path -> generator
SAMPLES: dict[str, str] = {
    "report.pdf": "text_pdf",
    "handbook.docx": "docx",
    "roadmap.pptx": "pptx",
    "jobs.xlsx": "xlsx",
    "notes.html": "html",
    "field.md": "md",
    "to-pdf/survey/page.html": "html_page",
    "to-docx/field.md": "md",
    "to-docx/page.html": "html_page",
    "to-docx/report.pdf": "text_pdf",
    "to-md/handbook.docx": "docx",
    # per-folder options: files in sub/ inherit their parent's options file
    "to-md/raw/sub/handbook.docx": "docx",
    "to-md/raw/sub/scan.pdf": "scan_pdf",
    "to-md/ocr/deep/scan.pdf": "scan_pdf",
    "to-md/scan.pdf": "scan_pdf",
    "to-pdf/styled/memo.md": "md",
    "to-docx/styled/memo.md": "md",
}
LONG_PAGES = 40
if LONG:
    SAMPLES |= {"to-md/long.pdf": "long_pdf", "to-docx/long.pdf": "long_pdf"}
    ROUTES |= {
        "to-md/long.pdf": ("pdf->md", "docling", "to-md/long.md"),
        "to-docx/long.pdf": ("pdf->docx", "pdf2docx", "to-docx/long.docx"),
    }
OPTIONS = {
    "to-md/raw": '[options]\nnormalize_markdown = false\nocr = "off"\n',
    "to-md/ocr": '[options]\nocr = "force"\n',
    # paths are relative to the options file; hidden folders are never picked up
    "to-pdf/styled": '[options]\nstylesheet = ".styles/house.css"\n',
    "to-docx/styled": '[options]\nreference_docx = "../.templates/house.docx"\n',
}
HOUSE_MARK = "HOUSE-STYLE-MARK"
HOUSE_FONT = "Courier New"


def _make_house_files(inbox: Path) -> None:
    css = inbox / "to-pdf/styled/.styles/house.css"
    css.parent.mkdir(parents=True)
    css.write_text(f'h1::before {{ content: "{HOUSE_MARK} " }}\n')
    reference = docx.Document()
    reference.styles["Heading 1"].font.name = HOUSE_FONT
    template = inbox / "to-docx/.templates/house.docx"
    template.parent.mkdir(parents=True)
    reference.save(str(template))


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Drop]:
    base = tmp_path_factory.mktemp("routes")
    daemon = Daemon(base, models_dir=tiny_models_dir)
    daemon.start()
    staging = base / "src"
    sources: dict[str, Path] = {}
    for relative, kind in SAMPLES.items():
        sources[relative] = _make(kind, staging / relative)
    try:
        for folder, text in OPTIONS.items():
            (daemon.inbox / folder).mkdir(parents=True, exist_ok=True)
            (daemon.inbox / folder / OPTIONS_FILE).write_text(text)
        _make_house_files(daemon.inbox)
        # Assets first (they stay), then each document by an atomic rename of a copy.
        for relative, kind in SAMPLES.items():
            target = daemon.inbox / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "html_page":
                shutil.copytree(sources[relative].parent / "images", target.parent / "images")
        for relative, source in sources.items():
            target = daemon.inbox / relative
            tmp = daemon.root / ".state" / "tmp" / f"drop-{target.name}"
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        yield Drop(daemon, sources)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def check_sidecar(drop: Drop, relative: str) -> dict[str, Any]:
    route, converter, output_relative = ROUTES[relative]
    car = drop.daemon.sidecar(output_relative)
    assert car["status"] == "succeeded", car
    source, target = route.split("->")
    assert car["route"] == {"source": source, "target": target}
    assert car["converter"]["name"] == converter
    versions = car["converter"]["versions"]
    assert versions and all(v and v != "missing" for v in versions.values()), versions
    assert car["input"]["relative_path"] == relative
    assert car["input"]["sha256"] == sha(drop.sources[relative])
    output = drop.output(output_relative)
    assert car["output"]["path"] == output_relative
    assert car["output"]["sha256"] == sha(output)
    assert car["output"]["size_bytes"] == output.stat().st_size
    assert car["acceleration"]["device"] == "cpu"
    if car.get("reused_from"):  # the same bytes were converted the same way before
        assert car["timings"]["convert_seconds"] == 0
    else:
        assert car["timings"]["convert_seconds"] > 0
    # the original is archived unchanged under its mirrored path (just after the sidecar)
    archived = drop.daemon.wait_for(drop.daemon.archive / relative, timeout=30)
    assert sha(archived) == sha(drop.sources[relative])
    return car


def test_pdf_to_md_at_the_root(drop: Drop) -> None:
    car = check_sidecar(drop, "report.pdf")
    assert car["input"]["pages"] == 1
    assert car["acceleration"]["policy"] == "preferred"
    assert "gpu_unavailable_ran_on_cpu" in car["warnings"]
    assert "table_model_missing" in car["warnings"]  # the tiny models have no TableFormer
    md = drop.output("report.md").read_text(encoding="utf-8")
    assert any(line.startswith("## ") for line in md.splitlines())
    for line in office_docs.TEXT_PDF_LINES:
        assert line in words(md)


def test_office_and_html_to_md_at_the_root(drop: Drop) -> None:
    for relative in ("handbook.docx", "roadmap.pptx", "jobs.xlsx", "notes.html"):
        car = check_sidecar(drop, relative)
        assert car["warnings"] == [], (relative, car["warnings"])
        assert car["acceleration"]["runtime_kind"] == "none"

    md = drop.output("handbook.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert f"# {office_docs.DOCX_TITLE}" in lines
    assert f"## {office_docs.DOCX_HEADING}" in lines
    for item in office_docs.DOCX_LIST_ITEMS:
        assert f"- {item}" in lines
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == len(office_docs.DOCX_TABLE) + 1  # plus the delimiter row
    for row in office_docs.DOCX_TABLE:
        assert all(cell in words(md) for cell in row)
    # The table is its own block: a blank line separates it from the list above,
    # otherwise every Markdown reader folds it into the last list item.
    first = lines.index(table[0])
    assert lines[first - 1] == ""
    assert md.endswith("\n") and not md.endswith("\n\n")

    pptx_md = drop.output("roadmap.md").read_text(encoding="utf-8")
    assert f"# {office_docs.PPTX_TITLE}" in pptx_md.splitlines()
    assert office_docs.PPTX_BODY in pptx_md

    xlsx_md = drop.output("jobs.md").read_text(encoding="utf-8")
    for row in office_docs.XLSX_ROWS:
        line = next(x for x in xlsx_md.splitlines() if str(row[0]) in x)
        assert line.startswith("|") and str(row[1]) in line

    html_md = drop.output("notes.md").read_text(encoding="utf-8")
    assert f"# {office_docs.HTML_HEADING}" in html_md.splitlines()
    assert office_docs.HTML_PARAGRAPH in html_md
    assert "- first item" in html_md.splitlines()


def test_to_md_folder_gives_the_same_route(drop: Drop) -> None:
    check_sidecar(drop, "to-md/handbook.docx")
    assert drop.output("to-md/handbook.md").read_bytes() == drop.output("handbook.md").read_bytes()


def test_md_to_pdf_at_the_root(drop: Drop) -> None:
    car = check_sidecar(drop, "field.md")
    assert car["input"]["pages"] is None or car["input"]["pages"] == 1
    text = pdf_text(drop.output("field.pdf"))
    for expected in (
        web_docs.MD_HEADING,
        web_docs.MD_PARAGRAPH,
        web_docs.MD_LIST_ITEM,
        web_docs.MD_TABLE_CELL,
        "Westfield",
        web_docs.CODE_LINE,
    ):
        assert expected in text


def test_html_to_pdf_uses_the_image_beside_it(drop: Drop) -> None:
    car = check_sidecar(drop, "to-pdf/survey/page.html")
    assert car["warnings"] == []
    out = drop.output("to-pdf/survey/page.pdf")
    text = pdf_text(out)
    for expected in (web_docs.HTML_HEADING, web_docs.HTML_PARAGRAPH, web_docs.HTML_TABLE_CELL):
        assert expected in text
    assert pdf_image_count(out) >= 1
    # The image is an asset: never converted, never moved.
    image = drop.daemon.inbox / "to-pdf/survey" / web_docs.HTML_IMAGE_NAME
    assert image.is_file()
    assert not list(drop.daemon.failed.rglob("figure*"))
    assert not list(drop.daemon.outbox.rglob("figure*"))


def test_md_and_html_to_docx(drop: Drop) -> None:
    assert check_sidecar(drop, "to-docx/field.md")["warnings"] == []
    content = read_docx(drop.output("to-docx/field.docx"))
    assert web_docs.MD_HEADING in content.styled("Heading 1")
    assert web_docs.MD_PARAGRAPH in content.text
    items = [text for style, text in content.paragraphs if "List" in style or "Compact" in style]
    assert web_docs.MD_LIST_ITEM in items, content.paragraphs
    assert web_docs.MD_TABLE_CELL in content.cells
    assert "Westfield" in content.cells

    # The picture beside the page (images/, in the drop folder) is embedded, read
    # by the daemon through the pinned folder and handed to pandoc.
    assert check_sidecar(drop, "to-docx/page.html")["warnings"] == []
    with zipfile.ZipFile(drop.output("to-docx/page.docx")) as zf:
        assert [n for n in zf.namelist() if n.startswith("word/media/")]
    html = read_docx(drop.output("to-docx/page.docx"))
    assert web_docs.HTML_HEADING in html.styled("Heading 1")
    assert web_docs.HTML_PARAGRAPH in html.text
    assert web_docs.HTML_TABLE_CELL in html.cells


def test_pdf_to_docx_keeps_the_text(drop: Drop) -> None:
    car = check_sidecar(drop, "to-docx/report.pdf")
    assert car["input"]["pages"] == 1
    text = read_docx(drop.output("to-docx/report.docx")).text
    for line in office_docs.TEXT_PDF_LINES:
        assert line in text


def test_options_files_are_honoured_and_inherited(drop: Drop) -> None:
    daemon = drop.daemon
    # Default options (ocr = auto): the scan has no text layer, so it is OCR'd.
    auto = daemon.sidecar("to-md/scan.md")
    assert "ocr_applied" in auto["warnings"]
    auto_md = (daemon.outbox / "to-md/scan.md").read_text(encoding="utf-8").upper()
    assert office_docs.SCANNED_WORDS[0] in auto_md

    # to-md/ocr/ says ocr = "force"; to-md/ocr/deep/ inherits it.
    forced = daemon.sidecar("to-md/ocr/deep/scan.md")
    assert "ocr_applied" not in forced["warnings"]  # asked for, not decided
    forced_md = (daemon.outbox / "to-md/ocr/deep/scan.md").read_text(encoding="utf-8").upper()
    assert sum(word in forced_md for word in office_docs.SCANNED_WORDS) >= 2

    # to-md/raw/ says ocr = "off" and normalize_markdown = false; raw/sub/ inherits both.
    off = daemon.sidecar("to-md/raw/sub/scan.md")
    assert "empty_output" in off["warnings"]
    assert "ocr_applied" not in off["warnings"]
    off_md = (daemon.outbox / "to-md/raw/sub/scan.md").read_text(encoding="utf-8").upper()
    assert not any(word in off_md for word in office_docs.SCANNED_WORDS)

    daemon.sidecar("to-md/raw/sub/handbook.md")
    raw = (daemon.outbox / "to-md/raw/sub/handbook.md").read_text(encoding="utf-8")
    normalised = (daemon.outbox / "handbook.md").read_text(encoding="utf-8")
    assert raw != normalised
    assert not raw.endswith("\n")  # docling's own text, not normalised
    assert raw + "\n" == normalised
    # The options files themselves are never picked up.
    assert (daemon.inbox / "to-md/raw" / OPTIONS_FILE).is_file()
    assert not list(daemon.failed.rglob(f"{OPTIONS_FILE}*"))


def test_stylesheet_and_reference_docx_options(drop: Drop) -> None:
    daemon = drop.daemon
    check_sidecar(drop, "to-pdf/styled/memo.md")
    text = pdf_text(daemon.outbox / "to-pdf/styled/memo.pdf")
    assert f"{HOUSE_MARK} {web_docs.MD_HEADING}" in text
    assert "1 / 1" not in text  # the house stylesheet replaces print.css (and its footer)
    assert "1 / 1" in pdf_text(drop.output("field.pdf"))

    check_sidecar(drop, "to-docx/styled/memo.md")
    styled = docx.Document(str(daemon.outbox / "to-docx/styled/memo.docx"))
    assert styled.styles["Heading 1"].font.name == HOUSE_FONT
    plain = docx.Document(str(drop.output("to-docx/field.docx")))
    assert plain.styles["Heading 1"].font.name != HOUSE_FONT
    # the template and the stylesheet stay where they are, unconverted
    assert (daemon.inbox / "to-docx/.templates/house.docx").is_file()
    assert (daemon.inbox / "to-pdf/styled/.styles/house.css").is_file()


def test_nothing_failed_and_the_daemon_stays_ready(drop: Drop) -> None:
    for relative in SAMPLES:
        # every sample not in ROUTES was dropped under to-md/ (the options checks)
        output = ROUTES[relative][2] if relative in ROUTES else relative.rsplit(".", 1)[0] + ".md"
        assert drop.daemon.sidecar(output)["status"] == "succeeded"
        # the original is archived, then the job folder goes: both just after the sidecar
        drop.daemon.wait_for(drop.daemon.archive / relative, timeout=30)
    jobs = drop.daemon.root / ".state" / "jobs"
    deadline = time.monotonic() + 30
    while list(jobs.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(jobs.iterdir()) == []
    assert list(drop.daemon.failed.rglob("*.error.json")) == []
    status, body = drop.daemon.get("/readyz")
    assert status == 200 and body["ready"] is True


@pytest.mark.skipif(not LONG, reason="long mode only (SIR_CONVERT_A_LOT_TEST_LONG=1)")
def test_long_pdfs_keep_every_page(drop: Drop) -> None:
    car = check_sidecar(drop, "to-md/long.pdf")
    assert car["input"]["pages"] == LONG_PAGES
    md = drop.output("to-md/long.md").read_text(encoding="utf-8")
    assert f"Page {LONG_PAGES}" in words(md)
    car = check_sidecar(drop, "to-docx/long.pdf")
    assert car["input"]["pages"] == LONG_PAGES
    assert f"Page {LONG_PAGES}" in read_docx(drop.output("to-docx/long.docx")).text
