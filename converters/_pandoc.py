"""A thin wrapper around the pandoc binary, always run with ``--sandbox``."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from converters.errors import ConverterFailed, DependencyMissing, ResourceLimitExceeded, Timeout
from converters.warning_codes import WarningCode

__all__ = ["pandoc_path", "pandoc_version", "resource_warnings", "run_pandoc"]

# Backstops under the lane's own limits (daemon/config.py): the route budget
# (md->pdf: 30 s + 30 s per MB, at most the lane's 300 s) kills the worker's
# whole group first, and the heap cap stays under the lane's memory_ceiling_mb
# (4096 MB) with the worker's own ~1 GB beside it, so a nested-lines bomb ends
# as pandoc's quick heap failure, not a memory kill of the worker.
PANDOC_TIMEOUT_SECONDS = 240
PANDOC_HEAP_MB = 1024
_HEAP_EXHAUSTED = "Heap exhausted"
_NOT_FETCHED = re.compile(r"Could not fetch resource (\S+?):? ")
# A URL naming another host; file: URLs (file:///etc/passwd) are local reads.
_URL = re.compile(r"^(?![Ff][Ii][Ll][Ee]:)[A-Za-z][A-Za-z0-9+.-]*://")


@functools.cache
def pandoc_path() -> str:
    """The pandoc binary: pypandoc-binary's bundled one, else the one on PATH."""
    try:
        import pypandoc

        path = str(pypandoc.get_pandoc_path())
        if path and Path(path).exists():
            return path
    except (ImportError, OSError):
        pass
    found = shutil.which("pandoc")
    if found is None:
        raise DependencyMissing("pandoc is not installed (pip install pypandoc-binary)")
    return found


@functools.cache
def pandoc_version() -> str:
    out = subprocess.run(
        [pandoc_path(), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    first = out.splitlines()[0] if out else "pandoc unknown"
    return first.split()[-1]


def resource_warnings(stderr: str) -> list[str]:
    """Warning codes for the images/resources pandoc's sandbox did not fetch."""
    remote, local = WarningCode.REMOTE_RESOURCE_BLOCKED, WarningCode.LOCAL_RESOURCE_BLOCKED
    found = {remote if _URL.match(target) else local for target in _NOT_FETCHED.findall(stderr)}
    return sorted(found)


def run_pandoc(
    args: list[str],
    *,
    cwd: Path,
    timeout: float = PANDOC_TIMEOUT_SECONDS,
    warnings: list[str] | None = None,
) -> str:
    """Run pandoc in its sandbox and return stdout; failures become typed errors.

    ``--sandbox`` limits pandoc's reads to the files named on the command line, so
    a document cannot include ``/etc/passwd`` or fetch a URL. A resource it
    therefore left out (an image beside the document, a remote image) adds
    ``local_resource_blocked`` / ``remote_resource_blocked`` to ``warnings``.
    """
    # The heap cap turns a hostile document (deeply nested lists, huge tables)
    # into a quick pandoc failure instead of a machine-wide OOM.
    cmd = [pandoc_path(), "+RTS", f"-M{PANDOC_HEAP_MB}m", "-RTS", "--sandbox", *args]
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise Timeout(f"pandoc did not finish within {timeout:.0f} s") from None
    if done.returncode != 0 and _HEAP_EXHAUSTED in done.stderr:
        # The document needs more memory than a job may have: the same input
        # fails the same way every time, like a worker killed at its ceiling.
        raise ResourceLimitExceeded(
            f"pandoc needed more than its {PANDOC_HEAP_MB} MB heap for this document"
        )
    if done.returncode != 0:
        raise ConverterFailed(
            f"pandoc exited {done.returncode}: {done.stderr.strip()[:500]}",
            stderr=done.stderr[-2000:],
        )
    if warnings is not None:
        warnings.extend(w for w in resource_warnings(done.stderr) if w not in warnings)
    return done.stdout
