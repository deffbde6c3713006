"""Rescans of the inbox, out of the main process's way.

A rescan lists every entry of the inbox, and a big inbox is mostly idle files
the daemon keeps there on purpose (images beside documents, ignored names).
Walking 100,000 of them in a thread of the main process held the interpreter
lock for ~1 s every rescan, and every claim and publish waited for it: pick-up
p99 reached 0.84 s (issue 13). So the walk runs in a helper process,
``python -m daemon.scanner``, which also applies the ignore rules and
remembers what it found ignored last time. Each rescan it answers one
``ScanReply`` (daemon/wire.py): every entry that could be a job (few: they
become jobs and leave), the ignored entries that are new since its last scan
and the ignored entries that are gone. The main process's share of a rescan
is then proportional to what changed, not to the size of the inbox.

``InboxScan`` is that state machine; the helper runs it, and the main process
runs the very same one in a thread when it has no helper (``check``,
``convert``, a helper that died and is being replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon.ignore import IgnoreRules
from daemon.layout import normalize_extension
from daemon.watcher import scan_inbox
from daemon.wire import LINE_LIMIT, ScanReply, ScanSetup, WireError, decode

__all__ = ["HELPER_NICE", "IgnoredEntries", "InboxScan", "ScannerProcess", "main"]

# The helper's priority: a rescan is background work, never ahead of a job.
HELPER_NICE = 5


def _line(reply: ScanReply) -> bytes:
    # The standard library's encoder: a file name that is not UTF-8 (a lone
    # surrogate after os.fsdecode) travels as an escape and comes back intact.
    return json.dumps(reply.model_dump(mode="json")).encode() + b"\n"


class InboxScan:
    """One inbox's rescans: what could be a job, and what changed among the ignored."""

    def __init__(self, setup: ScanSetup) -> None:
        self.inbox = Path(setup.inbox)
        self.rules = IgnoreRules(
            tuple(setup.ignore_patterns), tuple(setup.ignore_dirs), tuple(setup.asset_extensions)
        )
        self._entry_dirs = frozenset(setup.entry_dir_extensions)
        self._ignored: set[str] = set()

    def _is_entry_dir(self, name: str) -> bool:
        return normalize_extension(name) in self._entry_dirs

    def scan(self) -> ScanReply:
        started = time.monotonic()
        candidates: list[str] = []
        new_ignored: list[tuple[str, str]] = []
        present: set[str] = set()
        known = self._ignored
        prefix = len(str(self.inbox)) + 1
        entries = 0
        for raw in scan_inbox(self.inbox, self.rules.skip_folder, self._is_entry_dir):
            entries += 1
            if raw in known:
                present.add(raw)
                continue
            reason = self.rules.reason_for_parts(raw[prefix:].split("/"))
            if reason is None:
                candidates.append(raw)
            else:
                present.add(raw)
                new_ignored.append((raw, reason))
        vanished = sorted(known - present)
        self._ignored = present
        return ScanReply(
            candidates=candidates,
            ignored=new_ignored,
            vanished=vanished,
            entries=entries,
            seconds=round(time.monotonic() - started, 4),
        )


class IgnoredEntries:
    """The main process's memory of ignored inbox entries: each is counted once
    (``count(reason, n)``), events for it are dropped cheaply, and it is forgotten
    once gone, so years of rsync temp names do not accumulate. Kept as strings:
    making 100,000 ``Path`` objects from a first scan took seconds."""

    def __init__(self, count: Callable[[str, int], None]) -> None:
        self._count = count
        self._paths: set[str] = set()
        # Ignored by the main process itself (events, crashed claims) and not
        # reported by a scan since: a scan's ``vanished`` cannot cover those.
        self._unscanned: set[str] = set()

    def __contains__(self, path: Path) -> bool:
        return str(path) in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def add(self, path: Path, reason: str | None) -> None:
        """Ignore ``path`` from now on; ``reason`` (a metric label) counts it once,
        ``None`` ignores it uncounted (a claim that crashed)."""
        raw = str(path)
        self._unscanned.add(raw)
        if raw not in self._paths:
            self._paths.add(raw)
            if reason is not None:
                self._count(reason, 1)

    def apply(self, reply: ScanReply, *, fresh_helper: bool) -> None:
        if fresh_helper:
            # A new helper knows nothing of what was ignored before it started.
            self._unscanned |= self._paths
        counts: dict[str, int] = {}
        known = self._paths
        for raw, reason in reply.ignored:
            if raw not in known:
                known.add(raw)
                counts[reason] = counts.get(reason, 0) + 1
        if self._unscanned:
            self._unscanned.difference_update(raw for raw, _ in reply.ignored)
        for reason, count in counts.items():
            self._count(reason, count)
        known.difference_update(reply.vanished)

    async def forget_gone(self) -> None:
        """Forget the unscanned ignored entries that are gone (in a thread: few,
        unless a helper was just replaced)."""
        if not self._unscanned:
            return
        candidates = list(self._unscanned)
        gone = await asyncio.to_thread(lambda: {p for p in candidates if not os.path.lexists(p)})
        self._unscanned -= gone
        self._paths -= gone


class ScannerProcess:
    """The main process's handle on the helper: start it, ask for a scan, stop it."""

    argv: tuple[str, ...] = (sys.executable, "-m", "daemon.scanner")

    def __init__(self, setup: ScanSetup) -> None:
        self.setup = setup
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def _start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT * 8,
        )
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, HELPER_NICE)
        await self._send(self.setup.model_dump_json().encode() + b"\n")

    async def _send(self, line: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()

    async def scan(self, timeout: float) -> tuple[ScanReply, bool]:
        """One rescan by the helper, started (or restarted) as needed. ``True`` with a
        reply from a fresh helper: it knows nothing of earlier scans. Raises ``OSError``
        or ``WireError`` when the helper cannot answer (it is then stopped)."""
        fresh = self.proc is None or self.proc.returncode is not None
        try:
            if fresh:
                await self._start()
            assert self.proc is not None and self.proc.stdout is not None
            await self._send(b'"scan"\n')
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise WireError("the scanner exited")
            # Off the loop: a first scan lists every ignored entry (megabytes).
            return await asyncio.to_thread(decode, line, ScanReply), fresh
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.stop()
            if isinstance(exc, WireError | OSError):
                raise
            raise WireError(f"{type(exc).__name__}: {exc}"[:200]) from None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the helper exits at the end of its input
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def main(stdin: Callable[[], bytes] | None = None) -> int:
    """The helper: one ``ScanSetup`` line, then one ``ScanReply`` per request line.
    It ends at the end of its input, which is also how it notices the daemon died."""
    read = stdin or sys.stdin.buffer.readline
    out = sys.stdout.buffer
    first = read()
    if not first:
        return 0
    scan = InboxScan(decode(first, ScanSetup))
    while read():
        out.write(_line(scan.scan()))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
