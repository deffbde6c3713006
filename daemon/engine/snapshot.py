"""A bounded snapshot of a drop folder's resources, for a job that runs on another host.

md and html documents load pictures, stylesheets and fonts from beside them.
A worker node has no path to the data root, so the ingest node reads those
files beneath the drop folder's descriptor (``converters.beneath``: no link is
followed, only regular files with one link are read) and sends them with the
job; the worker node rebuilds them in a private folder and hands its
descriptor to the lane worker, as the embedded daemon does with the real one.
Only asset extensions are read, two folder levels deep, within a byte budget;
what does not fit is left out (the converter then warns as for a missing file).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from converters.beneath import Beneath, open_dir_beneath, read_regular

__all__ = ["RESOURCE_SOURCES", "read_snapshot", "write_snapshot"]

RESOURCE_SOURCES = frozenset({"md", "markdown", "html", "htm"})
_MAX_FILES = 200
_MAX_DEPTH = 2


def read_snapshot(drop_fd: int, extensions: Iterable[str], budget: int) -> dict[str, bytes]:
    """The drop folder's asset files, by '/'-separated relative name, within ``budget``."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    found: dict[str, bytes] = {}
    used = 0

    def walk(fd: int, prefix: tuple[str, ...]) -> None:
        nonlocal used
        try:
            names = sorted(os.listdir(fd))
        except OSError:
            return
        for name in names:
            if len(found) >= _MAX_FILES:
                return
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and len(prefix) < _MAX_DEPTH:
                with contextlib.suppress(Beneath, OSError):
                    sub = open_dir_beneath(fd, [name])
                    try:
                        walk(sub, (*prefix, name))
                    finally:
                        os.close(sub)
            elif stat.S_ISREG(st.st_mode) and name.rpartition(".")[2].lower() in wanted:
                if used + st.st_size > budget:
                    continue
                with contextlib.suppress(Beneath, OSError):
                    data = read_regular(fd, [name], budget - used)
                    found["/".join((*prefix, name))] = data
                    used += len(data)

    walk(drop_fd, ())
    return found


def write_snapshot(folder: Path, files: dict[str, bytes]) -> None:
    """Rebuild a snapshot under ``folder`` (a private, empty folder of the worker node)."""
    for name, data in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            continue  # never written outside the folder, whoever wrote the row
        target = folder.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
