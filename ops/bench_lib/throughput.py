"""Throughput against per-file CLI invocations, and overhead against a warm loop.

For every compared route the same files go through:

* the daemon: N copies renamed into the inbox at once, timed from the first
  rename to the last sidecar;
* the in-process baseline: the same converter, warm, in as many processes as
  the daemon's lane has workers, the N copies split between them;
* the alternatives: the tool's own CLI once per file (as many at a time as the
  lane has workers) and, for docling, once for the whole batch.

Each is repeated; medians are reported. The daemon's, the loop's and the cheap
CLIs' (pandoc, weasyprint) repetitions alternate, so a change in the machine's
load hits them alike; docling's CLI, seconds a file, runs afterwards.
Throughput ratios compare files per second; overhead compares the daemon's and
the loop's wall time on the same N.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.bench_lib.baselines import (
    RunResult,
    docling_command,
    pandoc_command,
    run_commands,
    weasyprint_command,
)
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.drops import Observer
from ops.bench_lib.inproc import InProcessPool
from ops.bench_lib.plan import Bench, Plan
from ops.bench_lib.procfs import machine_info
from ops.bench_lib.stats import median

__all__ = ["COMPARISONS", "Comparison", "measure_throughput"]


@dataclass(frozen=True)
class Comparison:
    kind: str
    source: str
    target: str
    lane: str
    alternatives: tuple[str, ...]
    medium: bool = False
    slow: bool = False  # seconds per file in the daemon: use the small PDF counts

    @property
    def key(self) -> str:
        return f"{self.kind}->{self.target}"


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("docx_small", "docx", "md", "cpu", ("docling_cli_per_file", "docling_cli_batch")),
    Comparison("html_small", "html", "pdf", "cpu", ("weasyprint_cli_per_file",)),
    Comparison("md_small", "md", "docx", "cpu", ("pandoc_cli_per_file",)),
    Comparison("html_small", "html", "md", "cpu", ()),
    Comparison("pdf_text_small", "pdf", "md", "gpu", ("docling_cli_per_file",)),
    Comparison("pdf_scanned", "pdf", "md", "gpu", ("docling_cli_per_file",), slow=True),
    Comparison(
        "docx_medium", "docx", "md", "cpu", ("docling_cli_per_file", "docling_cli_batch"), True
    ),
    Comparison("html_medium", "html", "pdf", "cpu", ("weasyprint_cli_per_file",), True),
    Comparison("md_medium", "md", "docx", "cpu", ("pandoc_cli_per_file",), True),
    Comparison("pdf_text_medium", "pdf", "md", "gpu", ("docling_cli_per_file",), True, True),
)


def _summarise(runs: list[RunResult], parallel: int | None = None) -> dict[str, Any]:
    seconds = [r.seconds for r in runs]
    files = runs[0].files if runs else 0
    mid = median(seconds)
    out: dict[str, Any] = {
        "files": files,
        "reps_seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(mid, 3),
        "files_per_second": round(files / mid, 3) if mid > 0 else None,
        "failed": sum(r.failed for r in runs),
    }
    if parallel is not None:
        out["parallel"] = parallel
    return out


class _Runner:
    def __init__(self, bench: Bench, daemon: BenchDaemon, observer: Observer) -> None:
        self.bench = bench
        self.daemon = daemon
        self.observer = observer
        self.workers = {
            "cpu": int(daemon.effective()["cpu_workers"]),
            "gpu": int(daemon.effective()["gpu_workers"]),
        }
        self.threads = int(str(machine_info()["nproc"]))

    def copies(self, c: Comparison, count: int, where: Path, prefix: str) -> list[Path]:
        return self.bench.corpus.copies(c.kind, count, where, prefix)

    def daemon_run(self, c: Comparison, count: int, rep: int) -> RunResult:
        prefix = f"tp-{c.kind}-{c.target}-r{rep}-"
        staged = self.copies(c, count, self.daemon.staging, prefix)
        first = self.observer.rename_in(staged, c.target)
        last, failed = self.observer.wait_batch(prefix, count, c.target, timeout=1800)
        return RunResult(seconds=last - first, files=count, failed=failed)

    def in_process_run(self, pool: InProcessPool, c: Comparison, count: int, rep: int) -> RunResult:
        where = self.bench.folder(f"inproc/{c.key}/r{rep}")
        files = self.copies(c, count, where / "in", "f")
        result = pool.run(files, where / "out")
        shutil.rmtree(where)
        return result

    def cli(self, c: Comparison, alternative: str, count: int, rep: int) -> RunResult:
        where = self.bench.folder(f"cli/{c.key}/{alternative}/r{rep}")
        files = self.copies(c, count, where / "in", "f")
        out = where / "out"
        out.mkdir(exist_ok=True)
        expect = [out / f"{f.stem}.{c.target}" for f in files]
        parallel = self.workers[c.lane]
        ocr = c.kind == "pdf_scanned"
        artifacts = self.bench.models_dir
        command: Callable[[Path], list[str]]
        if alternative == "docling_cli_batch":
            cmd = docling_command(
                [where / "in"], c.source, out, artifacts=artifacts, ocr=ocr, threads=self.threads
            )
            result = run_commands([cmd], 1, expect=expect)
        else:
            if alternative == "docling_cli_per_file":

                def command(f: Path) -> list[str]:
                    return docling_command(
                        [f], c.source, out, artifacts=artifacts, ocr=ocr, threads=self.threads
                    )
            elif alternative == "weasyprint_cli_per_file":

                def command(f: Path) -> list[str]:
                    return weasyprint_command(f, out)
            elif alternative == "pandoc_cli_per_file":

                def command(f: Path) -> list[str]:
                    return pandoc_command(f, out)
            else:
                raise ValueError(alternative)
            result = run_commands([command(f) for f in files], parallel, expect=expect)
        shutil.rmtree(where)
        return result


def _cli_count(bench: Bench, c: Comparison, alternative: str, daemon_count: int) -> int:
    plan = bench.plan
    if alternative == "docling_cli_batch":
        return daemon_count
    if alternative == "docling_cli_per_file":
        return plan.docling_cli_files
    if alternative == "weasyprint_cli_per_file":
        return plan.weasy_cli_files
    return plan.pandoc_cli_files


def _reps(plan: Plan, c: Comparison, alternative: str) -> int:
    return plan.pdf_reps if c.source == "pdf" or "docling" in alternative else plan.reps


def measure_throughput(
    bench: Bench, daemon: BenchDaemon, observer: Observer
) -> list[dict[str, Any]]:
    plan = bench.plan
    runner = _Runner(bench, daemon, observer)
    out: list[dict[str, Any]] = []
    for c in COMPARISONS:
        if bench.comparisons:
            if c.key not in bench.comparisons:
                continue
        elif c.medium and not plan.medium:
            continue
        count = plan.pdf_files if c.slow else plan.daemon_files
        parallel = runner.workers[c.lane]
        pool = InProcessPool(c.source, c.target, parallel, bench.models_dir)
        bench.log(f"throughput {c.key}: warming {parallel} in-process baseline process(es)")
        pool.start()
        restarts_before = daemon.restarts()
        ours: list[RunResult] = []
        loop: list[RunResult] = []
        # The cheap CLIs (pandoc's, weasyprint's) take their turn inside the same
        # alternation; docling's, seconds a file, run after it with fewer reps.
        interleaved = [a for a in c.alternatives if _reps(plan, c, a) == plan.reps]
        beside: dict[str, list[RunResult]] = {a: [] for a in interleaved}
        bench.log(
            f"throughput {c.key}: daemon, in-process loop and {', '.join(interleaved) or 'no CLI'}"
            f" alternately, {plan.reps} x {count} files"
        )
        try:
            # Alternate, so that a change in the machine's load hits all alike.
            for rep in range(plan.reps):
                ours.append(runner.daemon_run(c, count, rep))
                loop.append(runner.in_process_run(pool, c, count, rep))
                for alternative in interleaved:
                    n = _cli_count(bench, c, alternative, count)
                    beside[alternative].append(runner.cli(c, alternative, n, rep))
        finally:
            pool.close()
        restarts_after = daemon.restarts()
        warm = pool.warm_seconds
        entry: dict[str, Any] = {
            "route": f"{c.source}->{c.target}",
            "input_kind": c.kind,
            "input_bytes": bench.corpus.templates[c.kind].stat().st_size,
            "lane": c.lane,
            "lane_workers": parallel,
            "daemon": _summarise(ours),
            "in_process": {**_summarise(loop, parallel), "warm_up_seconds": round(warm, 2)},
            "worker_restarts_during_daemon_runs": {
                k: v - restarts_before.get(k, 0.0)
                for k, v in restarts_after.items()
                if v - restarts_before.get(k, 0.0)
            },
            "alternatives": {},
            "speedup": {},
            # The warm route at exactly the CLI's parallelism (the in-process
            # processes), without the daemon's express workers beside them.
            "speedup_in_process": {},
        }
        daemon_median = entry["daemon"]["median_seconds"]
        loop_median = entry["in_process"]["median_seconds"]
        entry["overhead_ratio"] = round(daemon_median / loop_median, 3) if loop_median else None
        ours_fps = entry["daemon"]["files_per_second"]
        loop_fps = entry["in_process"]["files_per_second"]
        for alternative in c.alternatives if plan.alternatives else ():
            reps = _reps(plan, c, alternative)
            n = _cli_count(bench, c, alternative, count)
            if alternative in beside:
                runs = beside[alternative]
            else:
                bench.log(f"throughput {c.key}: {alternative}, {reps} x {n} files")
                runs = [runner.cli(c, alternative, n, rep) for rep in range(reps)]
            summary = _summarise(runs, 1 if alternative.endswith("batch") else parallel)
            entry["alternatives"][alternative] = summary
            theirs = summary["files_per_second"]
            if ours_fps and theirs:
                entry["speedup"][alternative] = round(ours_fps / theirs, 2)
            if loop_fps and theirs:
                entry["speedup_in_process"][alternative] = round(loop_fps / theirs, 2)
        out.append(entry)
    return out
