"""How big each measurement is in each mode, and the shared run context."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.bench_lib.corpus import Corpus

__all__ = ["MODES", "Bench", "Plan"]


@dataclass(frozen=True)
class Plan:
    name: str
    reps: int  # repetitions of every throughput measurement (medians are reported)
    pdf_reps: int  # the docling CLI on PDFs costs ~15 s a file here
    latency_renames: int
    latency_in_place: int
    daemon_files: int  # files per repetition for the daemon and in-process runs
    pdf_files: int
    docling_cli_files: int  # per-file docling CLI invocations per repetition
    weasy_cli_files: int
    pandoc_cli_files: int
    medium: bool  # also compare medium-sized documents
    scale_files: int
    scan_files: int
    memory_jobs: int
    memory_recycle: int
    reuse_files: int  # PDFs per batch in the reuse section (different, then copies)
    sections: tuple[str, ...] = ("latency", "throughput", "scale", "scan", "memory", "reuse")
    alternatives: bool = True  # also time the per-file CLIs


MODES: dict[str, Plan] = {
    "smoke": Plan(
        name="smoke",
        reps=1,
        pdf_reps=1,
        latency_renames=0,
        latency_in_place=0,
        daemon_files=0,
        pdf_files=0,
        docling_cli_files=0,
        weasy_cli_files=0,
        pandoc_cli_files=2,
        medium=False,
        scale_files=0,
        scan_files=2_000,
        memory_jobs=0,
        memory_recycle=0,
        reuse_files=0,
        sections=("scan",),
    ),
    "quick": Plan(
        name="quick",
        reps=3,
        pdf_reps=2,
        latency_renames=30,
        latency_in_place=8,
        daemon_files=40,
        pdf_files=6,
        docling_cli_files=2,
        weasy_cli_files=8,
        pandoc_cli_files=20,
        medium=False,
        scale_files=1_000,
        scan_files=20_000,
        memory_jobs=200,
        memory_recycle=50,
        reuse_files=20,
    ),
    "full": Plan(
        name="full",
        reps=5,
        pdf_reps=3,
        latency_renames=200,
        latency_in_place=20,
        daemon_files=100,
        pdf_files=10,
        docling_cli_files=4,
        weasy_cli_files=20,
        pandoc_cli_files=50,
        medium=True,
        scale_files=10_000,
        scan_files=100_000,
        memory_jobs=1_000,
        memory_recycle=200,
        reuse_files=100,
    ),
}


@dataclass
class Bench:
    """What every section shares: the plan, the corpus, the models, the results."""

    plan: Plan
    work: Path
    corpus: Corpus
    models_dir: Path | None
    # Throughput comparisons to run, by key (``md_small->docx``); empty: all of the mode.
    comparisons: tuple[str, ...] = ()
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[bench {elapsed:7.1f} s] {message}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path
