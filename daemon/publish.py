"""Publishing a finished job: output, then sidecar (the commit marker), then archive.

Each step is a rename out of the job folder, so every step is idempotent: after a
crash, recovery calls the same function and the steps already done are skipped
because their source is gone. Nothing half-written is ever visible in outbox/.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from converters.warning_codes import WarningCode
from daemon import faults
from daemon.durable import (
    atomic_write,
    durable_move,
    fsync_file,
    unique_name,
)
from daemon.jobs import Job, JobStore, sha256_file
from daemon.layout import DataRoot
from daemon.names import lossless_b64, readable
from daemon.sidecar import ERROR_SUFFIX, META_SUFFIX, OutputInfo, Sidecar

__all__ = ["Publisher"]


def _rel(path: Path, base: Path) -> str:
    return PurePosixPath(path.relative_to(base).as_posix()).as_posix()


class Publisher:
    """Serialised by the caller: one publish at a time per data root."""

    def __init__(self, root: DataRoot, store: JobStore, *, delete_on_success: bool) -> None:
        self.root = root
        self.store = store
        self.delete_on_success = delete_on_success
        # Called once the sidecar is durable in outbox/ or failed/, before the job
        # folder goes: the job's final event (daemon/announce.py). Called again
        # by recovery when the folder survived a crash; the callee is idempotent.
        self.on_commit: Callable[[Job], None] | None = None

    # -- success ---------------------------------------------------------------

    def stage_success(
        self, job: Job, output: Path, wanted: PurePosixPath, sidecar: Sidecar
    ) -> None:
        """Fix the output name and stage the sidecar durably, before any move."""
        fsync_file(output)
        target = unique_name(self.root.outbox / wanted, room=len(META_SUFFIX))
        relative = _rel(target, self.root.outbox)
        sidecar.output = OutputInfo(
            path=readable(relative),
            path_b64=lossless_b64(relative),
            sha256=sha256_file(output),
            size_bytes=output.stat().st_size,
        )
        if target.name != PurePosixPath(wanted).name:
            sidecar.warnings = sorted({*sidecar.warnings, WarningCode.OUTPUT_NAME_COLLISION})
        atomic_write(job.staged_sidecar, sidecar.to_json(), tmp_dir=job.folder)
        faults.delay("sidecar_write")
        job.record.output_relative = relative
        job.record.phase = "publishing"
        job.save()

    def finish_success(self, job: Job) -> None:
        relative = job.record.output_relative
        assert relative is not None
        target = self.root.outbox / relative
        staged = self._staged_output(job)
        if staged is not None:
            durable_move(staged, target)
            faults.delay("publish_output")
        if job.staged_sidecar.exists():
            durable_move(job.staged_sidecar, target.with_name(target.name + META_SUFFIX))
            faults.delay("archive")
        self._committed(job)
        faults.delay("announced")
        self._retire_input(job)
        faults.delay("finish")
        self.store.finish(job)

    def _staged_output(self, job: Job) -> Path | None:
        if not job.work_dir.is_dir():
            return None
        files = [p for p in job.work_dir.iterdir() if p.is_file()]
        return files[0] if files else None

    def _retire_input(self, job: Job) -> None:
        source = job.input_path
        if not (source.exists() or source.is_symlink()):
            return
        if self.delete_on_success:
            source.unlink()
            return
        target = unique_name(self.root.archive / job.record.relative_path)
        durable_move(source, target)

    # -- failure ---------------------------------------------------------------

    def stage_failure(self, job: Job, sidecar: Sidecar) -> None:
        target = unique_name(self.root.failed / job.record.relative_path, room=len(ERROR_SUFFIX))
        job.record.failed_relative = _rel(target, self.root.failed)
        atomic_write(job.staged_sidecar, sidecar.to_json(), tmp_dir=job.folder)
        job.record.phase = "failing"
        job.save()

    def finish_failure(self, job: Job) -> None:
        relative = job.record.failed_relative
        assert relative is not None
        target = self.root.failed / relative
        source = job.input_path
        if source.exists() or source.is_symlink():
            durable_move(source, target)
            faults.delay("fail_input")
        if job.staged_sidecar.exists():
            sidecar_path = target.with_name(target.name + ERROR_SUFFIX)
            if sidecar_path.exists():
                os.unlink(sidecar_path)  # a stale one from an earlier failure of this name
            durable_move(job.staged_sidecar, sidecar_path)
        self._committed(job)
        self.store.finish(job)

    def _committed(self, job: Job) -> None:
        if self.on_commit is not None:
            self.on_commit(job)
