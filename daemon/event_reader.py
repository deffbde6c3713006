"""Reading the events journal (daemon/events.py) after a seq, across segments,
and following it: for ``sir-convert-a-lot events``, ``GET /events`` and the
webhook sender. Readers only open the files; the daemon is the one writer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from daemon.events import Event, Gap, parse_line, segment_files

__all__ = ["JournalReader"]


class JournalReader:
    """Reads events after a seq, across segments, and follows new ones.

    Keeps its position (segment and offset), so following costs one ``read``
    per poll. A seq that was rotated away is reported once as a ``Gap``.
    """

    def __init__(self, folder: Path, after: int = 0) -> None:
        self.folder = folder
        self.after = after
        self._path: Path | None = None
        self._offset = 0
        self._partial = b""

    def poll(self) -> tuple[Gap | None, list[Event]]:
        """What was written since the last poll (blocking; small reads)."""
        segments = segment_files(self.folder)
        if not segments:
            return None, []
        gap: Gap | None = None
        if self._path is None or not self._path.exists():
            gap, start = self._locate(segments)
            if start is None:
                return gap, []
            self._path, self._offset, self._partial = start, 0, b""
        events: list[Event] = []
        while True:
            events.extend(self._read_current())
            # Listed before reading: with a later segment there, this one was complete.
            later = [p for _, p in segments if p.name > self._path.name]
            if not later:
                break
            self._path, self._offset, self._partial = later[0], 0, b""
        return gap, events

    def _locate(self, segments: list[tuple[int, Path]]) -> tuple[Gap | None, Path | None]:
        first_seq, first_path = segments[0]
        first = _first_event(first_path)
        available = first.seq if first is not None else first_seq
        gap = Gap(self.after, available) if self.after + 1 < available else None
        start = first_path
        for seq, path in segments:
            if seq <= self.after + 1:
                start = path
        return gap, start

    def _read_current(self) -> list[Event]:
        assert self._path is not None
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for its end
        out: list[Event] = []
        for line in lines:
            event = parse_line(line) if line.strip() else None
            if event is not None and event.seq > self.after:
                out.append(event)
                self.after = event.seq
        return out

    def follow(
        self, *, interval: float = 0.2, stop: Callable[[], bool] = lambda: False
    ) -> Iterator[Gap | Event]:
        """Every event after ``after``, then new ones as they come, until ``stop()``."""
        while True:
            gap, events = self.poll()
            if gap is not None:
                yield gap
            yield from events
            if stop():
                return
            if not events:
                time.sleep(interval)


def _first_event(path: Path) -> Event | None:
    try:
        with path.open("rb") as f:
            for line in f:
                if (event := parse_line(line)) is not None:
                    return event
    except FileNotFoundError:
        return None
    return None
