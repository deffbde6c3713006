"""``sir-convert-a-lot convert``: one-shot conversions through the daemon's own pipeline.

Each run is a real ``python -m daemon convert`` subprocess with a clean
environment (only the models folder and a revision among our variables), as a
user would type it: relative paths, several files, one target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docx
import pytest

from tests.fixtures import office_docs, web_docs
from tests.fixtures.daemon import REPO, sha

pytestmark = pytest.mark.e2e

RUN_TIMEOUT = 300


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def progress(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("[")]


def cli_env(tmp_path: Path, models_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_")}
    env.update(
        PYTHONPATH=str(REPO),
        SIR_CONVERT_A_LOT_MODELS_DIR=str(models_dir),
        SIR_CONVERT_A_LOT_SERVICE_REVISION="x",
        # the embedded profiles' data roots expand here; convert never uses them
        XDG_DATA_HOME=str(tmp_path / "xdg"),
    )
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def fingerprint(paths: list[Path]) -> dict[str, tuple[str, int]]:
    return {p.name: (sha(p), p.stat().st_mtime_ns) for p in paths}


def sidecar(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def check_result(out_dir: Path, source: Path, output_name: str, route: str) -> dict[str, Any]:
    output = out_dir / output_name
    car = sidecar(out_dir / f"{output_name}.meta.json")
    assert car["status"] == "succeeded", car
    assert f"{car['route']['source']}->{car['route']['target']}" == route
    assert car["input"]["name"] == source.name
    assert car["input"]["sha256"] == sha(source)
    assert car["output"]["sha256"] == sha(output)
    assert car["acceleration"]["device"] == "cpu"
    assert car["service"]["revision"] == "x"
    return car


def docx_text(path: Path) -> str:
    document = docx.Document(str(path))
    cells = [c.text for t in document.tables for r in t.rows for c in r.cells]
    return " ".join(" ".join([p.text for p in document.paragraphs] + cells).split())


def pdf_text(path: Path) -> str:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        return " ".join(" ".join(page.get_textpage().get_text_range() for page in pdf).split())
    finally:
        pdf.close()


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A work folder with the documents a user would convert, and an image beside the HTML."""
    work = tmp_path / "work"
    work.mkdir()
    web_docs.make_markdown(work / "a.md")
    web_docs.make_html_page(work, "b.html")
    office_docs.make_text_pdf(work / "c.pdf")
    web_docs.make_png_named_pdf(work / "bad.pdf")
    web_docs.make_png(work / "bad.md", (8, 8))  # a PNG named .md
    return work


def test_convert_several_files_to_docx(
    sources: Path, tmp_path: Path, tiny_models_dir: Path
) -> None:
    inputs = [sources / "a.md", sources / "b.html", sources / "c.pdf"]
    before = fingerprint(inputs)
    run = run_cli(
        ["convert", "a.md", "b.html", "c.pdf", "--to", "docx", "--output-dir", "OUT"],
        sources,
        cli_env(tmp_path, tiny_models_dir),
    )
    assert run.code == 0, run.stderr
    out = sources / "OUT"
    check_result(out, sources / "a.md", "a.docx", "md->docx")
    car = check_result(out, sources / "b.html", "b.docx", "html->docx")
    assert car["warnings"] == []  # its picture beside it is embedded
    with zipfile.ZipFile(out / "b.docx") as package:
        assert any(name.startswith("word/media/") for name in package.namelist())
    car = check_result(out, sources / "c.pdf", "c.docx", "pdf->docx")
    assert car["input"]["pages"] == 1
    assert web_docs.MD_HEADING in docx_text(out / "a.docx")
    assert web_docs.HTML_TABLE_CELL in docx_text(out / "b.docx")
    assert office_docs.TEXT_PDF_LINES[1] in docx_text(out / "c.docx")

    progress = run.progress()
    assert len(progress) == 3, run.stderr
    for index, (line, name) in enumerate(zip(progress, ("a.md", "b.html", "c.pdf"), strict=True)):
        assert line.startswith(f"[{index + 1}/3] {name} -> "), line
        assert "FAILED" not in line
    assert run.stdout == ""  # progress and logs go to stderr; stdout stays clean
    # only results and sidecars are left, no scratch data root
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{n}.docx{s}" for n in "abc" for s in ("", ".meta.json"))
    assert fingerprint(inputs) == before  # originals untouched


def test_convert_to_pdf_with_a_failing_file(
    sources: Path, tmp_path: Path, tiny_models_dir: Path
) -> None:
    inputs = [sources / "a.md", sources / "bad.md", sources / "b.html"]
    before = fingerprint(inputs)
    out = tmp_path / "pdfs"
    run = run_cli(
        ["convert", "a.md", "bad.md", "b.html", "--to", "pdf", "--output-dir", str(out)],
        sources,
        cli_env(tmp_path, tiny_models_dir),
    )
    # the worst outcome decides: unsupported_content is EX_DATAERR
    assert run.code == 65, run.stderr
    check_result(out, sources / "a.md", "a.pdf", "md->pdf")
    car = check_result(out, sources / "b.html", "b.pdf", "html->pdf")
    assert car["warnings"] == []  # the image beside it was allowed
    text = pdf_text(out / "a.pdf")
    assert web_docs.MD_HEADING in text and web_docs.MD_TABLE_CELL in text
    assert web_docs.HTML_HEADING in pdf_text(out / "b.pdf")

    error = sidecar(out / "bad.md.error.json")
    assert error["status"] == "failed"
    assert error["error"]["code"] == "unsupported_content"
    assert error["error"]["retryable"] is False
    assert error["input"]["sha256"] == sha(sources / "bad.md")
    assert not (out / "bad.pdf").exists()

    progress = run.progress()
    assert len(progress) == 3, run.stderr
    assert progress[1].startswith("[2/3] bad.md -> FAILED unsupported_content")
    assert "FAILED" not in progress[0] and "FAILED" not in progress[2]
    assert fingerprint(inputs) == before


def test_png_named_pdf_exits_with_its_error_code(
    sources: Path, tmp_path: Path, tiny_models_dir: Path
) -> None:
    """pdf→md with the tiny models: one good PDF, then a PNG named .pdf."""
    inputs = [sources / "c.pdf", sources / "bad.pdf"]
    before = fingerprint(inputs)
    run = run_cli(
        ["convert", "c.pdf", "bad.pdf", "--to", "md", "--output-dir", "OUT"],
        sources,
        cli_env(tmp_path, tiny_models_dir),
    )
    assert run.code == 65, run.stderr
    out = sources / "OUT"
    car = check_result(out, sources / "c.pdf", "c.md", "pdf->md")
    assert car["input"]["pages"] == 1
    assert car["converter"]["name"] == "docling"
    md = (out / "c.md").read_text(encoding="utf-8")
    assert any(line.startswith("## ") for line in md.splitlines())
    assert office_docs.TEXT_PDF_LINES[2] in " ".join(md.split())

    error = sidecar(out / "bad.pdf.error.json")
    assert error["error"]["code"] == "unsupported_content"
    assert "PNG" in error["error"]["message"]
    assert fingerprint(inputs) == before
    assert run.progress()[1].startswith("[2/2] bad.pdf -> FAILED unsupported_content")


def test_every_subcommand_has_help(tmp_path: Path, tiny_models_dir: Path) -> None:
    from daemon.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = sorted(sub.choices)
    assert {"run", "check", "convert", "models", "schema"} <= set(commands)
    env = cli_env(tmp_path, tiny_models_dir)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "daemon", *([name] if name else []), "--help"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ["", *commands]
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, stderr)
        assert "usage:" in stdout, name
        if name:
            assert name in stdout.split("\n", 1)[0], stdout
