"""Retention: remove what is older than ``[retention]`` allows from archive/,
failed/ and outbox/ (off by default; each folder has its own setting).

* A file's age is the time it got there: the later of its mtime and ctime (a
  rename sets the ctime, so an original dropped with an mtime from years ago,
  ``rsync -t``, is kept as long as one archived today). In outbox/ and failed/
  the age of an output (or failed input) is its sidecar's.
* An output goes with its sidecar, sidecar first: the sidecar is the commit
  marker, so a crash in between leaves an output that no reader trusts, which
  the next sweep removes; never a sidecar without its output. The sidecar is
  renamed to a tombstone (``.<name><suffix>.pruning``), the entry removed, then
  the tombstone: a tombstone says the removal was decided, so the next sweep
  finishes it whatever the entry's age now, and a failed *folder* entry is
  still known as one (not walked into as a folder of failed/).
* A ``pruned`` event per removed file (its sidecar named in the event) is
  written just before the removal, with an id derived from what is pruned: the
  output's (or failed input's) path, inode and mtime, never the sidecar's, which
  goes first. So a sweep repeated after a crash between the sidecar and its
  output computes the same id and ``append_once`` writes no second event. A
  folder entry's mtime changes while it is removed, so its id has its inode
  alone.
* Nothing a job in .state names (its chosen output or failed path) is touched.
  Folders are left in place (a publish may be creating files in them).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import structlog
from pydantic import ValidationError

from daemon.config import RetentionSettings
from daemon.durable import fsync_dir
from daemon.events import EventKind, Journal
from daemon.jobs import JobRecord
from daemon.layout import DataRoot
from daemon.metrics import Metrics
from daemon.names import readable
from daemon.sidecar import ERROR_SUFFIX, META_SUFFIX, PRUNING_SUFFIX

__all__ = ["Sweeper", "pruned_id"]

log = structlog.get_logger("sir_convert_a_lot.retention")


def _age_mark(st: os.stat_result) -> float:
    return max(st.st_mtime, st.st_ctime)


def pruned_id(rel: str, st: os.stat_result) -> str:
    """The ``pruned`` event's id for the entry at ``rel`` (data-root-relative),
    from the entry's own stat: the same before and after its sidecar is gone."""
    when = "dir" if stat.S_ISDIR(st.st_mode) else str(st.st_mtime_ns)
    return f"pruned:{st.st_ino}:{when}:{readable(rel)}"


def _tombstone(name: str, suffix: str) -> str:
    return f".{name}{suffix}{PRUNING_SUFFIX}"


def _is_tombstone(name: str, suffix: str) -> bool:
    return name.startswith(".") and name.endswith(suffix + PRUNING_SUFFIX)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class Sweeper:
    def __init__(
        self,
        settings: RetentionSettings,
        root: DataRoot,
        journal: Journal | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.root = root
        self.journal = journal
        self.metrics = metrics

    def in_flight(self) -> set[str]:
        """Data-root-relative paths that jobs in .state have chosen for their results."""
        busy: set[str] = set()
        try:
            folders = list(self.root.jobs.iterdir())
        except FileNotFoundError:
            return busy
        for folder in folders:
            try:
                record = JobRecord.model_validate_json((folder / "job.json").read_bytes())
            except (OSError, ValidationError):
                continue
            if record.output_relative is not None:
                busy.add(f"outbox/{record.output_relative}")
            if record.failed_relative is not None:
                busy.add(f"failed/{record.failed_relative}")
        return busy

    def sweep(self, now: float | None = None) -> list[str]:
        """One pass (blocking). Returns the data-root-relative paths removed."""
        now = time.time() if now is None else now
        busy = self.in_flight()
        removed: list[str] = []
        s = self.settings
        if s.outbox_days is not None:
            cutoff = now - s.outbox_days * 86400
            removed += self._pair_folder(self.root.outbox, META_SUFFIX, cutoff, busy, "outbox")
        if s.failed_days is not None:
            cutoff = now - s.failed_days * 86400
            removed += self._pair_folder(self.root.failed, ERROR_SUFFIX, cutoff, busy, "failed")
        if s.archive_days is not None:
            cutoff = now - s.archive_days * 86400
            removed += self._archive(cutoff, busy)
        if removed:
            log.info("retention_pruned", files=len(removed))
        return removed

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root.root).as_posix()

    def _walk(self, top: Path, suffix: str | None) -> Iterator[tuple[Path, list[str]]]:
        """(folder, names) beneath ``top``, never following links. A folder that is
        a failed entry (it has a sidecar or a tombstone beside it) is an entry, not
        descended into."""
        for folder, dirs, files in os.walk(top, followlinks=False):
            here = Path(folder)
            names = set(files)
            if suffix is not None:
                entries = [
                    d for d in dirs if f"{d}{suffix}" in names or _tombstone(d, suffix) in names
                ]
                dirs[:] = [d for d in dirs if d not in entries]
                names.update(entries)
            yield here, sorted(names)

    def _pair_folder(
        self, top: Path, suffix: str, cutoff: float, busy: set[str], area: str
    ) -> list[str]:
        removed: list[str] = []
        for folder, names in self._walk(top, suffix):
            present = set(names)
            for name in names:
                if name.endswith(suffix) or _is_tombstone(name, suffix):
                    continue
                entry = folder / name
                rel = self._relative(entry)
                if rel in busy:
                    continue
                marker = folder / f"{name}{suffix}"
                tomb = folder / _tombstone(name, suffix)
                own = _lstat(entry)
                if own is None:
                    continue
                decided = tomb.name in present  # a sweep cut short: finish it
                st = _lstat(marker) if f"{name}{suffix}" in present else None
                marker_rel = self._relative(marker) if st is not None or decided else None
                if not decided and _age_mark(st or own) >= cutoff:
                    continue  # no sidecar (a sweep cut short): the entry's own age
                self._announce(rel, marker_rel, area, own)
                if st is not None and not decided:
                    os.replace(marker, tomb)
                    fsync_dir(folder)
                self._remove(entry)
                fsync_dir(folder)
                if marker_rel is not None:
                    tomb.unlink(missing_ok=True)
                    fsync_dir(folder)
                removed.append(rel)
            # Tombstones whose entry is gone: the removal happened, its event too.
            for name in names:
                if (
                    _is_tombstone(name, suffix)
                    and name[1 : -len(suffix + PRUNING_SUFFIX)] not in present
                ):
                    (folder / name).unlink(missing_ok=True)
                    fsync_dir(folder)
            # Sidecars whose entry is gone (removed by hand): nothing to keep them for.
            for name in names:
                if name.endswith(suffix) and name[: -len(suffix)] not in present:
                    marker = folder / name
                    st = _lstat(marker)
                    if st is None or _age_mark(st) >= cutoff:
                        continue
                    rel = self._relative(marker)
                    if rel[: -len(suffix)] in busy:
                        continue
                    self._announce(rel, None, area, st)
                    marker.unlink(missing_ok=True)
                    fsync_dir(folder)
                    removed.append(rel)
        return removed

    def _archive(self, cutoff: float, busy: set[str]) -> list[str]:
        removed: list[str] = []
        for folder, names in self._walk(self.root.archive, None):
            for name in names:
                entry = folder / name
                rel = self._relative(entry)
                st = _lstat(entry)
                if st is None or rel in busy or _age_mark(st) >= cutoff:
                    continue
                self._announce(rel, None, "archive", st)
                self._remove(entry)
                fsync_dir(folder)
                removed.append(rel)
        return removed

    @staticmethod
    def _remove(entry: Path) -> None:
        st = _lstat(entry)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)

    def _announce(self, rel: str, sidecar: str | None, area: str, st: os.stat_result) -> None:
        """``st``: the pruned entry's own stat (its id, see ``pruned_id``)."""
        if self.metrics is not None:
            self.metrics.files_pruned.labels(area).inc()
        if self.journal is None:
            return
        self.journal.append_once(
            EventKind.PRUNED,
            pruned_id(rel, st),
            path=readable(rel),
            sidecar=readable(sidecar) if sidecar is not None else None,
            code=area,
        )
