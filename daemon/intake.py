"""What waits in the inbox, from its detection to its claim.

The watcher's events and the periodic scans feed the settle tracker through
``Intake``: it skips what the ignore rules say (counted once per path), notes
when each file was first seen (the sidecar's ``detected_at``), and knows which
lane a waiting file will need. Readiness decides whether intake is paused
(``pause_for``): a full or unwritable data root, or another profile's data root,
stops new claims until it passes again. The service's supervisor claims what
is due while intake runs and its lane has room.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from converters.base import Lane
from daemon.ignore import IgnoreRules
from daemon.layout import DataRoot
from daemon.metrics import Metrics
from daemon.readiness import INTAKE_BLOCKERS, CheckResult
from daemon.scanner import IgnoredEntries, InboxScan, ScannerProcess
from daemon.settle import Arrival, SettleTracker, StatKey
from daemon.wire import ScanReply, ScanSetup, WireError

__all__ = ["RESCAN_TIMEOUT_SECONDS", "Intake"]

log = structlog.get_logger("sir_convert_a_lot.intake")

_LANE_CACHE = 4096
# The longest one walk of the inbox by the helper may take before it is replaced.
RESCAN_TIMEOUT_SECONDS = 300.0


class Intake:
    def __init__(
        self,
        root: DataRoot,
        ignore: IgnoreRules,
        tracker: SettleTracker,
        metrics: Metrics,
        *,
        sources: set[str],
        lane_of: Callable[[Path], Lane],
    ) -> None:
        """``sources``: the extensions a route reads (a folder named so is an entry);
        ``lane_of``: the lifecycle's lane for an inbox path (uncached)."""
        self.root = root
        self.ignore = ignore
        self.tracker = tracker
        self.metrics = metrics
        self._sources = sources
        self._lane_of = lane_of
        self._detected_at: dict[Path, datetime] = {}
        self._ignored = IgnoredEntries(self._count_ignored)
        self._local_scan = InboxScan(self.scan_setup())
        # The rescan helper process (daemon/scanner.py); started by the daemon only
        # (``start_scanner``): ``check`` and ``convert`` scan in a thread.
        self.scanner: ScannerProcess | None = None
        self._lanes: dict[tuple[str, str], Lane] = {}
        self.last_rescan: float | None = None
        self.rescan_requested = False
        # Set by readiness (any evaluation): why no file is claimed.
        self.paused_reason: str | None = None

    # -- detection -----------------------------------------------------------------

    def on_event(self, arrival: Arrival, path: Path) -> None:
        if path in self._ignored:
            # Counted once already; being ignored depends on the path alone. This
            # keeps rescans of inboxes full of idle assets cheap (ops/bench scan).
            return
        try:
            relative = self.root.inbox_relative(path)
        except ValueError:
            return
        reason = self.ignore.reason(relative)
        if reason is not None:
            self._ignored.add(path, reason)
            return
        if path not in self.tracker:
            self._detected_at.setdefault(path, datetime.now(UTC))
            self.metrics.files_detected.inc()
        try:
            st = os.lstat(path)
        except OSError:  # gone, or a folder on the way became a file or a link
            self.tracker.forget(path)
            return
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            # Nothing to wait for: it will be refused unread. (A hard link made
            # with ln(1) is never closed after a write, so it would never settle.)
            arrival = Arrival.RENAMED
        self.tracker.observe(path, arrival, time.monotonic())

    def _count_ignored(self, reason: str, count: int) -> None:
        self.metrics.files_ignored.labels(reason).inc(count)

    def scan_setup(self) -> ScanSetup:
        """What the scan (helper process or thread) needs to know of the rules."""
        return ScanSetup(
            inbox=str(self.root.inbox),
            ignore_patterns=list(self.ignore.patterns),
            ignore_dirs=list(self.ignore.dirs),
            asset_extensions=list(self.ignore.asset_extensions),
            entry_dir_extensions=sorted(self._sources),
        )

    def start_scanner(self) -> None:
        self.scanner = ScannerProcess(self.scan_setup())

    async def stop_scanner(self) -> None:
        if self.scanner is not None:
            await self.scanner.stop()

    def apply_scan(self, reply: ScanReply, *, fresh_helper: bool = False) -> None:
        """The event-loop half of ``rescan``: feed a scan's findings to the tracker.
        Its cost follows what changed since the last scan, not the inbox's size.
        Public so the bench can time what holds up the supervisor's ticks."""
        self._ignored.apply(reply, fresh_helper=fresh_helper)
        found = [Path(raw) for raw in reply.candidates]
        for path in found:
            if path not in self.tracker:
                self.on_event(Arrival.SCANNED, path)
        # Forget detection times of files that are gone, so years of rsync temp
        # names do not accumulate in memory.
        present = set(found)
        for path in [p for p in self._detected_at if p not in present and p not in self.tracker]:
            del self._detected_at[path]
        self.last_rescan = time.monotonic()

    async def rescan(self) -> None:
        """Scan the inbox: by the helper process when the daemon runs, else (``check``,
        ``convert``, a helper that failed) by the same code in a thread."""
        reply: ScanReply | None = None
        fresh = False
        if self.scanner is not None:
            try:
                reply, fresh = await self.scanner.scan(RESCAN_TIMEOUT_SECONDS)
            except (OSError, WireError) as exc:
                log.warning("rescan_helper_failed", error=str(exc)[:200])
                self.metrics.internal_errors.labels("rescan").inc()
        if reply is None:
            reply = await asyncio.to_thread(self._local_scan.scan)
            fresh = self.scanner is not None  # it did not see the helper's scans
        self.apply_scan(reply, fresh_helper=fresh)
        await self._ignored.forget_gone()

    def is_ignored(self, path: Path) -> bool:
        return path in self._ignored

    def request_rescan(self) -> None:
        """Called when a folder was moved in whole: scan on the next tick."""
        self.rescan_requested = True

    def ignore_for_good(self, path: Path) -> None:
        """A path whose claim crashed: ignored until it is gone."""
        self._ignored.add(path, None)

    def detected_at(self, path: Path) -> datetime:
        """When ``path`` was first seen (forgotten here: it is being claimed)."""
        return self._detected_at.pop(path, datetime.now(UTC))

    # -- claiming --------------------------------------------------------------------

    @staticmethod
    def stat(path: Path) -> StatKey | None:
        try:
            st = os.lstat(path)
        except OSError:  # gone, or a folder on the way became a file or a link
            return None
        return (st.st_size, st.st_mtime_ns)

    def still_open(self, path: Path, detected: datetime) -> None:
        """The claim found ``path`` still open for writing (daemon/open_writers.py):
        it waits on, keeping when it was first seen; logged the first time."""
        self._detected_at[path] = detected
        if self.tracker.postpone(path, time.monotonic()):
            log.info("input_held_open", input=str(path))

    def lane_for(self, path: Path) -> Lane:
        """``lifecycle.lane_for``, remembered per (folder, extension), which is all a
        lane depends on. Every waiting file is looked at on every tick: with 10,000
        files queued the uncached lookups took the supervisor ~0.7 s a tick."""
        folder, _, name = str(path).rpartition("/")
        dot = name.rfind(".")  # the same rule as PurePath.suffix
        key = (folder, name[dot + 1 :].lower() if 0 < dot < len(name) - 1 else "")
        lane = self._lanes.get(key)
        if lane is None:
            if len(self._lanes) >= _LANE_CACHE:
                self._lanes.clear()
            lane = self._lanes[key] = self._lane_of(path)
        return lane

    def pause_for(self, results: list[CheckResult]) -> str | None:
        """Readiness's verdict: the first failing intake blocker pauses claims."""
        self.paused_reason = next(
            (r.code for r in results if not r.ok and r.code in INTAKE_BLOCKERS), None
        )
        return self.paused_reason
