"""What pdf → md's output options cost: figures, JSON, chunks, page markers.

``ops/bench --only outputs`` (not in the default sections). One multi-page
sample PDF is converted in this process by ``PdfToMarkdown``, exactly as a
worker calls it (the companions named as the daemon names them), once per
option set and round, the sets interleaved so that a change of machine load
hits each alike. Reported: the best and the median of the rounds, and each
set's ratio to ``images = "placeholder"`` (the 0.1 behaviour). With the
tiny test layout model the layout step is nearly free, so the ratios are an
upper bound of what the options add.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from ops.bench_lib.plan import Bench
from ops.bench_lib.stats import median
from ops.sample_docs import make_pdf

__all__ = ["OPTION_SETS", "measure_outputs", "rows"]

OPTION_SETS: dict[str, dict[str, Any]] = {
    "placeholder": {"images": "placeholder"},
    "referenced": {},
    "referenced+json+chunks+page_markers": {"also": ("json", "chunks"), "page_markers": True},
}
PAGES = 10
ROUNDS = 5


def measure_outputs(bench: Bench) -> dict[str, Any]:
    from converters.base import ConversionRequest, ConvertOptions, Limits, WorkerContext
    from converters.dropfolder import DropFolder
    from converters.pdf_md import PdfToMarkdown
    from daemon.sidecar import companion_paths

    folder = bench.work / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "sample.pdf"
    source.write_bytes(make_pdf("outputs", pages=PAGES))
    ctx = WorkerContext(
        gpu_policy="preferred",
        models_dir=bench.models_dir,
        limits=Limits(),
        device="cpu",
        runtime_kind="none",
    )
    converter = PdfToMarkdown()
    converter.warm(ctx)

    def once(options: dict[str, Any]) -> float:
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        output = work / "sample.md"
        with DropFolder.open(folder) as drop_folder:
            request = ConversionRequest(
                source, output, ConvertOptions(**options), drop_folder, companion_paths(output)
            )
            started = time.perf_counter()
            converter.convert(request, ctx)
            return time.perf_counter() - started

    for options in OPTION_SETS.values():
        once(options)  # builds that variant's pipeline
    seconds: dict[str, list[float]] = {name: [] for name in OPTION_SETS}
    for _ in range(ROUNDS):
        for name, options in OPTION_SETS.items():
            seconds[name].append(once(options))
    base = min(seconds["placeholder"])
    bench.log(f"outputs: {PAGES}-page PDF, {ROUNDS} rounds")
    return {
        "pages": PAGES,
        "rounds": ROUNDS,
        "sets": [
            {
                "options": name,
                "best_seconds": round(min(samples), 4),
                "median_seconds": round(median(samples), 4),
                "best_vs_placeholder": round(min(samples) / base, 3),
            }
            for name, samples in seconds.items()
        ],
    }


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The report's table rows."""
    return [
        [
            entry["options"],
            f"{entry['best_seconds']:.3f}",
            f"{entry['median_seconds']:.3f}",
            f"{entry['best_vs_placeholder']:.2f}",
        ]
        for entry in result["sets"]
    ]
