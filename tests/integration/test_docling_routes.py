"""The docling routes, run exactly as a worker runs them: problems → warm → convert.

pdf→md uses the tiny layout model from ``tests.fixtures.docling_artifacts``
(every region is a section header) and RapidOCR's real ONNX models, on CPU.
"""

from __future__ import annotations

import os
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
from converters.errors import (
    ConverterFailed,
    CorruptInput,
    DependencyMissing,
    EncryptedInput,
    GpuUnavailable,
    ModelsMissing,
    TooManyPages,
    UnsupportedContent,
)
from converters.markdown import normalize_markdown
from converters.models import (
    LAYOUT,
    RAPIDOCR,
    RAPIDOCR_FILES,
    TABLEFORMER_ACCURATE,
    TABLEFORMER_FAST,
    check_models,
    fetch_models,
    required_artifacts,
)
from converters.pdf_md import PdfToMarkdown
from tests.fixtures.office_docs import (
    DOCX_HEADING,
    DOCX_LIST_ITEMS,
    DOCX_TABLE,
    DOCX_TITLE,
    HTML_HEADING,
    HTML_PARAGRAPH,
    PPTX_BODY,
    PPTX_TITLE,
    SCANNED_WORDS,
    TEXT_PDF_LINES,
    make_scanned_pdf,
    make_text_pdf,
)

pytestmark = pytest.mark.integration


def _ctx(models_dir: Path | None, *, device: Any = "cpu", max_pages: int = 2000) -> WorkerContext:
    return WorkerContext(
        gpu_policy="cpu" if device == "cpu" else "required",
        models_dir=models_dir,
        limits=Limits(max_pages=max_pages),
        device=device,
        runtime_kind="none" if device == "cpu" else "cuda",
    )


def _convert(
    conv: Converter, ctx: WorkerContext, src: Path, **options: Any
) -> tuple[ConversionResult, str]:
    out = src.with_suffix(".out.md")
    with DropFolder.open(src.parent) as drop_folder:
        request = ConversionRequest(
            input_path=src,
            output_path=out,
            options=ConvertOptions(**options),
            drop_folder=drop_folder,
        )
        result = conv.convert(request, ctx)
    return result, out.read_bytes().decode("utf-8")


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def pdf_route(docling_artifacts: Path) -> tuple[PdfToMarkdown, WorkerContext]:
    conv = PdfToMarkdown()
    ctx = _ctx(docling_artifacts)
    assert conv.problems(ctx) == []
    conv.warm(ctx)
    return conv, ctx


# --- pdf → md -------------------------------------------------------------


def test_pdf_to_markdown_has_headers_and_the_text(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], text_pdf: Path
) -> None:
    conv, ctx = pdf_route
    result, md = _convert(conv, ctx, text_pdf, ocr="off")
    assert any(line.startswith("## ") for line in md.splitlines())
    for line in TEXT_PDF_LINES:
        assert line in _words(md)
    assert result.pages == 1
    assert result.device == "cpu"
    assert "table_model_missing" in result.warnings  # the tiny artifacts have no TableFormer
    assert "ocr_applied" not in result.warnings
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_pdf_pages_are_counted_and_limited(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], tmp_path: Path
) -> None:
    conv, ctx = pdf_route
    three = make_text_pdf(tmp_path / "three.pdf", pages=3)
    result, md = _convert(conv, ctx, three, ocr="off")
    assert result.pages == 3
    assert "Page 3" in _words(md)
    with pytest.raises(TooManyPages) as err:
        _convert(conv, _ctx(ctx.models_dir, max_pages=2), three, ocr="off")
    assert "3 pages" in err.value.message


def test_ocr_force_reads_the_scanned_words(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], scanned_pdf: Path
) -> None:
    conv, ctx = pdf_route
    result, md = _convert(conv, ctx, scanned_pdf, ocr="force")
    assert "INVOICE" in md.upper()
    assert sum(word in md.upper() for word in SCANNED_WORDS) >= 2
    assert "ocr_applied" not in result.warnings  # asked for, not decided


def test_ocr_auto_reruns_a_scan_with_ocr(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], scanned_pdf: Path
) -> None:
    conv, ctx = pdf_route
    result, md = _convert(conv, ctx, scanned_pdf, ocr="auto")
    assert "ocr_applied" in result.warnings
    assert "INVOICE" in md.upper()


def test_ocr_auto_keeps_a_good_text_layer(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], text_pdf: Path
) -> None:
    conv, ctx = pdf_route
    result, md = _convert(conv, ctx, text_pdf, ocr="auto")
    assert "ocr_applied" not in result.warnings
    assert TEXT_PDF_LINES[1] in _words(md)
    # A threshold above the page's text size makes auto OCR the page.
    result, _ = _convert(conv, ctx, text_pdf, ocr="auto", auto_ocr_min_chars_per_page=10_000)
    assert "ocr_applied" in result.warnings


def test_ocr_off_on_a_scan_is_empty_and_says_so(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], scanned_pdf: Path
) -> None:
    conv, ctx = pdf_route
    result, md = _convert(conv, ctx, scanned_pdf, ocr="off")
    assert "INVOICE" not in md.upper()
    assert "empty_output" in result.warnings


def test_normalisation_can_be_switched_off(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], text_pdf: Path
) -> None:
    conv, ctx = pdf_route
    _, normalised = _convert(conv, ctx, text_pdf, ocr="off")
    _, raw = _convert(conv, ctx, text_pdf, ocr="off", normalize_markdown=False)
    assert normalize_markdown(raw) == normalised


def test_missing_layout_model_is_models_missing(tmp_path: Path, text_pdf: Path) -> None:
    conv = PdfToMarkdown()
    ctx = _ctx(tmp_path / "empty-models")
    problems = conv.problems(ctx)
    assert [p.code for p in problems] == ["models_missing"]
    assert LAYOUT.folder in problems[0].message
    assert [p.code for p in conv.problems(_ctx(None))] == ["models_missing"]
    with pytest.raises(ModelsMissing) as err:
        _convert(conv, ctx, text_pdf, ocr="off")
    assert LAYOUT.folder in err.value.message
    with pytest.raises(ModelsMissing):
        conv.warm(ctx)
    with pytest.raises(ModelsMissing):
        _convert(conv, _ctx(None), text_pdf, ocr="off")


def test_missing_ocr_models_fail_only_when_ocr_is_needed(
    docling_artifacts: Path, tmp_path: Path, text_pdf: Path, scanned_pdf: Path
) -> None:
    models = tmp_path / "layout-only"
    models.mkdir()
    (models / LAYOUT.folder).symlink_to(docling_artifacts / LAYOUT.folder)
    conv = PdfToMarkdown()
    ctx = _ctx(models)
    assert conv.problems(ctx) == []
    with pytest.raises(ModelsMissing) as err:
        _convert(conv, ctx, text_pdf, ocr="force")
    assert RAPIDOCR.folder in err.value.message
    with pytest.raises(ModelsMissing):
        _convert(conv, ctx, scanned_pdf, ocr="auto")
    result, md = _convert(conv, ctx, text_pdf, ocr="auto")
    assert TEXT_PDF_LINES[2] in _words(md)
    assert "ocr_applied" not in result.warnings


def test_broken_and_encrypted_pdfs(
    pdf_route: tuple[PdfToMarkdown, WorkerContext], tmp_path: Path
) -> None:
    from reportlab.lib import pdfencrypt
    from reportlab.pdfgen import canvas

    conv, ctx = pdf_route
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(CorruptInput):
        _convert(conv, ctx, broken, ocr="off")

    locked = tmp_path / "locked.pdf"
    pdf = canvas.Canvas(str(locked), encrypt=pdfencrypt.StandardEncryption("secret"))
    pdf.drawString(72, 720, "secret text")
    pdf.showPage()
    pdf.save()
    with pytest.raises(EncryptedInput):
        _convert(conv, ctx, locked, ocr="off")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@pytest.mark.skipif(_cuda_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_gpu_is_gpu_unavailable(
    docling_artifacts: Path, text_pdf: Path
) -> None:
    conv = PdfToMarkdown()
    ctx = _ctx(docling_artifacts, device="cuda")
    with pytest.raises(GpuUnavailable):
        conv.warm(ctx)
    with pytest.raises(GpuUnavailable):
        _convert(conv, ctx, text_pdf, ocr="off")


@pytest.mark.skipif(not _cuda_available(), reason="needs a GPU")
def test_cuda_runs_on_the_gpu(docling_artifacts: Path, text_pdf: Path, scanned_pdf: Path) -> None:
    conv = PdfToMarkdown()
    ctx = _ctx(docling_artifacts, device="cuda")
    conv.warm(ctx)
    result, md = _convert(conv, ctx, text_pdf, ocr="off")
    assert result.device == "cuda"
    assert TEXT_PDF_LINES[1] in _words(md)
    result, md = _convert(conv, ctx, scanned_pdf, ocr="auto")
    assert "INVOICE" in md.upper()


# --- the artifacts catalogue ------------------------------------------------


def test_catalogue_matches_what_docling_resolves() -> None:
    from docling.datamodel.pipeline_options import LayoutObjectDetectionOptions, RapidOcrOptions
    from docling.models.stages.ocr import rapid_ocr_model as rom
    from docling.models.stages.table_structure.table_structure_model import (
        TableStructureModel,
    )

    layout_repo = LayoutObjectDetectionOptions().model_spec.repo_id
    assert layout_repo.replace("/", "--") == LAYOUT.folder

    tf_root = f"{TableStructureModel._model_repo_folder}/{TableStructureModel._model_path}"
    assert f"{tf_root}/fast" == TABLEFORMER_FAST.folder
    assert f"{tf_root}/accurate" == TABLEFORMER_ACCURATE.folder

    options = RapidOcrOptions(backend="onnxruntime")
    code = rom._RAPIDOCR_DEFAULT_LANGUAGE
    root = Path("/artifacts") / RAPIDOCR.folder
    artifacts = rom._rapidocr_artifacts(
        root,
        rom._backend_to_engine_type(options.backend),
        rom._ppocr_version_for_code(code, options.backend),
        code,
        model_size=options.model_size,
    )
    resolved = {p.name for a in artifacts.values() for p in a.files}
    assert resolved == set(RAPIDOCR_FILES)
    assert RAPIDOCR.folder == rom.RapidOcrModel._model_repo_folder


def test_check_models_reports_presence(docling_artifacts: Path, tmp_path: Path) -> None:
    report = check_models(docling_artifacts)
    assert report.routes == {"pdf->md": True}
    assert report.status("layout").present
    assert report.status("rapidocr").present
    assert not report.status("tableformer_fast").present
    assert any("MISSING" in line and TABLEFORMER_FAST.folder in line for line in report.lines())

    empty = check_models(tmp_path)
    assert empty.routes == {"pdf->md": False}
    assert not empty.ready
    assert not check_models(None).ready
    assert LAYOUT.folder in required_artifacts()["pdf->md"]


def test_fetch_models_offline_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # This machine has no internet; make the hub say so at once instead of timing out.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises((DependencyMissing, ConverterFailed)) as err:
        fetch_models(tmp_path / "models")
    assert "models fetch" in err.value.message


# --- docx / pptx / xlsx / html → md ------------------------------------------


@pytest.fixture(scope="module")
def simple_ctx() -> WorkerContext:
    return _ctx(None)


def _simple(source: str, ctx: WorkerContext) -> DoclingSimpleToMarkdown:
    conv = DoclingSimpleToMarkdown(source)
    assert conv.problems(ctx) == []
    conv.warm(ctx)
    return conv


def test_docx_keeps_headings_lists_and_tables(simple_ctx: WorkerContext, docx_file: Path) -> None:
    result, md = _convert(_simple("docx", simple_ctx), simple_ctx, docx_file)
    lines = md.splitlines()
    assert f"# {DOCX_TITLE}" in lines
    assert any(line.startswith("#") and DOCX_HEADING in line for line in lines)
    for item in DOCX_LIST_ITEMS:
        assert f"- {item}" in lines
    table_rows = [line for line in lines if line.startswith("|")]
    assert len(table_rows) >= len(DOCX_TABLE)
    assert any("pdf to md" in row and "gpu" in row for row in table_rows)
    assert result.device == "cpu"
    assert md.endswith("\n") and "\n\n\n" not in md


def test_pptx_keeps_its_text(simple_ctx: WorkerContext, pptx_file: Path) -> None:
    result, md = _convert(_simple("pptx", simple_ctx), simple_ctx, pptx_file)
    assert PPTX_TITLE in md
    assert PPTX_BODY in md
    assert result.pages == 1


def test_xlsx_keeps_its_cells(simple_ctx: WorkerContext, xlsx_file: Path) -> None:
    _, md = _convert(_simple("xlsx", simple_ctx), simple_ctx, xlsx_file)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert any("alpha.pdf" in row and "3" in row for row in rows)
    assert any("beta.pdf" in row and "12" in row for row in rows)


def test_html_keeps_heading_and_paragraph(simple_ctx: WorkerContext, html_file: Path) -> None:
    _, md = _convert(_simple("html", simple_ctx), simple_ctx, html_file)
    assert f"# {HTML_HEADING}" in md.splitlines()
    assert HTML_PARAGRAPH in md
    assert "- first item" in md


def test_html_in_a_declared_legacy_charset_keeps_its_characters(
    simple_ctx: WorkerContext, tmp_path: Path
) -> None:
    source = tmp_path / "old.html"
    page = "<html><head><meta charset='windows-1252'></head><body><p>Café crème</p></body></html>"
    source.write_bytes(page.encode("cp1252"))
    _, md = _convert(_simple("html", simple_ctx), simple_ctx, source)
    assert "Café crème" in md


def test_corrupt_docx_is_corrupt_input(simple_ctx: WorkerContext, tmp_path: Path) -> None:
    bad = tmp_path / "bad.docx"
    bad.write_bytes(b"PK\x03\x04 definitely not a word document")
    with pytest.raises(CorruptInput):
        _convert(_simple("docx", simple_ctx), simple_ctx, bad)


def test_a_pdf_posing_as_docx_is_unsupported_content(
    simple_ctx: WorkerContext, text_pdf: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "fake.docx"
    fake.write_bytes(text_pdf.read_bytes())
    with pytest.raises(UnsupportedContent):
        _convert(_simple("docx", simple_ctx), simple_ctx, fake)


def test_one_warm_converter_serves_many_jobs(simple_ctx: WorkerContext, tmp_path: Path) -> None:
    conv = _simple("html", simple_ctx)
    for i in range(3):
        page = tmp_path / f"p{i}.html"
        page.write_text(f"<h1>Doc {i}</h1><p>body {i}</p>", encoding="utf-8")
        _, md = _convert(conv, simple_ctx, page)
        assert f"# Doc {i}" in md


def test_scanned_fixture_really_has_no_text_layer(tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    scan = make_scanned_pdf(tmp_path / "scan.pdf")
    pdf = pdfium.PdfDocument(str(scan))
    try:
        assert pdf[0].get_textpage().get_text_range().strip() == ""
    finally:
        pdf.close()
    assert os.path.getsize(scan) > 1000
