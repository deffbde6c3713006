"""``ops/bench``: run the benchmark, print the tables, write the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops.bench_lib import procfs
from ops.bench_lib.corpus import build_corpus
from ops.bench_lib.plan import MODES, Bench
from ops.bench_lib.report import render, targets

__all__ = ["SCHEMA", "build_parser", "main"]

SCHEMA = "sir-convert-a-lot-bench/1"
# "scaleout" (the shared job engine) needs root and PostgreSQL: opt in with --only scaleout.
SECTIONS = ("latency", "throughput", "scale", "scan", "memory", "reuse", "outputs", "scaleout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ops/bench",
        description=(
            "Benchmark the real daemon against the per-file CLIs of the same tools "
            "(docling, weasyprint, pandoc), against a warm in-process loop, and at scale. "
            "Generates its own corpus and tiny docling models; needs no network. "
            "Prints a table of medians and optionally writes the JSON."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="a few minutes on 2 cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="10,000-file scale run, 100,000 idle files, 1,000-job memory run (~30+ min)",
    )
    mode.add_argument(
        "--smoke",
        dest="mode",
        action="store_const",
        const="smoke",
        help="seconds: corpus and in-process scan only, no daemon (for the test suite)",
    )
    parser.set_defaults(mode="quick")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the full results here")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write the tables as Markdown")
    parser.add_argument(
        "--only",
        default="",
        metavar="SECTIONS",
        help=f"comma-separated subset of: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--comparisons",
        default="",
        metavar="KEYS",
        help="throughput: only these comparisons, e.g. md_small->docx (comma-separated)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=N",
        help="override one size of the mode, e.g. --set scale_files=5000 (see the JSON's plan)",
    )
    parser.add_argument(
        "--no-alternatives",
        action="store_true",
        help="throughput: skip the per-file CLIs (daemon against the in-process loop only)",
    )
    parser.add_argument("--workdir", type=Path, help="work here instead of a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument(
        "--models-dir", type=Path, help="reuse a tiny docling artifacts folder (default: build one)"
    )
    return parser


def _run(bench: Bench, sections: tuple[str, ...], report: dict[str, Any]) -> None:
    from ops.bench_lib.daemon_proc import BenchDaemon

    results: dict[str, Any] = report["results"]
    errors: list[str] = report["errors"]

    def attempt(name: str, fn: Any) -> None:
        try:
            results[name] = fn()
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            bench.log(f"{name} failed:\n{traceback.format_exc()}")

    empty_listening: float | None = None
    if "latency" in sections or "throughput" in sections:
        from ops.bench_lib.drops import Observer
        from ops.bench_lib.latency import measure_latency
        from ops.bench_lib.throughput import measure_throughput

        daemon = BenchDaemon(bench.folder("main"), models_dir=bench.models_dir)
        bench.log("starting the daemon (profile eval, product defaults)")
        daemon.start()
        empty_listening = daemon.listening_seconds
        cpu0, t0 = procfs.cpu_seconds(daemon.pid) or 0.0, time.monotonic()
        time.sleep(3.0)
        idle = ((procfs.cpu_seconds(daemon.pid) or 0.0) - cpu0) / (time.monotonic() - t0)
        report["daemon"] = {
            "effective_settings": daemon.effective(),
            "listening_seconds": round(daemon.listening_seconds or 0.0, 2),
            "ready_seconds": round(daemon.ready_seconds or 0.0, 2),
            "idle_main_cpu_fraction": round(idle, 4),
            "main_rss_idle_mb": procfs.rss_mb(daemon.pid),
            "worker_rss_idle_mb": [procfs.rss_mb(p) for p in daemon.worker_pids()],
        }
        observer = Observer(daemon)
        try:
            if "latency" in sections:
                attempt("latency", lambda: measure_latency(bench, daemon, observer))
            if "throughput" in sections:
                attempt("throughput", lambda: measure_throughput(bench, daemon, observer))
        finally:
            observer.close()
            daemon.stop()
    if "scale" in sections:
        from ops.bench_lib.scale import measure_scale

        attempt("scale", lambda: measure_scale(bench))
    if "scan" in sections:
        from ops.bench_lib.scan import measure_scan

        attempt("scan", lambda: measure_scan(bench, empty_listening_seconds=empty_listening))
    if "scaleout" in sections:
        from ops.bench_lib.scaleout import measure_scaleout

        attempt("scaleout", lambda: measure_scaleout(bench))
    if "memory" in sections:
        from ops.bench_lib.memory import measure_memory

        attempt("memory", lambda: measure_memory(bench))
    if "reuse" in sections:
        from ops.bench_lib.reuse import measure_reuse

        attempt("reuse", lambda: measure_reuse(bench))
    if "outputs" in sections:  # only with --only outputs: not in any mode's sections
        from ops.bench_lib.outputs import measure_outputs

        attempt("outputs", lambda: measure_outputs(bench))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = MODES[args.mode]
    for item in args.set:
        key, _, value = item.partition("=")
        fixed = ("name", "sections", "alternatives")
        if key not in vars(plan) or key in fixed or not value.isdigit():
            print(f"ops/bench: --set {item}: not a size of the plan", file=sys.stderr)
            return 2
        changes: dict[str, Any] = {key: int(value)}
        plan = dataclasses.replace(plan, **changes)
    plan = dataclasses.replace(plan, alternatives=not args.no_alternatives)
    wanted = tuple(s for s in args.only.split(",") if s) or plan.sections
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"ops/bench: unknown section(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    sections = tuple(s for s in SECTIONS if s in wanted)
    chosen = tuple(k for k in args.comparisons.split(",") if k)
    if chosen:
        from ops.bench_lib.throughput import COMPARISONS

        known = {c.key for c in COMPARISONS}
        if set(chosen) - known:
            print(
                f"ops/bench: --comparisons: known keys are {', '.join(sorted(known))}",
                file=sys.stderr,
            )
            return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sir-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": plan.name,
        "sections": list(sections),
        "started_at": started_wall.isoformat(timespec="seconds"),
        "command": "ops/bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": procfs.machine_info(),
        "plan": {k: v for k, v in vars(plan).items() if k != "sections"},
        "corpus": {},
        "daemon": None,
        "results": {},
        "targets": [],
        "errors": [],
        "duration_seconds": 0.0,
    }
    try:
        corpus = build_corpus(work / "corpus")
        report["corpus"] = corpus.sizes()
        needs_models = bool(set(sections) - {"scan"}) or plan.name != "smoke"
        models = args.models_dir
        if needs_models and models is None:
            from tests.fixtures.docling_artifacts import build_tiny_artifacts

            models = build_tiny_artifacts(work / "models")
        bench = Bench(plan=plan, work=work, corpus=corpus, models_dir=models, comparisons=chosen)
        bench.log(f"mode {plan.name}, sections {', '.join(sections)}, work folder {work}")
        _run(bench, sections, report)
    finally:
        report["duration_seconds"] = round(time.monotonic() - started, 1)
        report["machine"]["loadavg_end"] = procfs.loadavg()
        report["targets"] = targets(report["results"])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if args.markdown:
            args.markdown.write_text(render(report, markdown=True), encoding="utf-8")
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    return 1 if report["errors"] else 0
