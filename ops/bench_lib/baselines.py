"""The alternatives: the same tools run per file (or as one batch) from their CLIs.

Each command is the tool's own command line with its offline switches; per-file
runs use the same parallelism as the daemon's lane for that route, so the
comparison is "one process per document" against "warm workers", not one core
against two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RunResult",
    "docling_command",
    "offline_env",
    "pandoc_command",
    "run_commands",
    "tool_path",
    "weasyprint_command",
]


@dataclass(frozen=True)
class RunResult:
    seconds: float
    files: int
    failed: int

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else float("nan")


def tool_path(name: str) -> Path:
    """A console script installed next to this interpreter (the project's venv)."""
    return Path(sys.executable).parent / name


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def docling_command(
    sources: list[Path],
    source_format: str,
    out_dir: Path,
    *,
    artifacts: Path | None = None,
    ocr: bool = False,
    threads: int = 1,
) -> list[str]:
    """``docling convert`` to Markdown; for PDFs the same artifacts and pipeline the
    daemon uses (layout model, no TableFormer in the tiny set, RapidOCR full-page)."""
    cmd = [
        str(tool_path("docling")),
        "convert",
        "--from",
        source_format,
        "--to",
        "md",
        "--image-export-mode",
        "placeholder",
        "--output",
        str(out_dir),
        "-q",
    ]
    if source_format == "pdf":
        assert artifacts is not None
        cmd += [
            "--artifacts-path",
            str(artifacts),
            "--device",
            "cpu",
            "--num-threads",
            str(threads),
            "--no-tables",
            "--no-enable-remote-services",
        ]
        if ocr:
            cmd += ["--ocr", "--ocr-engine", "rapidocr", "--ocr-mode", "full_page"]
        else:
            cmd += ["--no-ocr"]
    return cmd + [str(s) for s in sources]


def weasyprint_command(source: Path, out_dir: Path) -> list[str]:
    return [str(tool_path("weasyprint")), str(source), str(out_dir / f"{source.stem}.pdf")]


def pandoc_command(source: Path, out_dir: Path) -> list[str]:
    """The very pandoc binary the daemon keeps resident, run once per file with the
    switches the md→docx route used before it did (``--sandbox``)."""
    from converters._pandoc import pandoc_path

    out = out_dir / f"{source.stem}.docx"
    return [pandoc_path(), "--sandbox", "-f", "markdown", "-t", "docx", "-o", str(out), str(source)]


def run_commands(commands: list[list[str]], parallel: int, *, expect: list[Path]) -> RunResult:
    """Run every command, ``parallel`` at a time; wall time and how many outputs are missing."""
    env = offline_env()

    def one(cmd: list[str]) -> int:
        done = subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        return done.returncode

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        codes = list(pool.map(one, commands))
    seconds = time.monotonic() - started
    missing = sum(1 for path in expect if not path.is_file())
    failed = max(missing, sum(1 for c in codes if c != 0))
    return RunResult(seconds=seconds, files=len(expect), failed=failed)
