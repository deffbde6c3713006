"""A minimal inotify reader (ctypes): timestamps of renames seen in watched folders.

The harness needs the moment the daemon claims a file (the input leaves the
inbox by a rename: ``IN_MOVED_FROM``) and the moment a sidecar is published
(it is renamed into the outbox: ``IN_MOVED_TO``). A thread blocks on the
inotify descriptor and stamps each event with ``time.monotonic()`` as it is
read, so the measurement is external to the daemon and costs it nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "Event",
    "Inotify",
]

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
_IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic() when read
    folder: Path
    name: str
    mask: int


class Inotify:
    """Watch folders (not recursive); ``events`` grows while the thread runs."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._fd = int(libc.inotify_init1(_IN_CLOEXEC))
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._folders: dict[int, Path] = {}
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self.overflowed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-inotify", daemon=True)

    def watch(self, folder: Path, mask: int) -> None:
        wd = self._add(self._fd, os.fsencode(folder), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
        self._folders[int(wd)] = folder

    def start(self) -> Inotify:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            data = os.read(self._fd, 1 << 20)
            now = time.monotonic()
            batch: list[Event] = []
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                    continue
                folder = self._folders.get(wd)
                if folder is not None:
                    batch.append(Event(now, folder, os.fsdecode(raw), mask))
            with self._lock:
                self._events.extend(batch)

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def first(self, folder: Path, name: str, mask: int) -> float | None:
        """When ``name`` first had an event of ``mask`` in ``folder``, if it has."""
        with self._lock:
            for event in self._events:
                if event.mask & mask and event.name == name and event.folder == folder:
                    return event.at
        return None

    def count(self, folder: Path, mask: int, suffix: str = "") -> int:
        with self._lock:
            return sum(
                1
                for e in self._events
                if e.mask & mask and e.folder == folder and e.name.endswith(suffix)
            )
