"""The reuse cache on disk: finished jobs' work folders, found by key, bounded by size.

It lives in the data root, beside the jobs it serves (one filesystem, the
daemon's own ``.state``)::

    .state/reuse/<k[:2]>/<k>/entry.json    what the entry holds (``Entry``)
    .state/reuse/<k[:2]>/<k>/files/...     every file the job left in its work folder
    .state/reuse/staging/                  entries being written (cleared at start)

``k`` is the reuse key (daemon/reuse.py): a sha256 over the input's sha256 and
everything else the output depends on, so an entry is found by what went in.

An entry holds the *whole set* of files a job produced in its work folder (one
today; a main output and its artifacts later), each with its sha256 and size.
Files are copied in and copied out, never hard-linked: two published outputs,
or an output and the cache, must never share an inode (editing one would change
the other). ``take`` hashes what it copies and compares: a file that is missing,
truncated or changed discards the entry and the job is converted again, so the
cache can lose results but never hand out a wrong one.

Writes go to ``staging/`` and appear by one rename; the least recently used
entries are evicted past ``max_bytes``. Blocking: call it from a thread. One lock
serialises the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.durable import atomic_write, fsync_dir
from daemon.names import StoredPath
from daemon.sidecar import ConverterInfo

__all__ = ["Entry", "EntryFile", "ReuseCache", "Taken"]

log = structlog.get_logger("sir_convert_a_lot.reuse")

ENTRY_FILE = "entry.json"
_CHUNK = 1 << 20
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_KEY_CHARS = frozenset("0123456789abcdef")


class EntryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: StoredPath  # relative to the work folder
    sha256: str
    size_bytes: int = Field(ge=0)


class Entry(BaseModel):
    """What a finished job left for reuse. Written last, read first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    job_id: str
    finished_at: datetime
    route: str
    # sha256 of the input name's stem (its bytes): compared when ``name_bound``.
    stem_sha256: str
    # The output's files name the input (md->pdf's title, an artifact folder named
    # after the stem): only an input of the same name may reuse them.
    name_bound: bool
    output: StoredPath  # the main output, one of ``files`` (set by ``store``)
    files: list[EntryFile] = Field(default_factory=list)  # set by ``store``
    # What the conversion read beside the document (JobReply.resources).
    resources: dict[str, str] = Field(default_factory=dict)
    converter: ConverterInfo
    device: str | None = None
    warnings: list[str] = Field(default_factory=list)
    pages: int | None = None
    convert_seconds: float | None = None

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


@dataclass(frozen=True)
class Taken:
    """An entry whose files were copied, verified, into a work folder."""

    entry: Entry
    output: Path  # the main output in the work folder


def _files_of(work_dir: Path) -> list[Path]:
    """Every regular file beneath ``work_dir`` (the daemon's own folder), sorted."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(work_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
    return found


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to a new ``dst`` (fsync'd), returning the sha256 and size of
    the bytes written: what is checked is what was copied."""
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    fin = os.open(src, _READ)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while chunk := os.read(fin, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fout, view) :]
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return digest.hexdigest(), size


class ReuseCache:
    def __init__(
        self, folder: Path, max_bytes: int, on_discard: Callable[[], object] | None = None
    ) -> None:
        """``on_discard`` is called for each entry found damaged (a metric)."""
        self.folder = folder
        self.staging = folder / "staging"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # key -> (size in bytes, last use as time.time())
        self._index: dict[str, tuple[int, float]] = {}
        self.discarded = 0  # entries found corrupt or incomplete, since start
        self._on_discard = on_discard

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        """Create the folders, clear half-written entries, index the rest."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(mode=0o700)
        index: dict[str, tuple[int, float]] = {}
        for shard in sorted(self.folder.iterdir()):
            if shard == self.staging or not shard.is_dir():
                continue
            for place in sorted(shard.iterdir()):
                entry = self._read_entry(place)
                if entry is None or entry.key != place.name:
                    self._remove(place)
                    continue
                index[entry.key] = (entry.size_bytes, (place / ENTRY_FILE).stat().st_mtime)
        with self._lock:
            self._index = index
        self._evict()

    # -- reading -------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for size, _ in self._index.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def _place(self, key: str) -> Path:
        if len(key) != 64 or not set(key) <= _KEY_CHARS:
            raise ValueError("a reuse key is a sha256 in hex")
        return self.folder / key[:2] / key

    def _read_entry(self, place: Path) -> Entry | None:
        try:
            fd = os.open(place / ENTRY_FILE, _READ)
        except OSError:
            return None
        try:
            return Entry.model_validate_json(os.read(fd, 4 << 20))
        except (ValidationError, ValueError, OSError):
            return None
        finally:
            os.close(fd)

    def peek(self, key: str) -> Entry | None:
        """The entry for ``key`` without touching its files, or None. An indexed
        entry whose ``entry.json`` is gone or unreadable is discarded."""
        with self._lock:
            if key not in self._index:
                return None
        place = self._place(key)
        entry = self._read_entry(place)
        if entry is None or entry.key != key:
            self._forget_missing(key, place)
            return None
        return entry

    def take(self, key: str, work_dir: Path, output_name: str) -> Taken | None:
        """Copy the entry's files into the empty ``work_dir``, verifying each.

        A single-file entry's output is named ``output_name``; an entry of several
        files keeps their names (it is name-bound, so they are this job's names).
        Any mismatch discards the entry and leaves ``work_dir`` empty: None.
        """
        place = self._place(key)
        entry = self.peek(key)
        if entry is None:
            return None
        single = len(entry.files) == 1
        try:
            for item in entry.files:
                source = place / "files" / item.path
                target = work_dir / (output_name if single else item.path)
                digest, size = _copy_hashing(source, target)
                if (digest, size) != (item.sha256, item.size_bytes):
                    raise ValueError(f"{item.path} does not match its entry")
        except (OSError, ValueError) as exc:
            log.warning("reuse_entry_discarded", key=key, job_id=entry.job_id, error=str(exc))
            for child in list(work_dir.iterdir()):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            self.discard(key)
            return None
        now = time.time()
        with contextlib.suppress(OSError):  # least recently used, across restarts
            os.utime(place / ENTRY_FILE, (now, now))
        with self._lock:
            if key in self._index:
                self._index[key] = (self._index[key][0], now)
        output = work_dir / (output_name if single else entry.output)
        return Taken(entry, output)

    def _forget_missing(self, key: str, place: Path) -> None:
        with self._lock:
            known = self._index.pop(key, None) is not None
        if known:  # indexed, but its entry.json is gone or unreadable
            self._discarded()
            self._remove(place)

    # -- writing -------------------------------------------------------------------------

    def store(self, entry: Entry, work_dir: Path, output: Path) -> Entry | None:
        """Keep a copy of every file in ``work_dir`` under ``entry.key``.

        Returns the entry written, or None when it is not kept (larger than the
        whole cache). Replaces an older entry of the same key.
        """
        files = _files_of(work_dir)
        if sum(p.stat().st_size for p in files) > self.max_bytes:
            return None
        staged = self.staging / uuid.uuid4().hex
        staged.mkdir(mode=0o700)
        try:
            listed: list[EntryFile] = []
            for path in files:
                relative = path.relative_to(work_dir).as_posix()
                digest, size = _copy_hashing(path, staged / "files" / relative)
                listed.append(EntryFile(path=relative, sha256=digest, size_bytes=size))
            entry = entry.model_copy(
                update={
                    "files": listed,
                    "output": output.relative_to(work_dir).as_posix(),
                    # Artifacts are named after the input: only its namesakes reuse them.
                    "name_bound": entry.name_bound or len(listed) > 1,
                }
            )
            atomic_write(staged / ENTRY_FILE, entry.model_dump_json().encode(), tmp_dir=staged)
            place = self._place(entry.key)
            place.parent.mkdir(mode=0o700, exist_ok=True)
            with self._lock:
                old = self._index.pop(entry.key, None)
            if old is not None or place.exists():
                self._remove(place)
            os.rename(staged, place)
            fsync_dir(place.parent)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        with self._lock:
            self._index[entry.key] = (entry.size_bytes, time.time())
        self._evict()
        return entry

    def discard(self, key: str) -> None:
        """Remove an entry found corrupt or incomplete."""
        with self._lock:
            self._index.pop(key, None)
        self._discarded()
        self._remove(self._place(key))

    def _discarded(self) -> None:
        with self._lock:
            self.discarded += 1
        if self._on_discard is not None:
            self._on_discard()

    def _evict(self) -> None:
        """Remove the least recently used entries until the cache fits ``max_bytes``."""
        while True:
            with self._lock:
                total = sum(size for size, _ in self._index.values())
                if total <= self.max_bytes or not self._index:
                    return
                key = min(self._index, key=lambda k: self._index[k][1])
                del self._index[key]
            log.info("reuse_entry_evicted", key=key)
            self._remove(self._place(key))

    def _remove(self, place: Path) -> None:
        """Out of sight by one rename, then deleted (a crash leaves only staging)."""
        if not place.exists():
            return
        trash = self.staging / f"old-{uuid.uuid4().hex}"
        try:
            os.rename(place, trash)
        except OSError:
            shutil.rmtree(place, ignore_errors=True)
            return
        shutil.rmtree(trash, ignore_errors=True)
