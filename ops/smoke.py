"""ops/smoke: one generated document per route through a running daemon.

Drops a small, generated input for every route into the inbox of a running
profile, waits for every answer (the .meta.json or .error.json sidecar), checks
each output against its sidecar and its content, and writes report.json and
report.md with timings. Exits 0 only if every route succeeded.

Standard library only; the inputs are generated here, without network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ops.hotfolder import Answer, answer_paths, check_output, drop, poll_answer, wait_ready
from ops.sample_docs import make_sample

# Python 3.9+: these scripts may run under the host's python3, not the venv's.
UTC = timezone.utc  # noqa: UP017
EX_FAILED = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69

# (source, target): every route a smoke run covers by default.
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (
    ("md", "pdf"),
    ("md", "docx"),
    ("html", "pdf"),
    ("html", "docx"),
    ("html", "md"),
    ("docx", "md"),
    ("pdf", "docx"),
)
# Needs the layout models (GPU lane); slow on a CPU-only host, so opt in.
PDF_MD = ("pdf", "md")


@dataclass
class RouteResult:
    route: str
    input: str
    ok: bool = False
    status: str = "pending"
    sidecar: str | None = None
    output: str | None = None
    wall_seconds: float | None = None
    queue_seconds: float | None = None
    convert_seconds: float | None = None
    device: str | None = None
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> argparse.Namespace:
    env_root = os.environ.get("SIR_CONVERT_A_LOT_DATA_ROOT")
    env_port = os.environ.get("SIR_CONVERT_A_LOT_HTTP_PORT")
    parser = argparse.ArgumentParser(
        prog="ops/smoke",
        description=(
            "Drop one generated file per route into a running profile's inbox, wait "
            "for every sidecar, check the outputs and write a report with timings. "
            "Exit 0 only if every route succeeded."
        ),
        epilog=(
            "Exit status: 0 all routes succeeded; 1 a route failed or timed out; "
            "2 usage error; 69 the daemon is not reachable or not ready. "
            "Example: ops/smoke --data-root /var/lib/sir-convert-a-lot/eval --port 8086"
        ),
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(env_root) if env_root else None,
        required=env_root is None,
        help="the profile's data root (default: $SIR_CONVERT_A_LOT_DATA_ROOT)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env_port) if env_port else 8085,
        help="the profile's HTTP port (default: $SIR_CONVERT_A_LOT_HTTP_PORT or 8085)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listener address (default 127.0.0.1)")
    parser.add_argument(
        "--with-pdf-md", action="store_true", help="also run pdf->md (layout models, GPU lane)"
    )
    parser.add_argument(
        "--routes",
        help="comma-separated subset, e.g. md-pdf,docx-md (default: every route above)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for all sidecars (600)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for /readyz (120)"
    )
    parser.add_argument(
        "--report-dir", type=Path, default=Path("smoke-report"), help="where report.json and "
        "report.md go (default ./smoke-report)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the outputs and archived inputs of this run"
    )
    args = parser.parse_args(argv)
    args.route_list = select_routes(parser, args.routes, args.with_pdf_md)
    return args


def select_routes(
    parser: argparse.ArgumentParser, spec: str | None, with_pdf_md: bool
) -> list[tuple[str, str]]:
    known = [*DEFAULT_ROUTES, PDF_MD]
    if spec is None:
        return [*DEFAULT_ROUTES, PDF_MD] if with_pdf_md else list(DEFAULT_ROUTES)
    chosen: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        pair = tuple(item.replace("->", "-").split("-", 1))
        if pair not in known:
            names = ", ".join(f"{s}-{t}" for s, t in known)
            parser.error(f"unknown route {item!r} (known: {names})")
        chosen.append((pair[0], pair[1]))
    if not chosen:
        parser.error("--routes selects no route")
    return chosen


def check_content(path: Path, target: str, marker: str) -> list[str]:
    """What a user would look at: the right kind of file, with the input's text in it."""
    data = path.read_bytes()
    if target == "pdf":
        return [] if data.startswith(b"%PDF-") else ["the output is not a PDF"]
    if target == "docx":
        try:
            with zipfile.ZipFile(path) as package:
                document = package.read("word/document.xml").decode("utf-8", "replace")
        except (zipfile.BadZipFile, KeyError):
            return ["the output is not a Word document"]
        return [] if marker in document else [f"the marker {marker} is not in the document"]
    text = data.decode("utf-8", "replace")
    return [] if marker in text else [f"the marker {marker} is not in the Markdown"]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def record_answer(
    result: RouteResult, data_root: Path, answer: Answer, target: str, marker: str
) -> None:
    sidecar = answer.sidecar
    result.sidecar = str(answer.path)
    result.status = str(sidecar.get("status"))
    timings = sidecar.get("timings") or {}
    result.queue_seconds = _number(timings.get("queue_seconds"))
    result.convert_seconds = _number(timings.get("convert_seconds"))
    result.warnings = [str(w) for w in sidecar.get("warnings") or []]
    acceleration = sidecar.get("acceleration") or {}
    result.device = acceleration.get("device")
    if not answer.succeeded:
        error = sidecar.get("error") or {}
        result.problems.append(f"failed: {error.get('code', '?')}: {error.get('message', '')}")
        return
    route = sidecar.get("route") or {}
    expected = result.route.split("->")
    if [route.get("source"), route.get("target")] != expected:
        result.problems.append(f"the sidecar's route is {route}, expected {result.route}")
    output, problems = check_output(data_root, sidecar)
    result.output = str(output) if output else None
    result.problems.extend(problems)
    if output is not None and not problems:
        result.problems.extend(check_content(output, target, marker))
    result.ok = not result.problems


def run(args: argparse.Namespace) -> int:
    data_root: Path = args.data_root.resolve()
    base_url = f"http://{args.host}:{args.port}"
    report: dict[str, Any] = {
        "ok": False,
        "started_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "base_url": base_url,
        "data_root": str(data_root),
    }
    readiness = wait_ready(base_url, args.ready_timeout)
    report["revision"] = readiness.revision
    if not readiness.ready:
        report["error"] = "the daemon is not ready: " + "; ".join(readiness.reasons())
        return finish(args.report_dir, report, [], EX_UNAVAILABLE)
    if not (data_root / "inbox").is_dir():
        report["error"] = (
            f"{data_root} has no inbox/: is it the data root of the profile on port {args.port}?"
        )
        return finish(args.report_dir, report, [], EX_UNAVAILABLE)

    run_id = datetime.now(UTC).strftime("smoke-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    marker = "SMK" + uuid.uuid4().hex[:10].upper()
    report["run_id"], report["marker"] = run_id, marker
    pending: dict[str, tuple[RouteResult, Path, Path, float, str]] = {}
    results: list[RouteResult] = []
    for source, target in args.route_list:
        relative = PurePosixPath(f"to-{target}", run_id, f"{source}-to-{target}.{source}")
        result = RouteResult(route=f"{source}->{target}", input=str(relative))
        results.append(result)
        meta, error = answer_paths(data_root, relative, target)
        drop(data_root, relative, make_sample(source, marker))
        pending[result.route] = (result, meta, error, time.monotonic(), target)
        print(f"dropped inbox/{relative}", flush=True)

    deadline = time.monotonic() + args.timeout
    while pending and time.monotonic() < deadline:
        for key, (result, meta, error, dropped_at, target) in list(pending.items()):
            answer = poll_answer(meta, error)
            if answer is None:
                continue
            result.wall_seconds = round(time.monotonic() - dropped_at, 3)
            record_answer(result, data_root, answer, target, marker)
            verdict = "ok" if result.ok else "FAILED " + "; ".join(result.problems)
            print(f"{result.route}: {verdict} ({result.wall_seconds:.1f} s)", flush=True)
            del pending[key]
        time.sleep(0.25)
    for result, *_ in pending.values():
        result.status = "timeout"
        result.problems.append(f"no sidecar within {args.timeout:.0f} s")
        print(f"{result.route}: FAILED no sidecar within {args.timeout:.0f} s", flush=True)

    ok = all(r.ok for r in results)
    report["ok"] = ok
    if not args.keep:
        report["cleaned"] = clean_up(data_root, run_id, failed_too=False)
    return finish(args.report_dir, report, results, 0 if ok else EX_FAILED)


def clean_up(data_root: Path, run_id: str, *, failed_too: bool) -> list[str]:
    """Remove this run's outputs and archived inputs; failures stay for inspection."""
    areas = ["outbox", "archive", *(["failed"] if failed_too else [])]
    removed = []
    for area in areas:
        for folder in (data_root / area).glob(f"to-*/{run_id}"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def finish(report_dir: Path, report: dict[str, Any], results: list[RouteResult], code: int) -> int:
    report["finished_at"] = datetime.now(UTC).isoformat()
    report["exit_code"] = code
    report["results"] = [asdict(r) for r in results]
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (report_dir / "report.md").write_text(render_markdown(report, results), encoding="utf-8")
    if "error" in report:
        print(f"ops/smoke: {report['error']}", file=sys.stderr)
    print(f"ops/smoke: {'PASSED' if code == 0 else 'FAILED'}; report in {report_dir}/report.md")
    return code


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any], results: list[RouteResult]) -> str:
    lines = [
        f"# Smoke test: {'PASSED' if report['ok'] else 'FAILED'}",
        "",
        f"- host: {report['host']}",
        f"- daemon: {report['base_url']} (revision {report.get('revision') or 'unknown'})",
        f"- data root: {report['data_root']}",
        f"- run: {report.get('run_id', '-')}",
        f"- from {report['started_at']} to {report['finished_at']}",
        "",
    ]
    if "error" in report:
        lines += [f"**{report['error']}**", ""]
    if results:
        lines += [
            "| route | result | wall s | queue s | convert s | device | warnings | problems |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r.route} | {'ok' if r.ok else r.status} | {_seconds(r.wall_seconds)} "
                f"| {_seconds(r.queue_seconds)} | {_seconds(r.convert_seconds)} "
                f"| {r.device or ''} | {', '.join(r.warnings)} | {'; '.join(r.problems)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
