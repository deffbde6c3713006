"""Settling: deciding when a file in the inbox is complete and safe to read.

* A file that arrived by rename (rsync's final rename, ``mv``, ``os.replace``) is
  complete at once.
* A file written in place (cp, SMB, ``rsync --inplace``, a scanner) is ready
  only after a close-after-write (when the observer reports closes), a quiet
  window with no events, and a size and mtime that did not change during that
  window, as seen by our own repeated ``lstat`` calls.
* A file reported created that already holds data, with no write seen, was
  written before its folder was watched (``mkdir d && cp x d/``, unpacking an
  archive): its close may have been missed, so it settles like a scanned file,
  on the quiet window and stable size alone. Once a write is seen, a close is
  needed again. A created file that is still empty keeps waiting for a close.
* Whatever the events said, a file some process still holds open for writing
  is not ready. The caller asks the kernel (daemon/open_writers.py) about what
  ``due`` returns, and hands back what is still open with ``postpone``: it is
  due again after one more quiet, stable window, and asked again.

See docs/settling.md for what each kind of writer looks like here.

The tracker is pure logic over an injected clock and stat function, so it is
unit-tested without a filesystem.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Arrival", "SettleTracker", "StatKey"]

StatKey = tuple[int, int]  # (size, mtime_ns)
# An empty file with no close seen settles after this many quiet windows (at
# least this many seconds): its close may have happened before the watch.
EMPTY_GIVE_UP_FACTOR = 20


class Arrival(enum.Enum):
    RENAMED = "renamed"  # appeared by a rename into the inbox: complete
    CREATED = "created"  # created in place (its writes may predate our watch)
    WRITTEN = "written"  # data written in place: a close will follow
    CLOSED = "closed"  # a writer closed it after writing
    SCANNED = "scanned"  # found by a scan, no event seen


@dataclass
class _Pending:
    first_seen: float
    last_event: float
    renamed: bool
    closed: bool
    wrote: bool = False  # a data write was seen since the last close
    stat: StatKey | None = None
    stable_since: float = 0.0
    held: bool = False  # found open for writing when it was last due


class SettleTracker:
    def __init__(self, settle_seconds: float, *, require_close: bool) -> None:
        self.settle_seconds = settle_seconds
        self.require_close = require_close
        self._pending: dict[Path, _Pending] = {}
        self._taken: dict[Path, _Pending] = {}  # what the last ``due`` returned

    def __contains__(self, path: Path) -> bool:
        return path in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def held_count(self) -> int:
        """Waiting files that were found open for writing when last due."""
        return sum(1 for entry in self._pending.values() if entry.held)

    def oldest(self) -> float | None:
        return min((p.first_seen for p in self._pending.values()), default=None)

    def observe(self, path: Path, arrival: Arrival, now: float) -> None:
        entry = self._pending.get(path)
        if entry is None:
            entry = _Pending(first_seen=now, last_event=now, renamed=False, closed=False)
            self._pending[path] = entry
            if arrival is Arrival.SCANNED:
                # Nothing is known about how it got here: rely on the quiet window
                # and our own stat comparisons alone.
                entry.closed = True
        if arrival is Arrival.SCANNED:
            return
        entry.last_event = now
        if arrival is Arrival.RENAMED:
            entry.renamed = True
            entry.closed = True
        elif arrival is Arrival.CLOSED:
            entry.closed = True
            entry.wrote = False
        else:  # CREATED or WRITTEN: more data may come
            entry.renamed = False
            entry.closed = False
            entry.wrote = arrival is Arrival.WRITTEN
            entry.stat = None

    def forget(self, path: Path) -> None:
        self._pending.pop(path, None)

    def postpone(self, path: Path, now: float) -> bool:
        """``path``, returned by the last ``due``, is still open for writing: it
        waits for another quiet, stable window (a rename no longer makes it
        complete). Nothing happens if an event has tracked it again meanwhile.
        True the first time it is found held."""
        entry = self._taken.pop(path, None)
        if entry is None or path in self._pending:
            return False
        if entry.renamed:
            entry.renamed = False
            entry.closed = True
        entry.stable_since = now
        first = not entry.held
        entry.held = True
        self._pending[path] = entry
        return first

    def put_back(self, path: Path, now: float) -> None:
        """``path``, returned by the last ``due``, was not claimed (its lane is
        full, intake paused): due again at once, keeping what is known of it."""
        entry = self._taken.pop(path, None)
        if path in self._pending:
            return  # an event tracked it again meanwhile: that is fresher
        if entry is None:
            self.observe(path, Arrival.RENAMED, now)
            return
        entry.renamed = True
        self._pending[path] = entry

    def due(self, now: float, stat: Callable[[Path], StatKey | None]) -> list[Path]:
        """Paths that look complete now (no longer tracked, unless ``postpone``d).
        Vanished paths are forgotten."""
        ready: list[Path] = []
        for path, entry in list(self._pending.items()):
            current = stat(path)
            if current is None:
                self.forget(path)
                continue
            if entry.renamed:
                ready.append(path)
                continue
            if current != entry.stat:
                entry.stat = current
                entry.stable_since = now
                continue
            if self.require_close and not entry.closed and (entry.wrote or current[0] == 0):
                # Written while watched (the close will be seen), or created and
                # still empty. Data with no write seen predates the watch. An
                # empty file whose close predates the watch would wait forever:
                # after EMPTY_GIVE_UP_FACTOR quiet windows it settles (and fails
                # as empty, in failed/, rather than sitting unseen in the inbox).
                quiet_for = now - entry.last_event
                if entry.wrote or quiet_for < EMPTY_GIVE_UP_FACTOR * max(self.settle_seconds, 1):
                    continue
            quiet = now - entry.last_event >= self.settle_seconds
            stable = now - entry.stable_since >= self.settle_seconds
            if quiet and stable:
                ready.append(path)
        self._taken = {path: self._pending.pop(path) for path in ready}
        return ready
