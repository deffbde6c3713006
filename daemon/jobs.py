"""Job records in the state folder: claiming, durable phase changes, recovery listing.

A job lives in ``.state/jobs/<job_id>/``:

    job.json         the record (written atomically, fsync'd, before every phase change)
    input/<name>     the claimed input, moved there from the inbox by one rename
    work/            the worker's output, staged
    sidecar.json     the staged sidecar, moved into outbox/ or failed/ when published
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from daemon import faults
from daemon.durable import atomic_write, durable_move, fsync_dir
from daemon.layout import DataRoot

__all__ = ["Job", "JobRecord", "JobStore", "sha256_file"]

Phase = Literal["claiming", "claimed", "publishing", "failing"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    profile: str
    relative_path: str  # inbox-relative, '/'-separated
    phase: Phase
    detected_at: datetime
    claimed_at: datetime | None = None
    attempts: int = 0
    input_sha256: str | None = None
    input_size: int | None = None
    input_mtime_ns: int | None = None
    output_relative: str | None = None  # chosen outbox path, once publishing
    failed_relative: str | None = None  # chosen failed/ path, once failing
    archive_relative: str | None = None

    @property
    def relative(self) -> PurePosixPath:
        return PurePosixPath(self.relative_path)


class Job:
    """A claimed job: its record and the paths of its folder."""

    def __init__(self, folder: Path, record: JobRecord) -> None:
        self.folder = folder
        self.record = record

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
    def staged_sidecar(self) -> Path:
        return self.folder / "sidecar.json"

    def reload(self) -> None:
        """Read the record back: after a failed write it says which step was durable."""
        self.record = JobRecord.model_validate_json((self.folder / "job.json").read_bytes())
        if self.record.phase == "claiming" and self.input_path.exists():
            self.record.phase = "claimed"  # the move happened; its record update did not

    def save(self) -> None:
        atomic_write(
            self.folder / "job.json",
            self.record.model_dump_json(indent=2).encode(),
            tmp_dir=self.folder,
        )


class JobStore:
    def __init__(self, root: DataRoot, profile: str) -> None:
        self.root = root
        self.profile = profile

    def claim(self, path: Path, detected_at: datetime) -> Job | None:
        """Move ``path`` out of the inbox into a new job folder, durably.

        Returns ``None`` if the file vanished first (someone else took it). The
        record is written before the rename so recovery always knows where the
        input came from. Symlinks, FIFOs and folders are moved as entries: they
        are never followed or opened.
        """
        relative = self.root.inbox_relative(path)
        job_id = f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        folder = self.root.jobs / job_id
        folder.mkdir()
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
            durable_move(path, job.input_path)
        except OSError as exc:
            if job.input_path.exists() or job.input_path.is_symlink():
                raise  # moved in after all: recovery finds it by its record
            shutil.rmtree(folder, ignore_errors=True)  # nothing was moved: no trace left
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
                return None  # someone else took it
            raise
        record.phase = "claimed"
        record.claimed_at = utcnow()
        # If this write fails, the record on disk stays "claiming" with the input
        # moved in: Job.reload() and recovery both treat that as claimed.
        with contextlib.suppress(OSError):
            job.save()
        return job

    def fill_input_facts(self, job: Job) -> None:
        """sha256 and size of a regular input with one link (never opened otherwise).

        A file with more than one hard link is refused unread: the other name may
        be a file outside the inbox that the dropper could not otherwise read.
        """
        st = os.lstat(job.input_path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            job.record.input_size = st.st_size
            job.record.input_mtime_ns = st.st_mtime_ns
            job.record.input_sha256 = sha256_file(job.input_path)
            job.save()

    def input_changed(self, job: Job) -> bool:
        """Did a writer that still held the file open change it after the claim?"""
        st = os.lstat(job.input_path)
        return (st.st_size, st.st_mtime_ns) != (job.record.input_size, job.record.input_mtime_ns)

    def load_all(self) -> list[Job]:
        """Every job folder, for recovery. Half-created folders are cleaned up."""
        jobs: list[Job] = []
        if not self.root.jobs.is_dir():
            return jobs
        for folder in sorted(self.root.jobs.iterdir()):
            record_path = folder / "job.json"
            if not record_path.is_file():
                # Crashed before the record was durable: nothing was moved in yet.
                shutil.rmtree(folder, ignore_errors=True)
                continue
            record = JobRecord.model_validate_json(record_path.read_bytes())
            jobs.append(Job(folder, record))
        return jobs

    def finish(self, job: Job) -> None:
        shutil.rmtree(job.folder)
        fsync_dir(self.root.jobs)
