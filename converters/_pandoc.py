"""A thin wrapper around the pandoc binary, always run with ``--sandbox``."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from converters.errors import ConverterFailed, DependencyMissing, Timeout

__all__ = ["pandoc_path", "pandoc_version", "run_pandoc"]

PANDOC_TIMEOUT_SECONDS = 300


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


def run_pandoc(args: list[str], *, cwd: Path, timeout: float = PANDOC_TIMEOUT_SECONDS) -> str:
    """Run pandoc in its sandbox and return stdout; failures become typed errors.

    ``--sandbox`` limits pandoc's reads to the files named on the command line, so
    a document cannot include ``/etc/passwd`` or fetch a URL.
    """
    cmd = [pandoc_path(), "--sandbox", *args]
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise Timeout(f"pandoc did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ConverterFailed(
            f"pandoc exited {done.returncode}: {done.stderr.strip()[:500]}",
            stderr=done.stderr[-2000:],
        )
    return done.stdout
