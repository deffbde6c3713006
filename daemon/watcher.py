"""Detection: watchdog observers feeding the settle tracker, plus full scans.

The observer thread only forwards ``(arrival, path)`` pairs into the event loop;
every decision is taken there. Scans (at start-up and periodically) catch what
events missed: files that arrived while the daemon was down, lost events, and
folders moved in whole.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from daemon.settle import Arrival

__all__ = ["InboxWatcher", "scan_inbox"]

Sink = Callable[[Arrival, Path], None]

# watchdog holds every IN_MOVED_FROM for 0.5 s, hoping to pair it with its
# IN_MOVED_TO, in a FIFO queue: each claim (a move out of the inbox, never
# paired) then delays every later event by up to 0.5 s, so files arriving in a
# busy inbox were picked up ~0.45 s late (ops/bench). The kernel queues both
# halves of a rename back to back, so a short hold pairs them just as well; an
# unpaired half is harmless here (a destination still counts as renamed in).
MOVE_PAIRING_SECONDS = 0.02


def _shorten_move_pairing() -> None:
    import importlib

    for module, name in (
        ("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),  # >= 7
        ("watchdog.observers.inotify_buffer", "InotifyBuffer"),  # 4..6
    ):
        try:
            holder = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        holder.delay = MOVE_PAIRING_SECONDS
        return


def _as_path(raw: str | bytes) -> Path:
    return Path(os.fsdecode(raw))


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Sink, rescan: Callable[[], None]):
        self._loop = loop
        self._sink = sink
        self._rescan = rescan

    def _emit(self, arrival: Arrival, raw: str | bytes) -> None:
        self._loop.call_soon_threadsafe(self._sink, arrival, _as_path(raw))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirMovedEvent):
            # A folder moved in whole: its files arrived by rename; scan them.
            self._loop.call_soon_threadsafe(self._rescan)
        elif isinstance(event, FileMovedEvent):
            if event.dest_path:  # empty when it was moved out of the inbox
                self._emit(Arrival.RENAMED, event.dest_path)
        elif isinstance(event, FileClosedEvent):
            self._emit(Arrival.CLOSED, event.src_path)
        elif isinstance(event, FileCreatedEvent):
            self._emit(Arrival.CREATED, event.src_path)
        elif isinstance(event, FileModifiedEvent):
            self._emit(Arrival.WRITTEN, event.src_path)


class InboxWatcher:
    def __init__(self, inbox: Path, *, polling: bool, polling_interval: float) -> None:
        self.inbox = inbox
        self.polling = polling
        self._started = False
        if not polling:
            _shorten_move_pairing()
        self._observer: BaseObserver = (
            PollingObserver(timeout=polling_interval)
            if polling
            # Full events: a file moved in from outside the inbox is reported as a
            # move (complete), not as a creation (which would wait for a close).
            else InotifyObserver(generate_full_events=True)
        )

    @property
    def reports_closes(self) -> bool:
        """Only inotify tells us when a writer closed a file."""
        return not self.polling

    def start(
        self, loop: asyncio.AbstractEventLoop, sink: Sink, rescan: Callable[[], None]
    ) -> None:
        self._observer.schedule(_Handler(loop, sink, rescan), str(self.inbox), recursive=True)
        self._observer.start()
        self._started = True

    def alive(self) -> bool:
        return self._observer.is_alive()

    def stop(self) -> None:
        """Stop the observer; a no-op when it never started (``check``, ``convert``)."""
        if not self._started:
            return
        self._observer.stop()
        self._observer.join(timeout=5)


def scan_inbox(
    inbox: Path, skip_folder: Callable[[str], bool], is_entry_dir: Callable[[str], bool]
) -> Iterator[str]:
    """The path of every entry that could be a job: files, symlinks, FIFOs, and
    folders that look like documents (``x.pdf/``). Never follows symlinks.
    Strings, not ``Path`` objects: making one per entry doubled a big rescan."""
    stack = [str(inbox)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                # The directory entry's type, without an lstat on most filesystems:
                # a rescan of 100k idle files takes less than half the time.
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and not is_entry_dir(entry.name):
                if not skip_folder(entry.name):
                    stack.append(entry.path)
            else:
                yield entry.path
