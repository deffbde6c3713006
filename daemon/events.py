"""The events journal: one JSON line per change of state, in ``<data root>/events/``.

Automation follows it instead of polling the outbox (``sir-convert-a-lot events``,
``GET /events``), and the webhook sender reads it as its outbox; they read it
with ``daemon/event_reader.py``.

* Append-only segments ``events/<first seq, 16 digits>.jsonl``; a new segment
  starts when the current one passes ``max_segment_bytes`` or the UTC day
  changes; segments older than ``retention_days`` are deleted (never the newest).
* ``seq`` only grows: on open the journal reads the last line of the newest
  segment (a torn last line, from a power loss, is cut off first).
* ``event_id`` is derived from what happened (``<job id>:job_succeeded``), so
  an event written again after a crash keeps its id; ``append_once`` writes it
  only if the journal does not hold that id yet, so one event never gets two
  ``seq``.
* Each line is written with one ``write(2)`` on an ``O_APPEND`` descriptor and
  fsync'd before ``append`` returns.

The daemon is the only writer (one process per data root); readers
(``daemon/event_reader.py``) only open the files.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.durable import fsync_dir, write_synced

__all__ = [
    "EVENTS_SCHEMA_VERSION",
    "FINAL_KINDS",
    "Event",
    "EventKind",
    "Gap",
    "Journal",
    "parse_line",
    "segment_files",
]

log = structlog.get_logger("sir_convert_a_lot.events")

EVENTS_SCHEMA_VERSION = 1
_SEGMENT = re.compile(r"^([0-9]{16})\.jsonl$")
_RECENT_IDS = 20_000  # event ids remembered in memory for append_once


class EventKind(StrEnum):
    """Every kind of event, spelled here only."""

    JOB_CLAIMED = "job_claimed"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    JOB_REUSED = "job_reused"
    JOB_RETRIED = "job_retried"
    INTAKE_PAUSED = "intake_paused"
    INTAKE_RESUMED = "intake_resumed"
    READINESS_CHANGED = "readiness_changed"
    DAEMON_STARTED = "daemon_started"
    DAEMON_STOPPING = "daemon_stopping"
    PRUNED = "pruned"


# The end of a job: what webhooks push and what a follower waits for.
FINAL_KINDS = frozenset({EventKind.JOB_SUCCEEDED, EventKind.JOB_FAILED, EventKind.JOB_REUSED})


class Event(BaseModel):
    """One line of the journal (schema: docs/events.schema.json)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = EVENTS_SCHEMA_VERSION
    seq: int = Field(ge=1, description="grows by one per event, across restarts and rotations")
    event_id: str = Field(
        description="stable for one occurrence: the same if the event is written again "
        "after a crash (webhook receivers deduplicate on it)"
    )
    kind: EventKind
    at: datetime = Field(description="when the event was written (UTC)")
    profile: str
    job_id: str | None = None
    route: str | None = Field(default=None, description="'source->target', e.g. 'md->pdf'")
    input: str | None = Field(
        default=None, description="the input's path relative to inbox/, '/'-separated"
    )
    path: str | None = Field(
        default=None,
        description="relative to the data root: the output (job_succeeded, job_reused), "
        "the failed input (job_failed), the removed file (pruned)",
    )
    sidecar: str | None = Field(
        default=None, description="the sidecar's path relative to the data root"
    )
    code: str | None = Field(
        default=None,
        description="error code (job_failed), reason code (intake_paused), "
        "what was pruned (pruned: archive, failed, outbox)",
    )
    attempt: int | None = Field(default=None, description="how many times a worker took the job")
    reused_from: str | None = Field(
        default=None, description="job_reused: the earlier job whose output was reused"
    )
    ready: bool | None = Field(default=None, description="readiness_changed: ready now or not")
    reasons: list[str] = Field(
        default_factory=list, description="readiness_changed: the failing checks' codes"
    )
    message: str | None = None
    notify_url: str | None = Field(
        default=None,
        description="final events: the webhook the job's folder names (its options "
        "file's notify_url), which gets the event besides the profile's [notify] url",
    )


@dataclass(frozen=True)
class Gap:
    """Events a reader asked for that are gone (rotated away by retention)."""

    after: int  # the reader's seq
    first_available: int  # the oldest seq still in the journal

    def as_dict(self) -> dict[str, int]:
        return {"after": self.after, "first_available": self.first_available}


def segment_files(folder: Path) -> list[tuple[int, Path]]:
    """The journal's segments, oldest first, as (first seq, path)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), folder / n) for n in names if (m := _SEGMENT.match(n))]
    return sorted(found)


def parse_line(line: bytes) -> Event | None:
    try:
        return Event.model_validate_json(line)
    except ValidationError:
        return None  # a torn or foreign line: skipped by readers


def _last_event(path: Path) -> Event | None:
    """The last whole event of a segment, reading backwards from its end."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = 64 * 1024
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            lines = data.split(b"\n")
            if start > 0:
                lines = lines[1:]  # may be cut
            for line in reversed(lines):
                if line.strip() and (event := parse_line(line)) is not None:
                    return event
            if start == 0:
                return None
            chunk *= 4


class Journal:
    """The writer. Thread-safe: jobs publish from worker threads."""

    def __init__(
        self,
        folder: Path,
        profile: str,
        *,
        max_segment_bytes: int = 16 * 2**20,
        retention_days: float | None = 30.0,
        on_write: Callable[[Event], None] | None = None,
    ) -> None:
        self.folder = folder
        self.profile = profile
        self.max_segment_bytes = max_segment_bytes
        self.retention_days = retention_days
        self.on_write = on_write
        self._lock = threading.Lock()
        # The segment appended to. It is opened for each event and closed again,
        # so no file on the data root stays open for writing (a read-only remount
        # after an error, or an operator's, is not refused as busy).
        self._segment: Path | None = None
        self._segment_day: str | None = None
        self._segment_size = 0
        # event id -> its "at", oldest first; _complete while it holds every event
        # of the journal (nothing evicted, no segment left unread).
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._complete = True
        self.last_seq = 0
        # Segments an earlier run wrote (newest first), read only as far back as a
        # recovered job asks, once: ids found there, and how far back they reach.
        self._earlier: list[Path] = []
        self._earlier_ids: set[str] = set()
        self._earlier_reach = float("inf")
        self._open()
        self._seq_at_open = self.last_seq

    # -- opening ---------------------------------------------------------------------

    def _open(self) -> None:
        self.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        segments = segment_files(self.folder)
        if not segments:
            return
        first, newest = segments[-1]
        self._cut_torn_tail(newest)
        last = _last_event(newest)
        if last is None and len(segments) > 1:
            last = _last_event(segments[-2][1])
        self.last_seq = last.seq if last is not None else first - 1
        self._earlier = [path for _, path in reversed(segments)]
        self._load_recent_ids(segments)
        if last is not None and newest.stat().st_size < self.max_segment_bytes:
            self._segment = newest
            self._segment_day = _day(last.at)
            self._segment_size = newest.stat().st_size

    def _load_recent_ids(self, segments: list[tuple[int, Path]]) -> None:
        """The newest ``_RECENT_IDS`` event ids, for ``append_once``."""
        chosen: list[Path] = []
        lines = 0
        for _, path in reversed(segments):
            chosen.append(path)
            with path.open("rb") as f:
                lines += sum(1 for _ in f)
            if lines >= _RECENT_IDS:
                self._complete = len(chosen) == len(segments)
                break
        for path in reversed(chosen):
            with path.open("rb") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        self._recent[str(item["event_id"])] = str(item["at"])
                    except (ValueError, KeyError, TypeError):
                        continue
        self._evict()

    @staticmethod
    def _cut_torn_tail(path: Path) -> None:
        """A power loss can leave half a line at the end: cut it off."""
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = size - 1
            step = 4096
            while keep > 0:
                start = max(0, keep - step)
                f.seek(start)
                data = f.read(keep - start)
                cut = data.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                keep = start
            f.truncate(keep)
            os.fsync(f.fileno())
        log.warning("events_torn_tail_cut", segment=str(path), kept_bytes=keep)

    def _remember(self, event: Event) -> None:
        self._recent[event.event_id] = event.at.isoformat()
        self._evict()

    def _evict(self) -> None:
        while len(self._recent) > _RECENT_IDS:
            self._recent.popitem(last=False)
            self._complete = False

    def _remembers_since(self, since: datetime) -> bool:
        """Does memory hold every event written since ``since`` (a minute's margin)?"""
        if self._complete:
            return True
        oldest = next(iter(self._recent.values()), None)
        if oldest is None:
            return False
        try:
            return datetime.fromisoformat(oldest) <= since - timedelta(minutes=1)
        except ValueError:
            return False

    # -- writing ---------------------------------------------------------------------

    def append(self, kind: EventKind, event_id: str, **fields: object) -> Event:
        """Write one event durably and return it (with its seq)."""
        with self._lock:
            return self._write(kind, event_id, fields)

    def append_once(
        self, kind: EventKind, event_id: str, *, since: datetime | None = None, **fields: object
    ) -> Event | None:
        """``append``, unless the journal already holds ``event_id`` (then None).

        Recent ids are known from memory. An id written again is one an earlier
        run wrote before it stopped (recovery repeats a job's step; within one
        run each id is said once), so when memory does not reach back to
        ``since`` (when the job began), the earlier run's segments are searched,
        each read once however many recovered jobs ask.
        """
        with self._lock:
            if event_id in self._recent:
                return None
            if (
                since is not None
                and not self._remembers_since(since)
                and self._written_earlier(event_id, since)
            ):
                return None
            return self._write(kind, event_id, fields)

    def _written_earlier(self, event_id: str, since: datetime) -> bool:
        cutoff = since.timestamp() - 60
        while self._earlier and self._earlier_reach >= cutoff:
            path = self._earlier.pop(0)
            try:
                reach = path.stat().st_mtime
                with path.open("rb") as f:
                    for line in f:
                        try:
                            item = json.loads(line)
                            if int(item["seq"]) <= self._seq_at_open:
                                self._earlier_ids.add(str(item["event_id"]))
                        except (ValueError, KeyError, TypeError):
                            continue  # a torn or foreign line
            except FileNotFoundError:
                continue  # expired meanwhile
            self._earlier_reach = reach  # written to for the last time then
        return event_id in self._earlier_ids

    def _write(self, kind: EventKind, event_id: str, fields: dict[str, object]) -> Event:
        now = datetime.now(UTC)
        event = Event.model_validate(
            {
                "seq": self.last_seq + 1,
                "event_id": event_id,
                "kind": kind,
                "at": now,
                "profile": self.profile,
                **fields,
            }
        )
        line = event.model_dump_json(exclude_defaults=False).encode() + b"\n"
        fd = os.open(
            self._segment_for(now, len(line), event.seq),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o640,
        )
        try:
            write_synced(fd, line)
        except OSError:
            # A full disk: take back half a line, so the next write starts clean
            # and this seq is not used twice.
            os.ftruncate(fd, self._segment_size)
            raise
        finally:
            os.close(fd)
        self._segment_size += len(line)
        self.last_seq = event.seq
        self._remember(event)
        if self.on_write is not None:
            self.on_write(event)
        return event

    def _segment_for(self, now: datetime, size: int, seq: int) -> Path:
        day = _day(now)
        if self._segment is not None and (
            self._segment_day != day or self._segment_size + size > self.max_segment_bytes
        ):
            self._segment = None
        if self._segment is None:
            path = self.folder / f"{seq:016d}.jsonl"
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))
            fsync_dir(self.folder)
            self._segment = path
            self._segment_day = day
            self._segment_size = path.stat().st_size
            self._expire(now)
        return self._segment

    def _expire(self, now: datetime) -> None:
        """Delete segments past ``retention_days`` (never the newest)."""
        if self.retention_days is None:
            return
        cutoff = now.timestamp() - self.retention_days * 86400
        removed = False
        for _, path in segment_files(self.folder)[:-1]:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed = True
                    log.info("events_segment_expired", segment=path.name)
            except FileNotFoundError:
                continue
        if removed:
            fsync_dir(self.folder)

    def close(self) -> None:
        with self._lock:
            self._segment = None


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")
