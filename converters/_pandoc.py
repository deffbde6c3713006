"""The pandoc binary: where it is, its version, and the limits it runs under.

The routes run it resident, one per worker (``converters.pandoc_resident``).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from converters.errors import DependencyMissing

__all__ = ["PANDOC_HEAP_MB", "PANDOC_TIMEOUT_SECONDS", "pandoc_path", "pandoc_version"]

# Backstops under the lane's own limits (daemon/config.py): the route budget
# (md->pdf: 30 s + 30 s per MB, at most the lane's 300 s) kills the worker's
# whole group first, and the heap cap stays under the lane's memory_ceiling_mb
# (4096 MB) with the worker's own ~1 GB beside it, so a nested-lines bomb ends
# as pandoc's quick heap failure, not a memory kill of the worker.
PANDOC_TIMEOUT_SECONDS = 240
PANDOC_HEAP_MB = 1024


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
