"""Job records in the state folder: claiming, durable phase changes, recovery listing.

A job lives in ``.state/jobs/<job_id>/``:

    job.json         the record (written atomically, fsync'd, before every phase change)
    input/<name>     the claimed input, moved there from the inbox by one rename
    work/            the worker's output, staged
    sidecar.json     the staged sidecar, moved into outbox/ or failed/ when published
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from converters.beneath import Beneath, open_dir_beneath, split_relative
from daemon import faults
from daemon.durable import atomic_write, fsync_dir
from daemon.layout import DataRoot
from daemon.names import StoredPath
from daemon.open_writers import StillOpen, WriterProbe

if TYPE_CHECKING:
    from converters.base import ConvertOptions
    from converters.errors import SirError

__all__ = ["Job", "JobRecord", "JobStore", "StagedArtifact", "sha256_fd", "sha256_file"]

log = structlog.get_logger("sir_convert_a_lot.jobs")

Phase = Literal["claiming", "claimed", "publishing", "failing"]
JOB_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{12}$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def sha256_fd(fd: int) -> str:
    """sha256 of an open file from its start (the offset is not restored)."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file the daemon wrote itself (never one a dropper named)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StagedArtifact(BaseModel):
    """One entry of the work folder and the outbox path publishing gives it."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    source: StoredPath  # its name in work/
    target: StoredPath  # outbox-relative


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=JOB_ID.pattern)
    profile: str
    relative_path: StoredPath  # inbox-relative, '/'-separated, any bytes
    phase: Phase
    detected_at: datetime
    claimed_at: datetime | None = None
    attempts: int = 0
    input_sha256: str | None = None
    input_size: int | None = None
    input_mtime_ns: int | None = None
    output_relative: StoredPath | None = None  # chosen outbox path, once publishing
    failed_relative: StoredPath | None = None  # chosen failed/ path, once failing
    # Every entry to publish, the main output first, once publishing (empty in
    # records of 0.1.x: their one output is found in work/).
    artifacts: list[StagedArtifact] = Field(default_factory=list)
    # The folder's webhook (its options file's notify_url), decided once at the
    # claim: recovery keeps it, so the final event goes where it would have.
    # None: not decided yet; "": the folder names none.
    notify_url: str | None = None
    # What the final event says, decided with the staged sidecar: the job whose
    # output was reused, and the failure's error code.
    reused_from: str | None = None
    error_code: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: object) -> object:
        """Records written by 0.1.0 carry an unused ``archive_relative``."""
        if isinstance(data, dict):
            data.pop("archive_relative", None)
        return data

    @property
    def relative(self) -> PurePosixPath:
        return PurePosixPath(self.relative_path)


class Job:
    """A claimed job: its record, the paths of its folder, and what the claim
    pinned for the conversion (the drop folder's descriptor, the options)."""

    def __init__(self, folder: Path, record: JobRecord) -> None:
        self.folder = folder
        self.record = record
        # The folder the file was dropped in, opened during the claim's walk:
        # a swap of that folder for a symlink afterwards cannot redirect reads.
        self.drop_fd: int | None = None
        self.options: ConvertOptions | None = None
        self.options_error: SirError | None = None
        self.taken_at: datetime | None = None  # when a worker took it (last attempt)

    @property
    def id(self) -> str:
        return self.record.job_id

    @property
    def input_dir(self) -> Path:
        return self.folder / "input"

    @property
    def input_path(self) -> Path:
        return self.input_dir / self.record.relative.name

    @property
    def work_dir(self) -> Path:
        return self.folder / "work"

    @property
    def options_dir(self) -> Path:
        """Private copies of the files the options name (stylesheet, reference docx)."""
        return self.folder / "options"

    @property
    def staged_sidecar(self) -> Path:
        return self.folder / "sidecar.json"

    @property
    def has_input(self) -> bool:
        """The claimed entry is in the job folder (a link or FIFO counts: never followed)."""
        return os.path.lexists(self.input_path)

    def reload(self) -> None:
        """Read the record back: after a failed write it says which step was durable."""
        self.record = JobRecord.model_validate_json((self.folder / "job.json").read_bytes())
        if self.record.phase == "claiming" and self.has_input:
            self.record.phase = "claimed"  # the move happened; its record update did not

    def save(self, *, sync_dir: bool = True) -> None:
        """Write the record durably. ``sync_dir=False`` for updates a power loss may
        undo harmlessly (see ``atomic_write``): the input facts (recomputed when
        missing) and the attempt count (one attempt fewer is counted)."""
        atomic_write(
            self.folder / "job.json",
            self.record.model_dump_json().encode(),
            tmp_dir=self.folder,
            sync_dir=sync_dir,
        )

    def release(self) -> None:
        """Close what the claim pinned (idempotent)."""
        if self.drop_fd is not None:
            os.close(self.drop_fd)
            self.drop_fd = None


class JobStore:
    def __init__(
        self,
        root: DataRoot,
        profile: str,
        *,
        max_input_bytes: int,
        probe: WriterProbe | None = None,
    ) -> None:
        """``probe``: asks whether a file is still open for writing before it is
        claimed (the daemon and ``convert``; None: never asked)."""
        self.root = root
        self.profile = profile
        self.max_input_bytes = max_input_bytes
        self.probe = probe
        self._inbox_fd: int | None = None

    @property
    def inbox_fd(self) -> int:
        """The inbox, opened once: every walk into it starts here, not at a path."""
        if self._inbox_fd is None:
            self._inbox_fd = os.open(self.root.inbox, _DIR)
        return self._inbox_fd

    def close(self) -> None:
        if self._inbox_fd is not None:
            os.close(self._inbox_fd)
            self._inbox_fd = None

    def open_levels(self, relative: PurePosixPath) -> list[int] | None:
        """Descriptors of the inbox and of each folder down to ``relative``'s parent,
        opened one beneath the other without following links.

        None when the walk fails: a folder on the way is gone, or was replaced by
        a file or a symlink. Whatever is then at that path is not in the inbox's
        own tree, and a later scan finds what really is there.
        """
        try:
            parts = split_relative(str(relative))
        except Beneath:
            return None
        levels = [os.dup(self.inbox_fd)]
        try:
            for part in parts[:-1]:
                levels.append(open_dir_beneath(levels[-1], [part]))
        except Beneath:
            for fd in levels:
                os.close(fd)
            return None
        return levels

    def claim(self, relative: PurePosixPath, folder_fd: int, detected_at: datetime) -> Job | None:
        """Move the entry ``relative.name`` out of its folder (``folder_fd``, from
        ``open_levels``) into a new job folder, durably.

        Returns ``None`` if the entry vanished first (someone else took it).
        Raises ``StillOpen`` if some process still holds it open for writing: it
        is left where it is, untouched. The record is written before the rename
        so recovery always knows where the input came from. The rename works on
        the folder's descriptor, so it can only ever move an entry that is really
        inside the inbox. Symlinks, FIFOs and folders are moved as entries: they
        are never followed or opened (the probe opens regular files only).
        """
        name = relative.name
        try:
            os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if self.probe is not None and self.probe.held_for_writing(folder_fd, name):
            raise StillOpen(str(relative))
        job_id = f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        folder = self.root.jobs / job_id
        folder.mkdir(mode=0o700)
        record = JobRecord(
            job_id=job_id,
            profile=self.profile,
            relative_path=str(relative),
            phase="claiming",
            detected_at=detected_at,
        )
        job = Job(folder, record)
        try:
            job.save()
            fsync_dir(self.root.jobs)
            job.input_dir.mkdir()
            faults.delay("claim")
            input_fd = os.open(job.input_dir, _DIR)
            try:
                os.rename(name, name, src_dir_fd=folder_fd, dst_dir_fd=input_fd)
                os.fsync(input_fd)
            finally:
                os.close(input_fd)
            os.fsync(folder_fd)
        except OSError as exc:
            if os.path.lexists(job.input_path):
                raise  # moved in after all: recovery finds it by its record
            shutil.rmtree(folder, ignore_errors=True)  # nothing was moved: no trace left
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                return None  # someone else took it
            raise
        # Not written here: the next save (the input facts, right after) carries it.
        # Until then the record on disk says "claiming" with the input moved in,
        # which Job.reload() and recovery both treat as claimed.
        record.phase = "claimed"
        record.claimed_at = utcnow()
        return job

    def fill_input_facts(self, job: Job) -> None:
        """sha256 and size of a regular input with one link (never opened otherwise).

        A file with more than one hard link is refused unread: the other name may
        be a file outside the inbox that the dropper could not otherwise read. The
        checks and the hash use one descriptor opened without following links. A
        file over ``max_input_bytes`` gets its size but no hash (it fails unread).
        """
        try:
            fd = os.open(job.input_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # a symlink, a FIFO without writer...: refused later, unread
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                job.record.input_size = st.st_size
                job.record.input_mtime_ns = st.st_mtime_ns
                # An input over the limit fails unread: a sparse 40 GiB file
                # costs an fstat, not minutes of hashing zeros.
                if st.st_size <= self.max_input_bytes:
                    job.record.input_sha256 = sha256_fd(fd)
                job.save(sync_dir=False)  # lost to a power cut: computed again
        finally:
            os.close(fd)

    def input_changed(self, job: Job) -> bool:
        """Did a writer that still held the file open change it after the claim?"""
        st = os.lstat(job.input_path)
        return (st.st_size, st.st_mtime_ns) != (job.record.input_size, job.record.input_mtime_ns)

    def load_all(self) -> list[Job]:
        """Every job folder, for recovery. Half-created folders are cleaned up.

        A record that does not validate (a path that climbs out, a foreign job id,
        garbage) is never acted on: its folder is moved to ``.state/quarantine/``
        for an operator, and the daemon starts anyway.
        """
        jobs: list[Job] = []
        if not self.root.jobs.is_dir():
            return jobs
        for folder in sorted(self.root.jobs.iterdir()):
            record_path = folder / "job.json"
            if not folder.is_dir() or folder.is_symlink():
                self._quarantine(folder, "not a job folder")
                continue
            if not record_path.is_file():
                # Crashed before the record was durable: nothing was moved in yet.
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                record = JobRecord.model_validate_json(record_path.read_bytes())
                if record.job_id != folder.name or record.profile != self.profile:
                    raise ValueError("the record names another job or profile")
            except (ValidationError, ValueError, OSError) as exc:
                self._quarantine(folder, str(exc).splitlines()[0][:300])
                continue
            jobs.append(Job(folder, record))
        return jobs

    def _quarantine(self, folder: Path, reason: str) -> None:
        target = self.root.state / "quarantine" / f"{folder.name[:100]}-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(folder, target)
        fsync_dir(self.root.jobs)
        log.error("job_record_quarantined", folder=str(target), reason=reason)

    def finish(self, job: Job) -> None:
        job.release()
        shutil.rmtree(job.folder)
        fsync_dir(self.root.jobs)
