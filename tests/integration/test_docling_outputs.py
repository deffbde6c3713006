"""What one docling pass publishes: figures, page markers and page choice, JSON, chunks.

pdf→md runs with the tiny layout models of ``tests.fixtures.docling_artifacts``:
the picture variant (every region a picture) for the figures, the default one
(every region a section header) for pages. Each test reads the files as a user
would: the Markdown's links, the PNGs, the JSON loaded back with docling-core.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from converters.base import (
    ConversionRequest,
    ConversionResult,
    Converter,
    ConvertOptions,
    Limits,
    WorkerContext,
)
from converters.docling_md import DoclingSimpleToMarkdown
from converters.dropfolder import DropFolder
from converters.errors import OptionsInvalid
from converters.pdf_md import PdfToMarkdown
from daemon.sidecar import companion_paths
from tests.fixtures.office_docs import make_text_pdf

pytestmark = pytest.mark.integration


def _ctx(models_dir: Path | None) -> WorkerContext:
    return WorkerContext(
        gpu_policy="cpu", models_dir=models_dir, limits=Limits(), device="cpu", runtime_kind="none"
    )


def _convert(
    conv: Converter, ctx: WorkerContext, src: Path, **options: Any
) -> tuple[ConversionResult, Path]:
    out = src.parent / "work" / f"{src.stem}.md"
    out.parent.mkdir(exist_ok=True)
    with DropFolder.open(src.parent) as drop_folder:
        request = ConversionRequest(
            src, out, ConvertOptions(**options), drop_folder, companion_paths(out)
        )
        result = conv.convert(request, ctx)
    return result, out


@pytest.fixture(scope="module")
def picture_route(docling_picture_artifacts: Path) -> tuple[PdfToMarkdown, WorkerContext]:
    conv = PdfToMarkdown()
    return conv, _ctx(docling_picture_artifacts)


@pytest.fixture(scope="module")
def header_route(docling_artifacts: Path) -> tuple[PdfToMarkdown, WorkerContext]:
    conv = PdfToMarkdown()
    return conv, _ctx(docling_artifacts)


def test_pdf_figures_are_png_files_the_markdown_links(
    picture_route: tuple[PdfToMarkdown, WorkerContext], tmp_path: Path
) -> None:
    from PIL import Image

    conv, ctx = picture_route
    src = make_text_pdf(tmp_path / "report.pdf", pages=3)
    result, out = _convert(conv, ctx, src, also=("json", "chunks"))
    images = out.with_name("report.images")
    pngs = sorted(p.name for p in images.iterdir())
    assert pngs == ["figure-001.png", "figure-002.png", "figure-003.png"]  # one a page
    for name in pngs:
        with Image.open(images / name) as picture:
            assert picture.format == "PNG" and picture.width > 10
    text = out.read_text()
    assert [f"](report.images/{name})" in text for name in pngs] == [True] * 3
    assert result.pages_converted == [1, 2, 3]

    from docling_core.types.doc.document import DoclingDocument

    document = DoclingDocument.load_from_json(out.with_name("report.docling.json"))
    assert sorted(document.pages) == [1, 2, 3] and len(document.pictures) == 3
    chunks = [json.loads(line) for line in out.with_name("report.chunks.jsonl").open()]
    assert chunks and all(chunk["pages"] and chunk["boxes"] for chunk in chunks)
    assert {page for chunk in chunks for page in chunk["pages"]} == {1, 2, 3}


def test_pdf_figure_limits_and_embedded_mode(
    picture_route: tuple[PdfToMarkdown, WorkerContext], tmp_path: Path
) -> None:
    conv, ctx = picture_route
    src = make_text_pdf(tmp_path / "report.pdf", pages=2)
    result, out = _convert(conv, ctx, src, images="embedded", max_images=1)
    text = out.read_text()
    assert text.count("](data:image/png;base64,") == 1
    assert text.count("<!-- image -->") == 1  # the second picture, over max_images
    assert "images_limited" in result.warnings
    assert not out.with_name("report.images").exists()


def test_page_markers_and_pages_keep_exactly_the_chosen_pages(
    header_route: tuple[PdfToMarkdown, WorkerContext], tmp_path: Path
) -> None:
    conv, ctx = header_route
    src = make_text_pdf(tmp_path / "long.pdf", pages=4)
    result, out = _convert(conv, ctx, src, pages="2,4", page_markers=True, also=("json",))
    text = out.read_text()
    assert text.startswith("<!-- page 2 -->\n")
    assert "<!-- page 4 -->" in text and "<!-- page 3 -->" not in text
    assert "Page 2" in text and "Page 4" in text
    assert "Page 1" not in text and "Page 3" not in text
    assert result.pages_converted == [2, 4]
    document = json.loads(out.with_name("long.docling.json").read_text())
    assert sorted(document["pages"]) == ["2", "4"]
    assert {t["prov"][0]["page_no"] for t in document["texts"]} == {2, 4}

    with pytest.raises(OptionsInvalid, match="asks for page 9, the document has 4"):
        _convert(conv, ctx, src, pages="3-9")


def test_pages_that_do_not_parse_are_options_invalid() -> None:
    with pytest.raises(ValueError, match="not a page number"):
        ConvertOptions(pages="2-x")
    with pytest.raises(ValueError, match="counted from 1"):
        ConvertOptions(pages="5-2")
    assert ConvertOptions(pages="9, 2-5,3").page_ranges == [(2, 5), (9, 9)]


def test_docx_picture_is_referenced(tmp_path: Path) -> None:
    import docx
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(picture, format="PNG")
    picture.seek(0)
    document = docx.Document()
    document.add_heading("With a picture", level=1)
    document.add_picture(picture)
    document.add_paragraph("After the picture.")
    src = tmp_path / "pic.docx"
    document.save(str(src))
    conv = DoclingSimpleToMarkdown("docx")
    _, out = _convert(conv, _ctx(None), src)
    assert "](pic.images/figure-001.png)" in out.read_text()
    with Image.open(out.with_name("pic.images") / "figure-001.png") as crop:
        assert crop.size == (64, 48)


def test_options_a_route_cannot_honour_are_named() -> None:
    from converters.base import Route
    from converters.outputs import ignored_options

    options = ConvertOptions(pages="2", also=("json",), pdf_variant="pdf/a-3b", images="embedded")
    assert ignored_options(Route("pdf", "md"), options) == ["pdf_variant"]
    assert ignored_options(Route("docx", "md"), options) == ["pages", "pdf_variant"]
    assert ignored_options(Route("md", "pdf"), options) == ["also", "images", "pages"]
    assert ignored_options(Route("md", "docx"), ConvertOptions()) == []  # defaults never warn
