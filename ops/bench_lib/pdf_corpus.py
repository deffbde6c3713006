"""``ops/pdf-corpus``: pdf → docx over real-world PDFs from several producers.

The corpus is kept outside the repository (``--cache``, by default
``~/.cache/sir-convert-a-lot/pdf-corpus``) and made from what this machine has:

* PDFs shipped inside installed packages (``/usr/share`` and the virtual
  environment): manuals made by pdfTeX, LuaTeX, dvipdfmx, Ghostscript…;
* PDFs made here by producers installable from Debian, each when present:
  Ghostscript (``ps2pdf`` of PostScript from groff and enscript), pdfTeX
  (``pdflatex``), LibreOffice (``soffice --convert-to pdf``), img2pdf and
  Pillow ("scanned": page images, no text layer); and by the Python libraries
  the project installs: WeasyPrint, ReportLab, PyMuPDF.

Every document goes through the real ``PdfToDocx`` converter in a process of
its own (a crash or a hang is an outcome, not the end of the run), and one
table row says what came out: outcome, error code and ``details.cause``,
warnings, pages, seconds. Heavy producers are never installed by the project
(CI does not need them); missing ones are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Document", "build", "main"]

DEFAULT_CACHE = Path.home() / ".cache" / "sir-convert-a-lot" / "pdf-corpus"
INSTALLED_ROOTS = ("/usr/share",)
MAX_INSTALLED_BYTES = 20 * 1024 * 1024


@dataclass
class Document:
    path: Path
    producer: str  # who made it (our label)
    origin: str  # "installed" or "made here"


@dataclass
class Row:
    document: str
    producer: str
    origin: str
    pdf_producer: str  # the PDF's own /Producer
    pages: int | None
    outcome: str  # ok, warnings, failed, crashed, timeout, skipped
    code: str | None
    cause: str | None
    warnings: list[str]
    seconds: float
    message: str


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> bool:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _installed(dest: Path, venv: Path) -> list[Document]:
    found: list[Document] = []
    roots = [Path(r) for r in INSTALLED_ROOTS] + [venv]
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in sorted(names):
                if not name.lower().endswith(".pdf"):
                    continue
                source = Path(dirpath) / name
                try:
                    if not 0 < source.stat().st_size <= MAX_INSTALLED_BYTES:
                        continue
                except OSError:
                    continue
                parts = source.relative_to(root).parts
                label = "-".join(parts[-3:])
                copy = dest / "installed" / label
                copy.parent.mkdir(parents=True, exist_ok=True)
                if not copy.exists():
                    shutil.copyfile(source, copy)
                found.append(Document(copy, "installed package", "installed"))
    return found


_LATEX = (
    r"""\documentclass{article}
\usepackage{amsmath}
\title{Field Survey Report}\author{Sir Convert-a-Lot}
\begin{document}\maketitle
\section{Findings}
Tide gauge readings\footnote{Measured at noon.} rose by 12\,\% over the season.
\begin{itemize}\item moisture \item harbour \item plot\end{itemize}
\begin{equation} E = \sum_{i=1}^{n} x_i^2 \end{equation}
\begin{tabular}{|l|r|}\hline Site & Reading \\ \hline North & 4.2 \\ South & 3.9 \\ \hline
\end{tabular}
\section{Method}
"""
    + "\n".join(f"Paragraph {i}: the quick survey of the harbour tide." for i in range(60))
    + r"""
\end{document}
"""
)


def _made(dest: Path) -> tuple[list[Document], list[str]]:
    """Documents made here, and the producers that are not installed."""
    from ops.bench_lib.corpus import _medium_docx, _medium_html

    made = dest / "made"
    made.mkdir(parents=True, exist_ok=True)
    docs: list[Document] = []
    missing: list[str] = []

    def add(path: Path, producer: str) -> None:
        if path.is_file() and path.stat().st_size > 0:
            docs.append(Document(path, producer, "made here"))
        else:
            missing.append(f"{producer} (failed to make {path.name})")

    html = made / "report.html"
    html.write_text(_medium_html(), encoding="utf-8")
    docx = made / "report.docx"
    _medium_docx(docx)
    # Ghostscript, from PostScript written by two other programs.
    if shutil.which("ps2pdf"):
        man = made / "groff-man.ps"
        if shutil.which("groff") and not man.exists():
            page = subprocess.run(
                ["sh", "-c", "zcat /usr/share/man/man1/ls.1.gz | groff -Tps -man"],
                capture_output=True,
                check=False,
            ).stdout
            man.write_bytes(page)
        text = made / "enscript.ps"
        if shutil.which("enscript") and not text.exists():
            _run(["enscript", "-q", "-2r", "-o", str(text), str(html)], made)
        for ps in (man, text):
            if ps.is_file() and ps.stat().st_size:
                pdf = ps.with_suffix(".gs.pdf")
                if not pdf.exists():
                    _run(["ps2pdf", str(ps), str(pdf)], made)
                add(pdf, f"Ghostscript ({ps.stem})")
    else:
        missing.append("Ghostscript (apt: ghostscript)")
    if shutil.which("pdflatex"):
        tex = made / "latex.tex"
        tex.write_text(_LATEX, encoding="utf-8")
        if not (made / "latex.pdf").exists():
            _run(["pdflatex", "-interaction=batchmode", tex.name], made)
        add(made / "latex.pdf", "pdfTeX")
    else:
        missing.append("pdfTeX (apt: texlive-latex-base)")
    soffice = shutil.which("soffice")
    if soffice:
        for source in (docx, html):
            target = made / "lo" / f"{source.stem}-{source.suffix[1:]}.pdf"
            if not target.exists():
                out = made / "lo" / source.suffix[1:]
                _run(
                    [
                        soffice,
                        "--headless",
                        "--convert-to",
                        "pdf",
                        "--outdir",
                        str(out),
                        str(source),
                    ],
                    made,
                    300,
                )
                produced = out / f"{source.stem}.pdf"
                if produced.exists():
                    produced.replace(target)
            add(target, f"LibreOffice ({source.suffix[1:]})")
    else:
        missing.append("LibreOffice (apt: libreoffice-writer-nogui)")
    weasy = made / "weasyprint.pdf"
    if not weasy.exists():
        from weasyprint import HTML

        HTML(filename=str(html)).write_pdf(str(weasy))
    add(weasy, "WeasyPrint")
    from tests.fixtures.office_docs import make_scanned_pdf, make_text_pdf

    add(make_text_pdf(made / "reportlab.pdf", pages=5), "ReportLab")
    add(make_scanned_pdf(made / "scanned-reportlab.pdf"), "scanned (ReportLab page image)")
    docs.extend(_images(made, missing))
    docs.append(Document(_pymupdf(made / "pymupdf.pdf"), "PyMuPDF", "made here"))
    return docs, missing


def _page_images(made: Path) -> list[Path]:
    import pypdfium2 as pdfium

    from tests.fixtures.office_docs import make_text_pdf

    source = make_text_pdf(made / "to-scan.pdf", pages=3)
    pdf = pdfium.PdfDocument(str(source))
    images: list[Path] = []
    try:
        for index in range(len(pdf)):
            path = made / f"scan-{index}.png"
            pdf[index].render(scale=150 / 72).to_pil().convert("L").save(path)
            images.append(path)
    finally:
        pdf.close()
    return images


def _images(made: Path, missing: list[str]) -> list[Document]:
    from PIL import Image

    images = _page_images(made)
    docs: list[Document] = []
    pillow = made / "scanned-pillow.pdf"
    first, *rest = [Image.open(p) for p in images]
    first.save(pillow, save_all=True, append_images=rest, resolution=150.0)
    docs.append(Document(pillow, "scanned (Pillow)", "made here"))
    if shutil.which("img2pdf"):
        target = made / "scanned-img2pdf.pdf"
        _run(["img2pdf", "-o", str(target), *map(str, images)], made)
        if target.is_file():
            docs.append(Document(target, "scanned (img2pdf)", "made here"))
    else:
        missing.append("img2pdf (apt: img2pdf)")
    return docs


def _pymupdf(dest: Path) -> Path:
    import pymupdf

    mupdf: Any = pymupdf
    document: Any = mupdf.open()
    for number in range(3):
        page = document.new_page()
        page.insert_text((72, 72), f"Section {number + 1}", fontsize=18)
        page.insert_textbox(
            mupdf.Rect(72, 100, 520, 700),
            " ".join(["The harbour survey recorded tides and moisture."] * 30),
            fontsize=11,
        )
    document.save(str(dest))
    document.close()
    return dest


def build(cache: Path) -> tuple[list[Document], list[str]]:
    venv = Path(sys.prefix)
    installed = _installed(cache, venv)
    made, missing = _made(cache)
    return installed + made, missing


def _convert_one(source: Path, output: Path) -> dict[str, Any]:
    """In the child: the real converter, as a worker calls it."""
    from converters.base import ConversionRequest, ConvertOptions, Limits, WorkerContext
    from converters.dropfolder import DropFolder
    from converters.errors import SirError
    from converters.pdf_docx import PdfToDocx

    ctx = WorkerContext(
        gpu_policy="cpu", models_dir=None, limits=Limits(), device="cpu", runtime_kind="none"
    )
    converter = PdfToDocx()
    converter.warm(ctx)
    started = time.monotonic()
    try:
        with DropFolder.open(source.parent) as drop:
            result = converter.convert(
                ConversionRequest(source, output, ConvertOptions(), drop), ctx
            )
    except SirError as exc:
        return {
            "ok": False,
            "code": exc.code,
            "cause": exc.details.get("cause"),
            "message": exc.message[:300],
            "seconds": time.monotonic() - started,
        }
    return {
        "ok": True,
        "warnings": [str(w) for w in result.warnings],
        "pages": result.pages,
        "seconds": time.monotonic() - started,
    }


def _metadata(path: Path) -> tuple[int | None, str]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception:
        return None, "?"
    try:
        return len(pdf), str(pdf.get_metadata_dict().get("Producer", ""))[:40]
    finally:
        pdf.close()


def measure(doc: Document, work: Path, timeout: float) -> Row:
    pages, producer = _metadata(doc.path)
    name = doc.path.name
    output = work / f"{doc.path.stem}.docx"
    started = time.monotonic()
    argv = [sys.executable, "-m", "ops.bench_lib.pdf_corpus", "--one", str(doc.path), str(output)]
    row = Row(name, doc.producer, doc.origin, producer, pages, "crashed", None, None, [], 0.0, "")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        row.outcome, row.seconds = "timeout", round(time.monotonic() - started, 2)
        return row
    row.seconds = round(time.monotonic() - started, 2)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        row.message = f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
        return row
    answer = json.loads(lines[-1])
    row.seconds = round(float(answer["seconds"]), 2)
    if answer["ok"]:
        row.warnings = answer["warnings"]
        row.pages = answer["pages"]
        row.outcome = "warnings" if row.warnings else "ok"
    else:
        row.outcome, row.code, row.cause = "failed", answer["code"], answer["cause"]
        row.message = answer["message"]
    return row


def _program(producer: str) -> str:
    """The producing program without its version: "pdfTeX-1.40.24" -> "pdftex"."""
    words = producer.replace("GPL ", "").replace("Aladdin ", "").split()
    return words[0].split("-")[0].lower() if words else "?"


def render(rows: list[Row], missing: list[str]) -> str:
    out = [
        "| document | producer | PDF /Producer | pages | outcome | seconds "
        "| code / cause / warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        why = " / ".join(x for x in (r.code, r.cause) if x) or ", ".join(r.warnings)
        out.append(
            f"| {r.document} | {r.producer} | {r.pdf_producer} | {r.pages} | {r.outcome} "
            f"| {r.seconds} | {why or r.message[:80]} |"
        )
    failed = [r for r in rows if r.outcome in ("failed", "crashed", "timeout")]
    # Distinct producing programs: the PDF's own /Producer, else our label.
    producers = {_program(r.pdf_producer or r.producer) for r in rows}
    share = 100 * len(failed) / len(rows) if rows else 0.0
    out.append("")
    out.append(
        f"{len(rows)} documents, {len(producers)} producers; "
        f"{sum(r.outcome == 'ok' for r in rows)} ok, "
        f"{sum(r.outcome == 'warnings' for r in rows)} with warnings, "
        f"{len(failed)} failed outright ({share:.1f} %)"
    )
    bare = [r for r in failed if r.code == "converter_failed" and not r.cause]
    out.append(f"converter_failed without a cause: {len(bare)}")
    if missing:
        out.append(f"producers not available here: {'; '.join(missing)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/pdf-corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per document")
    parser.add_argument("--max-pages", type=int, default=60, help="skip longer documents")
    parser.add_argument(
        "--origin", choices=("installed", "made"), help="only the installed or the made PDFs"
    )
    parser.add_argument(
        "--match", default="", help="only documents whose names contain one of these (a,b)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="rewritten after each document")
    parser.add_argument("--one", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_convert_one(args.one[0], args.one[1])), flush=True)
        return 0
    docs, missing = build(args.cache)
    if args.origin:
        docs = [d for d in docs if d.origin.startswith(args.origin)]
    if args.match:
        wanted = args.match.split(",")
        docs = [d for d in docs if any(w in d.path.name for w in wanted)]
    work = args.cache / "out"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for doc in docs:
        pages, _ = _metadata(doc.path)
        if pages is not None and pages > args.max_pages:
            missing.append(f"{doc.path.name} ({pages} pages > --max-pages)")
            continue
        row = measure(doc, work, args.timeout)
        print(
            f"{row.outcome:9} {row.seconds:7.2f}s {doc.producer:30} {row.document}", file=sys.stderr
        )
        rows.append(row)
        if args.json:
            report = {"rows": [asdict(r) for r in rows], "not_available": missing}
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(render(rows, missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
