"""The benchmark corpus: one template per kind, copied under fresh names on demand.

Small documents come from the test generators (tests/fixtures/office_docs.py and
web_docs.py), so the benchmark converts what the test suite converts; medium
documents are made here, a few tens of KB of headings, paragraphs, lists and
tables (a ten-page text PDF). Copies keep the template's bytes: identical
inputs make the per-file comparisons fair and the medians stable.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KINDS", "Corpus", "build_corpus"]

# kind -> file extension
KINDS: dict[str, str] = {
    "md_small": "md",
    "md_medium": "md",
    "html_small": "html",
    "html_medium": "html",
    "docx_small": "docx",
    "docx_medium": "docx",
    "pdf_text_small": "pdf",
    "pdf_text_medium": "pdf",
    "pdf_scanned": "pdf",
}

_SECTIONS = 40
_WORDS = tuple(
    " ".join(
        (
            "conversion inbox outbox worker sidecar settle claim publish archive route lane",
            "document heading paragraph table list markdown portable format printed page",
            "quarterly report field survey harbour tide gauge moisture reading plot season",
        )
    ).split(" ")
)


def _sentence(seed: int, words: int = 14) -> str:
    picked = [_WORDS[(seed * 7 + i * 13) % len(_WORDS)] for i in range(words)]
    return " ".join(picked).capitalize() + "."


def _paragraph(seed: int) -> str:
    return " ".join(_sentence(seed * 5 + k) for k in range(5))


def _medium_markdown() -> str:
    parts = ["# Field Handbook\n"]
    for s in range(_SECTIONS):
        parts.append(f"## Section {s + 1}\n\n{_paragraph(s)}\n\n{_paragraph(s + 100)}\n")
        parts.append("\n".join(f"- {_sentence(s * 3 + i, 6)}" for i in range(4)) + "\n")
        if s % 8 == 0:
            rows = "\n".join(f"| {r} | {_WORDS[r % len(_WORDS)]} | {r * 3} |" for r in range(6))
            parts.append(f"\n| Row | Word | Value |\n|---|---|---|\n{rows}\n")
    return "\n".join(parts)


def _medium_html() -> str:
    body = ["<h1>Field Handbook</h1>"]
    for s in range(_SECTIONS):
        body.append(f"<h2>Section {s + 1}</h2>")
        body.append(f"<p>{html.escape(_paragraph(s))}</p><p>{html.escape(_paragraph(s + 100))}</p>")
        items = "".join(f"<li>{html.escape(_sentence(s * 3 + i, 6))}</li>" for i in range(4))
        body.append(f"<ul>{items}</ul>")
        if s % 8 == 0:
            rows = "".join(
                f"<tr><td>{r}</td><td>{_WORDS[r % len(_WORDS)]}</td><td>{r * 3}</td></tr>"
                for r in range(6)
            )
            body.append(f"<table><tr><th>Row</th><th>Word</th><th>Value</th></tr>{rows}</table>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Field Handbook</title>"
        "</head><body>" + "".join(body) + "</body></html>"
    )


def _medium_docx(dest: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Field Handbook", level=0)
    for s in range(_SECTIONS):
        document.add_heading(f"Section {s + 1}", level=1)
        document.add_paragraph(_paragraph(s))
        document.add_paragraph(_paragraph(s + 100))
        for i in range(4):
            document.add_paragraph(_sentence(s * 3 + i, 6), style="List Bullet")
        if s % 8 == 0:
            table = document.add_table(rows=6, cols=3)
            for r in range(6):
                for c, value in enumerate((str(r), _WORDS[r % len(_WORDS)], str(r * 3))):
                    table.cell(r, c).text = value
    document.save(str(dest))


@dataclass(frozen=True)
class Corpus:
    """Templates by kind, and copies made from them."""

    folder: Path
    templates: dict[str, Path]

    def copies(self, kind: str, count: int, dest: Path, prefix: str) -> list[Path]:
        """``count`` copies of ``kind`` in ``dest`` named ``<prefix>-<i>.<ext>``."""
        dest.mkdir(parents=True, exist_ok=True)
        template = self.templates[kind]
        out: list[Path] = []
        for i in range(count):
            path = dest / f"{prefix}-{i:05d}{template.suffix}"
            shutil.copyfile(template, path)
            out.append(path)
        return out

    def sizes(self) -> dict[str, int]:
        return {kind: path.stat().st_size for kind, path in self.templates.items()}


def build_corpus(folder: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> Corpus:
    """Write one template per kind into ``folder`` (offline, a few seconds)."""
    from tests.fixtures.office_docs import make_docx, make_html, make_scanned_pdf, make_text_pdf
    from tests.fixtures.web_docs import make_markdown

    folder.mkdir(parents=True, exist_ok=True)
    templates: dict[str, Path] = {}
    for kind in kinds:
        path = folder / f"{kind}.{KINDS[kind]}"
        if kind == "md_small":
            make_markdown(path)
        elif kind == "md_medium":
            path.write_text(_medium_markdown(), encoding="utf-8")
        elif kind == "html_small":
            make_html(path)
        elif kind == "html_medium":
            path.write_text(_medium_html(), encoding="utf-8")
        elif kind == "docx_small":
            make_docx(path)
        elif kind == "docx_medium":
            _medium_docx(path)
        elif kind == "pdf_text_small":
            make_text_pdf(path)
        elif kind == "pdf_text_medium":
            make_text_pdf(path, pages=10)
        elif kind == "pdf_scanned":
            make_scanned_pdf(path)
        else:
            raise ValueError(f"unknown corpus kind {kind!r}")
        templates[kind] = path
    return Corpus(folder, templates)
