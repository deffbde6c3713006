"""The ``sir-convert-a-lot`` command line. Errors exit with their type's code."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import urllib.request
from pathlib import Path

from converters.base import GPU_POLICIES
from converters.errors import ExitCode, SirError
from daemon.config import ProfileSettings, Settings, check_data_roots, load_settings
from daemon.errors import ConfigError
from daemon.event_reader import JournalReader
from daemon.events import Event, EventKind, Gap
from daemon.logs import configure_logging
from daemon.names import printable
from daemon.open_writers import keep_lease_to_ourselves
from daemon.revision import code_dirs

__all__ = ["main"]


def _load(args: argparse.Namespace) -> tuple[Settings, ProfileSettings]:
    settings, profile = load_settings(config_path=args.config, profile=args.profile)
    check_data_roots(settings, code_dirs=code_dirs())
    return settings, profile


def _check_bind(profile: ProfileSettings) -> None:
    try:
        loopback = ipaddress.ip_address(profile.http_host).is_loopback
    except ValueError:
        loopback = profile.http_host == "localhost"
    if not loopback and not profile.allow_non_loopback:
        raise ConfigError(
            f"http_host {profile.http_host} is not a loopback address; set "
            "allow_non_loopback = true in the profile to listen there on purpose"
        )


# -- run -----------------------------------------------------------------------------


async def _serve(settings: Settings, profile: ProfileSettings) -> None:
    from aiohttp import web

    from daemon.http import make_app
    from daemon.notify import Notifier
    from daemon.service import Service

    service = Service(settings, profile, Notifier.from_environment(), journal=True)
    await service.start()
    runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, profile.http_host, profile.http_port)
    await site.start()
    try:
        await service.run_forever()  # health is served: its first round sends READY=1
    finally:
        await runner.cleanup()


def cmd_run(args: argparse.Namespace) -> int:
    settings, profile = _load(args)
    _check_bind(profile)
    configure_logging(profile.log_level)
    asyncio.run(_serve(settings, profile))
    return 0


# -- check ---------------------------------------------------------------------------


async def _check(settings: Settings, profile: ProfileSettings, timeout: float) -> int:
    from daemon.service import Service

    service = Service(settings, profile)
    try:
        await service.start_lanes()
        await service.wait_warm(timeout)
        _, results = service.evaluate(force=True)
    finally:
        await service.shutdown(drain_seconds=0)
    results = [r for r in results if r.name != "watcher"]  # no watcher runs in a check
    for r in results:
        print(
            f"{'ok  ' if r.ok else 'FAIL'} {r.name:<20} {'' if r.ok else r.code + ': '}{r.message}"
        )
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILED


def cmd_check(args: argparse.Namespace) -> int:
    settings, profile = _load(args)
    _check_bind(profile)
    configure_logging("warning")
    return asyncio.run(_check(settings, profile, args.timeout))


# -- init, retry, status ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from daemon.layout import DataRoot

    _, profile = _load(args)
    root = DataRoot(profile.data_root)
    root.create()
    owner = root.owner()
    if owner is not None and owner != profile.name:
        raise ConfigError(f"{root.root} already belongs to profile {owner!r}")
    root.adopt(profile.name)
    for folder in root.folders():
        print(folder)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from daemon.retry import retry_failed

    _, profile = _load(args)
    moved = retry_failed(profile, [Path(p) for p in args.paths])
    for src, dst in moved:
        print(f"{printable(str(src))} -> {printable(str(dst))}")
    print(f"{len(moved)} file(s) moved back into the inbox", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, profile = _load(args)
    url = f"http://{profile.http_host}:{profile.http_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.loads(resp.read())
    except OSError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"profile {data['profile']}  revision {data['revision'][:12]}  "
        f"up {data['uptime_seconds']:.0f} s  pending in inbox {data['pending_in_inbox']}"
    )
    for lane, info in data["lanes"].items():
        print(
            f"lane {lane:<4} workers {info['workers']} warm {info['warm']} "
            f"queued {info['queue_depth']} outstanding {info['outstanding']}"
        )
    # Every name and message came from a dropper: printed escaped, so a name
    # holding terminal escape sequences shows as text instead of acting.
    for job in data["in_flight"]:
        print(
            f"  running {job['running_seconds']:>8.1f} s  {job['lane']}  pid {job['worker_pid']}"
            f"  {printable(str(job['file']))}"
        )
    for job in data["queue"]:
        print(f"  queued  {printable(str(job['file']))}")
    for job in data.get("stuck", []):
        print(f"  stuck   {job['job_id']}  {printable(str(job['file']))}")
    for fail in data["recent_failures"][:10]:
        print(
            f"  failed  {printable(fail['at'][:19])}  {printable(fail['code']):<20} "
            f"{printable(fail['relative_path'])}"
        )
    return 0


# -- events ------------------------------------------------------------------------------


def _event_line(event: Event) -> str:
    """The readable form (a terminal): names came from droppers, printed escaped."""
    what = event.path or event.input or ""
    extra = event.code or ""
    if event.kind == EventKind.READINESS_CHANGED:
        extra = "ready" if event.ready else "not ready: " + ", ".join(event.reasons)
    return printable(
        f"{event.seq:>8}  {event.at:%Y-%m-%d %H:%M:%S}  {event.kind:<17}  "
        f"{event.job_id or '-':<28}  {what}  {extra}".rstrip()
    )


def cmd_events(args: argparse.Namespace) -> int:
    from daemon.layout import DataRoot

    _, profile = _load(args)
    folder = DataRoot(profile.data_root).events
    if not folder.is_dir() and not args.follow:
        print(f"no events journal in {folder} (has the daemon run?)", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    readable = sys.stdout.isatty() and not args.json
    reader = JournalReader(folder, after=args.since)
    for item in reader.follow(stop=lambda: not args.follow):
        if isinstance(item, Gap):
            print(
                f"events after seq {item.after} up to {item.first_available - 1} were "
                "rotated away (events.retention_days)",
                file=sys.stderr,
            )
            if not readable:
                print(json.dumps({"gap": item.as_dict()}), flush=True)
            continue
        print(_event_line(item) if readable else item.model_dump_json(), flush=True)
    return 0


# -- convert, models, schema ---------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from daemon.oneshot import convert_files

    _, profile = load_settings(config_path=args.config, profile=args.profile or "eval")
    if args.gpu_policy:
        profile = profile.model_copy(update={"gpu_policy": args.gpu_policy})
    configure_logging("warning", stream=sys.stderr)  # stdout stays clean for scripts
    return convert_files([Path(f) for f in args.files], args.to, Path(args.output_dir), profile)


def cmd_models(args: argparse.Namespace) -> int:
    from converters.models import check_models, fetch_models

    _, profile = load_settings(config_path=args.config, profile=args.profile or "eval")
    models_dir = Path(args.models_dir) if args.models_dir else profile.models_dir
    if models_dir is None:
        raise ConfigError("no models folder: pass --models-dir or set SIR_CONVERT_A_LOT_MODELS_DIR")
    report = fetch_models(models_dir) if args.action == "fetch" else check_models(models_dir)
    for line in report.lines():
        print(line)
    return ExitCode.OK if report.ready else ExitCode.UNAVAILABLE


def cmd_schema(args: argparse.Namespace) -> int:
    from daemon.sidecar import Sidecar

    model = Event if args.events else Sidecar
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0


# -- the engine: worker nodes, schema ---------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from converters.base import Lane

    _, profile = _load(args)
    _check_bind(profile)
    if profile.engine_url is None:
        raise ConfigError("a worker node needs engine_url (or SIR_CONVERT_A_LOT_ENGINE_URL)")
    try:
        lanes = [Lane(part.strip()) for part in args.lanes.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--lanes {args.lanes!r}: name gpu, cpu or both") from None
    if not lanes:
        raise ConfigError("--lanes names no lane")
    configure_logging(profile.log_level)
    from daemon.engine.node import serve_worker

    asyncio.run(serve_worker(profile, list(dict.fromkeys(lanes))))
    return 0


async def _engine(profile: ProfileSettings, action: str) -> int:
    from daemon.engine.connect import make_pool
    from daemon.engine.schema import check_schema, init_schema
    from daemon.errors import EngineUnavailable

    pool = make_pool(profile, max_size=1)
    try:
        await pool.open(wait=True, timeout=10)
        async with pool.connection() as conn:
            if action == "init":
                for line in await init_schema(conn) or ["schema is up to date"]:
                    print(line)
                return 0
            problem = await check_schema(conn)
    except (OSError, TimeoutError) as exc:
        raise EngineUnavailable(f"cannot reach the engine: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool", "procrastinate"):
            raise EngineUnavailable(f"cannot reach the engine: {exc}"[:500]) from None
        raise
    finally:
        await pool.close()
    if problem is not None:
        raise EngineUnavailable(problem)
    print("ok   engine schema")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    _, profile = _load(args)
    if profile.engine_url is None:
        raise ConfigError("engine_url (or SIR_CONVERT_A_LOT_ENGINE_URL) is not set")
    configure_logging("warning")
    return asyncio.run(_engine(profile, args.action))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sir-convert-a-lot",
        description="Hot-folder document conversion daemon.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, profile_required: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="TOML config file (default: $SIR_CONVERT_A_LOT_CONFIG or built-in)",
        )
        p.add_argument(
            "--profile",
            required=False,
            default=None,
            help="profile name (or $SIR_CONVERT_A_LOT_PROFILE)"
            + ("" if profile_required else "; default eval"),
        )
        return p

    add("run", "Run the daemon for one profile in the foreground.").set_defaults(func=cmd_run)
    p = add("check", "Validate configuration and readiness once; exit 0 only if it could serve.")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for warm workers")
    p.set_defaults(func=cmd_check)
    add("init", "Create the data-root layout of a profile.").set_defaults(func=cmd_init)
    p = add("convert", "Convert files once, without a watcher.", profile_required=False)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--to", required=True, choices=["md", "pdf", "docx"])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--gpu-policy", choices=GPU_POLICIES, default=None)
    p.set_defaults(func=cmd_convert)
    p = add("retry", "Move failed inputs back into the inbox.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files under failed/ (default: all)")
    p.set_defaults(func=cmd_retry)
    p = add("status", "Show the queue, in-flight jobs and recent failures of a running daemon.")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = add(
        "events",
        "Print the events journal (JSON lines; readable on a terminal), and follow it.",
    )
    p.add_argument("--since", type=int, default=0, metavar="SEQ", help="events after SEQ")
    p.add_argument("--follow", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    p.set_defaults(func=cmd_events)
    p = add(
        "models",
        "Provision (fetch) or inspect (check) docling's model artifacts.",
        profile_required=False,
    )
    p.add_argument("action", choices=["fetch", "check"])
    p.add_argument("--models-dir", default=None)
    p.set_defaults(func=cmd_models)
    p = add("worker", "Run an engine worker node: convert jobs of the shared engine.")
    p.add_argument("--lanes", default="gpu,cpu", help="comma list of lanes served (gpu, cpu)")
    p.set_defaults(func=cmd_worker)
    p = add("engine", "Create/upgrade (init) or verify (check) the engine's database schema.")
    p.add_argument("action", choices=["init", "check"])
    p.set_defaults(func=cmd_engine)
    p = add("schema", "Print the sidecar (or events) JSON Schema.", profile_required=False)
    p.add_argument("--events", action="store_true", help="the events journal's schema")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any thread or program starts: nothing the daemon runs (git, the
    # scanner, workers, pandoc) inherits the CAP_LEASE the unit grants it.
    keep_lease_to_ourselves()
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except SirError as exc:
        print(f"sir-convert-a-lot: {exc.code}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return result
