"""Shared helpers for the writer suites: inputs, writers, and the "converted once" checks.

Every writer case ends with the same three checks (``assert_converted_once``):
exactly one output for the name, no ``name~2`` duplicate, and a sidecar whose
``input.sha256`` is the sha256 of the file as its writer finally wrote it. A
conversion of a half-written file shows up as a wrong sha, or as a second output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.fixtures.daemon import Daemon, sha

__all__ = [
    "LONG",
    "assert_converted_once",
    "big_markdown",
    "outputs_for",
    "sha",
    "sha_bytes",
    "sidecars_in",
    "started_daemon",
    "slow_write",
    "small_markdown",
    "wait_idle",
]

# SIR_CONVERT_A_LOT_TEST_LONG=1 scales the suites up (bigger files, bigger bursts).
LONG = os.environ.get("SIR_CONVERT_A_LOT_TEST_LONG") == "1"


def sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_markdown(tag: str) -> bytes:
    return f"# {tag}\n\nSome *text* for {tag}.\n\n- one\n- two\n".encode()


def big_markdown(size: int, tag: str) -> bytes:
    """About ``size`` bytes of Markdown that pandoc converts fast (one long code block):
    the suites test writers, not the converter."""
    line = "abcdefghij" * 7
    count = max(1, size // (len(line) + 10))
    body = "".join(f"{i:08d} {line}\n" for i in range(count))
    return f"# {tag}\n\n```\n{body}```\n\nend of {tag}\n".encode()


def slow_write(
    path: Path,
    chunks: Sequence[bytes],
    pauses: Sequence[float],
    mode: Literal["held", "append"],
) -> bytes:
    """Write ``chunks`` to ``path`` with ``pauses[i]`` seconds after chunk ``i``.

    ``held`` keeps one file descriptor open for the whole write (flushing each
    chunk); ``append`` opens, appends and closes the file for every chunk.
    Returns every byte written, in order.
    """
    written = b""
    if mode == "held":
        with path.open("wb") as fh:
            for chunk, pause in zip(chunks, pauses, strict=True):
                fh.write(chunk)
                fh.flush()
                written += chunk
                time.sleep(pause)
    else:
        for chunk, pause in zip(chunks, pauses, strict=True):
            with path.open("ab") as fh:
                fh.write(chunk)
            written += chunk
            time.sleep(pause)
    return written


def outputs_for(daemon: Daemon, output_relative: str) -> list[str]:
    """Published outputs for one wanted output name: ``x.docx``, ``x~2.docx``, …"""
    wanted = Path(output_relative)
    folder = daemon.outbox / wanted.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(wanted.stem)}(~\d+)?{re.escape(wanted.suffix)}$")
    return sorted(p.name for p in folder.iterdir() if pattern.match(p.name))


def _inbox_candidates(daemon: Daemon) -> list[str]:
    """Files still in the inbox that the daemon should pick up (not hidden, not temp)."""
    found = []
    for path in daemon.inbox.rglob("*"):
        relative = path.relative_to(daemon.inbox)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and not path.name.endswith(".tmp"):
            found.append(str(relative))
    return sorted(found)


def wait_idle(daemon: Daemon, timeout: float = 180.0) -> None:
    """Wait until nothing is pending, claimed or left in the inbox, twice in a row
    across more than the settle window (so a late duplicate would have shown up)."""
    deadline = time.monotonic() + timeout
    idle_once = False
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, status = daemon.get("/status")
        jobs = list((daemon.root / ".state" / "jobs").iterdir())
        left = _inbox_candidates(daemon)
        state = {"pending": status.get("pending_in_inbox"), "jobs": len(jobs), "inbox": left}
        if status.get("pending_in_inbox") == 0 and not jobs and not left:
            if idle_once:
                return
            idle_once = True
            time.sleep(1.5)
            continue
        idle_once = False
        time.sleep(0.2)
    raise AssertionError(f"daemon not idle after {timeout} s: {state}\n{daemon.tail()}")


def assert_converted_once(
    daemon: Daemon, output_relative: str, input_sha: str, timeout: float = 180.0
) -> dict[str, Any]:
    """The three checks of every writer case; returns the sidecar."""
    car = daemon.sidecar(output_relative, timeout)
    assert car["status"] == "succeeded", car
    assert outputs_for(daemon, output_relative) == [Path(output_relative).name], (
        f"expected exactly one output for {output_relative}"
    )
    assert car["input"]["sha256"] == input_sha, (
        f"{output_relative} was converted from a different (partial?) input"
    )
    out = daemon.outbox / output_relative
    assert sha(out) == car["output"]["sha256"]
    return car


def sidecars_in(daemon: Daemon, folder: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((daemon.outbox / folder).glob("*.meta.json"))]


def started_daemon(base: Path, models_dir: Path, extra_config: str = "") -> Iterator[Daemon]:
    """Body of a module-scoped fixture: one started eval daemon (settle 0.5 s) shared
    by a module's tests, each in its own inbox folder; stopped cleanly at the end."""
    daemon = Daemon(base, extra_config=extra_config, models_dir=models_dir)
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            assert daemon.stop() == 0, daemon.tail()
