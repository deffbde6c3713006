"""The worker process: builds its lane's converters once, warms them, serves jobs.

Started by the main process as ``python -m daemon.worker``. It speaks the
typed wire (daemon/wire.py): one ``Hello`` on stdin, one ``Ready`` reply, then
a ``JobRequest`` per line and a ``JobReply`` per line. Conversion libraries
write to stdout freely, so the protocol uses a private copy of the original
stdout and fd 1 is pointed at stderr.
Heavy imports (docling, torch, weasyprint) happen here, never in the main process.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel

    from converters.dropfolder import DropFolder

__all__ = ["main"]

# Only the standard library is imported before ``_die_with_daemon`` has run:
# a daemon killed while its worker is still starting must not leave an orphan
# that imports, warms up and races its successor (test_chaos, long mode, found
# four of them after the wire became pydantic models).

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def _protocol_stream() -> IO[str]:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr (the journal)
    sys.stdout = sys.stderr
    return os.fdopen(out_fd, "w", buffering=1, encoding="utf-8")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _expected_parent() -> int:
    """The daemon's pid, from ``--parent PID`` (WorkerProcess passes it): read
    before anything else, it tells a daemon that died during our start-up from
    one still alive, which ``getppid()`` alone cannot once we were re-parented."""
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "--parent" and args[1].isdigit():
        return int(args[1])
    return os.getppid()


def _die_with_daemon() -> None:
    """Linux: end this worker, and whatever it started, when the daemon dies.

    A daemon killed with SIGKILL cannot stop its workers; without this a worker
    would finish its job (or its warm-up) as an orphan, racing the restarted
    daemon over the same job folder, and a pandoc child would run on for up to
    its own timeout. The kernel sends SIGTERM when the parent exits; the handler
    kills the worker's whole process group (the worker leads it), children too.
    """
    parent = _expected_parent()

    def on_parent_death(signum: int, frame: object) -> None:
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_parent_death)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the closed stdin still ends an idle worker
    if os.getppid() != parent:  # the daemon died before prctl took effect
        on_parent_death(signal.SIGTERM, None)


def _send(stream: IO[str], message: BaseModel) -> None:
    """One line, every string and the whole line cut to size (daemon/wire.py)."""
    from daemon.wire import encode

    stream.write(encode(message).decode())
    stream.flush()


@functools.cache
def _empty_folder() -> str:
    return tempfile.mkdtemp(prefix="sir-no-drop-")


def _resources(drop_folder: DropFolder) -> dict[str, str] | None:
    """What the job read beside its document, for reuse (``JobReply.resources``)."""
    from daemon.wire import MAX_FIELD_CHARS, MAX_RESOURCE_BYTES, MAX_RESOURCES

    if len(drop_folder.reads) > MAX_RESOURCES or drop_folder.read_bytes > MAX_RESOURCE_BYTES:
        return None
    found = {
        base64.b64encode(os.fsencode(path)).decode("ascii"): outcome
        for path, outcome in drop_folder.reads.items()
    }
    if any(len(key) > MAX_FIELD_CHARS for key in found):
        return None  # a name the wire would cut: such a conversion is not kept
    return found


def _drop_folder(channel: socket.socket | None, wanted: bool) -> DropFolder:
    """The job's drop folder: the descriptor the daemon sent with it.

    A job sent without one (none could be opened: the folder was gone) gets an
    empty private folder, so the document renders and loads nothing. Any extra
    descriptor that arrived is closed unused.
    """
    from converters.dropfolder import DropFolder

    if wanted and channel is not None:
        _, fds, _, _ = socket.recv_fds(channel, 1, 4, socket.MSG_CMSG_CLOEXEC)
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            try:
                return DropFolder(fds[0])
            except OSError:
                os.close(fds[0])
    return DropFolder.open(Path(_empty_folder()))


def _limit_data(megabytes: int | None) -> None:
    """The lane's hard cap (``RLIMIT_DATA``), inherited by pandoc; see LaneSettings.

    Counts private writable memory, so an allocation past it fails at once
    (``MemoryError``, or pandoc's heap error) instead of growing the machine
    into the OOM killer. Never sent for the GPU lane: CUDA and ROCm map their
    own regions, and a cap there breaks them in ways no test here can show.
    """
    if megabytes is not None and megabytes > 0:
        cap = megabytes * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def main() -> int:
    _die_with_daemon()
    proto = _protocol_stream()
    from converters._docling import force_offline
    from daemon.wire import Hello, JobReply, JobRequest, Problem, Ready, decode

    # Offline for good: no hub downloads, ever, in the worker (one definition, in _docling).
    force_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from converters.base import (
        ConversionRequest,
        Lane,
        WorkerContext,
    )
    from converters.errors import ConverterFailed, SirError
    from converters.outputs import ignored_options
    from converters.registry import default_registry
    from converters.sniff import check_input
    from converters.warning_codes import WarningCode
    from daemon.errors import ResourceLimitExceeded
    from daemon.sidecar import companion_paths

    hello = decode(sys.stdin.buffer.readline(), Hello)
    _limit_data(hello.data_limit_mb)
    lane = hello.lane
    models_dir = Path(hello.models_dir) if hello.models_dir else None
    limits = hello.limits
    channel = socket.socket(fileno=hello.fd_channel) if hello.fd_channel is not None else None
    registry = default_registry()
    converters = registry.in_lane(lane)
    if hello.routes is not None:  # an express worker warms only its cheap routes
        converters = [c for c in converters if str(c.route) in hello.routes]

    started = time.monotonic()
    startup_error: SirError | None = None
    lane_warnings: list[str] = []
    ctx = WorkerContext(
        gpu_policy=hello.gpu_policy,
        models_dir=models_dir,
        limits=limits,
        device="cpu",
        runtime_kind="none",
    )
    probe: dict[str, object] | None = None
    if lane is Lane.GPU:
        from converters.gpu import probe_torch, select_device

        torch_probe = probe_torch()
        probe = torch_probe.as_dict()
        try:
            device, lane_warnings = select_device(hello.gpu_policy, torch_probe)
        except SirError as exc:
            # Every job on this worker fails with it; readiness's gpu check says why.
            startup_error, device = exc, "cpu"
        ctx = WorkerContext(
            gpu_policy=hello.gpu_policy,
            models_dir=models_dir,
            limits=limits,
            device=device,
            runtime_kind=torch_probe.runtime_kind,
            device_name=torch_probe.device_name if device == "cuda" else None,
        )
    problems: dict[str, list[Problem]] = {}
    versions: dict[str, dict[str, str]] = {}
    for conv in converters:
        route = str(conv.route)
        try:
            versions[route] = conv.versions()
            problems[route] = [Problem.of(p) for p in conv.problems(ctx)]
            if not problems[route] and startup_error is None:
                conv.warm(ctx)
        except SirError as exc:
            problems[route] = [Problem.of(exc)]
        except Exception as exc:  # a broken library must not kill the lane
            problems[route] = [
                Problem.of(ConverterFailed(f"warm-up failed: {type(exc).__name__}: {exc}"))
            ]
    _send(
        proto,
        Ready(
            pid=os.getpid(),
            lane=lane,
            warm=True,
            warm_seconds=round(time.monotonic() - started, 3),
            device=ctx.device,
            runtime_kind=ctx.runtime_kind,
            device_name=ctx.device_name,
            probe=probe,
            problems=problems,
            versions=versions,
        ),
    )

    for line in sys.stdin.buffer:
        job = decode(line, JobRequest)
        t0 = time.monotonic()
        drop_folder = _drop_folder(channel, job.drop_fd)
        try:
            if startup_error is not None:
                raise startup_error
            conv = registry.get(job.source, job.target)
            input_path = Path(job.input_path)
            # Each PDF route opens its PDF itself, once (converters.sniff.inspect_pdf).
            check_input(input_path, job.source, limits, open_pdf=False)
            request = ConversionRequest(
                input_path=input_path,
                output_path=Path(job.output_path),
                options=job.options,
                drop_folder=drop_folder,
                companions=companion_paths(Path(job.output_path)),
            )
            result = conv.convert(request, ctx)
            if not request.output_path.is_file():
                raise ConverterFailed(f"{conv.name} reported success but wrote no output")
            ignored = ignored_options(conv.route, job.options)
            reply = JobReply(
                ok=True,
                warnings=sorted(
                    set(lane_warnings + result.warnings)
                    | ({WarningCode.OPTION_IGNORED} if ignored else set())
                ),
                pages=result.pages,
                files=[
                    path.name
                    for path in (request.output_path, *request.companions.values())
                    if path.exists()
                ],
                pages_converted=result.pages_converted,
                pdf_variant=result.pdf_variant,
                device=result.device or ctx.device,
                converter=conv.name,
                versions=versions.get(str(conv.route), {}),
                resources=_resources(drop_folder),
            )
        except SirError as exc:
            reply = JobReply.failed(exc)
        except MemoryError:
            # The lane's hard cap (or the machine) refused an allocation; the
            # pool replaces this worker after such a reply.
            reply = JobReply.failed(
                ResourceLimitExceeded(
                    "the conversion ran out of memory (the lane's hard memory cap)"
                )
            )
        except Exception as exc:
            reply = JobReply.failed(ConverterFailed(f"{type(exc).__name__}: {exc}"[:2000]))
        finally:
            drop_folder.close()
        reply = reply.model_copy(
            update={
                "convert_seconds": round(time.monotonic() - t0, 4),
                "rss_mb": round(_rss_mb(), 1),
            }
        )
        _send(proto, reply)
    # stdin closed: the daemon wants us gone. Skip the interpreter's slow
    # teardown of torch and friends; every reply was already flushed.
    proto.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
