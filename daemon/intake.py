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

from converters.base import Lane
from daemon.ignore import IgnoreRules
from daemon.layout import DataRoot, normalize_extension
from daemon.metrics import Metrics
from daemon.readiness import INTAKE_BLOCKERS, CheckResult
from daemon.settle import Arrival, SettleTracker, StatKey
from daemon.watcher import scan_inbox

__all__ = ["Intake"]

_LANE_CACHE = 4096


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
        self._ignored: set[Path] = set()
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
            if path not in self._ignored:
                self._ignored.add(path)
                self.metrics.files_ignored.labels(reason).inc()
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

    def _is_entry_dir(self, name: str) -> bool:
        return normalize_extension(name) in self._sources

    def walk_inbox(self, ignored: list[Path]) -> tuple[list[Path], set[Path]]:
        """The blocking half of ``rescan``: walk the inbox, and find which of
        ``ignored`` are gone (runs in a thread, touches no shared state)."""
        found = list(scan_inbox(self.root.inbox, self.ignore.skip_folder, self._is_entry_dir))
        return found, {p for p in ignored if not os.path.lexists(p)}

    def apply_scan(self, found: list[Path], gone_ignored: set[Path]) -> None:
        """The event-loop half of ``rescan``: feed a scan's findings to the tracker.
        Public so the bench can time what holds up the supervisor's ticks."""
        present = set(found)
        for path in found:
            if path not in self.tracker:
                self.on_event(Arrival.SCANNED, path)
        # Forget ignored files and detection times of files that are gone, so
        # years of rsync temp names do not accumulate in memory.
        self._ignored -= gone_ignored
        for path in [p for p in self._detected_at if p not in present and p not in self.tracker]:
            del self._detected_at[path]
        self.last_rescan = time.monotonic()

    async def rescan(self) -> None:
        found, gone = await asyncio.to_thread(self.walk_inbox, self.ignored_paths())
        self.apply_scan(found, gone)

    def ignored_paths(self) -> list[Path]:
        """The inbox paths ignored so far (a copy, for ``walk_inbox``)."""
        return list(self._ignored)

    def request_rescan(self) -> None:
        """Called when a folder was moved in whole: scan on the next tick."""
        self.rescan_requested = True

    def ignore_for_good(self, path: Path) -> None:
        """A path whose claim crashed: ignored until it is gone."""
        self._ignored.add(path)

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
