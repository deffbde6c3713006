"""Is the data root able to take writes right now? (A full or read-only disk.)

A job that runs into a full disk or a read-only data root is not the input's
fault: the lifecycle keeps it where it is (nothing is lost, nothing half-written
is published), waits with ``wait_for_storage`` until space or write access is
back, then resumes it from the step its record names.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import uuid

import structlog

from daemon.durable import atomic_write
from daemon.layout import DataRoot

__all__ = [
    "RETRY_SECONDS",
    "STORAGE_ERRNOS",
    "is_storage_error",
    "storage_trouble",
    "wait_for_storage",
]

log = structlog.get_logger("sir_convert_a_lot.storage")

# "The disk cannot take this write", as opposed to "this input is bad".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
RETRY_SECONDS = 1.0


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def storage_trouble(root: DataRoot, min_free_mb: int) -> str | None:
    """Why the data root cannot take writes now (free space under the floor, or a
    probe write fails), or None. Blocking: run it in a thread."""
    try:
        free_mb = shutil.disk_usage(root.root).free / 2**20
    except OSError as exc:
        return str(exc)
    if free_mb < min_free_mb:
        return f"{free_mb:.0f} MiB free, below {min_free_mb} MiB"
    probe = root.tmp / f"storage-probe-{uuid.uuid4().hex}"
    try:
        atomic_write(probe, b"ok", tmp_dir=root.tmp)
        probe.unlink()
    except OSError as exc:
        return str(exc)
    return None


async def wait_for_storage(root: DataRoot, min_free_mb: int, job_id: str) -> None:
    """Sleep until the data root takes writes again (at least one retry interval)."""
    while True:
        await asyncio.sleep(RETRY_SECONDS)
        trouble = await asyncio.to_thread(storage_trouble, root, min_free_mb)
        if trouble is None:
            return
        log.info("job_waits_for_storage", job_id=job_id, reason=trouble)
