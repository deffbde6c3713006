"""Durable filesystem steps: fsync'd writes and atomic, crash-safe renames.

Every visible change in the data root is one ``rename(2)`` of a file that was
fsync'd first, followed by an fsync of the directories involved, so a crash or
power loss leaves either the old state or the new one, never a torn file.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from daemon import faults
from daemon.sidecar import META_SUFFIX

__all__ = [
    "NAME_MAX",
    "atomic_write",
    "durable_move",
    "fit_name",
    "fsync_dir",
    "fsync_file",
    "lexists",
    "tagged_name",
    "unique_name",
    "write_synced",
]

NAME_MAX = 255  # bytes in one path component on Linux filesystems


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(path: Path, stop: Path | None) -> None:
    """mkdir -p, fsync'ing each parent that had to be created."""
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        if stop is not None and parent == stop:
            break
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def write_synced(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (short writes continued), then fsync."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def atomic_write(target: Path, data: bytes, *, tmp_dir: Path, sync_dir: bool = True) -> None:
    """Write ``data`` to ``target`` via an fsync'd temporary file and a rename.

    ``tmp_dir`` must be on the same filesystem as ``target``; it is never in a
    watched or published folder, so no reader can see a partial file.

    ``sync_dir=False`` leaves out the fsync of ``target``'s folder: the file is
    never torn (its data is fsync'd before the rename), but a power loss may
    bring back the previous version. Only for updates whose loss is harmless
    (the next durable write of the folder, or recovery, makes up for it).
    """
    faults.check_write(target)
    tmp = tmp_dir / f"{target.name[:100]}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_synced(fd, data)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    _make_parents(target, None)
    os.replace(tmp, target)
    if sync_dir:
        fsync_dir(target.parent)


def durable_move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (same filesystem) and make both directories durable.

    Refuses to replace an existing ``dst``: callers choose free names first.
    """
    _make_parents(dst, None)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(f"refusing to replace {dst}")
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def _split(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    return (name[:dot], name[dot:]) if dot > 0 else (name, "")


def _fit(stem: str, tail: str, room: int) -> str:
    """``stem`` shortened (whole characters) so that ``stem + tail`` plus ``room``
    bytes fits in NAME_MAX."""
    limit = NAME_MAX - room
    while stem and len(os.fsencode(stem + tail)) > limit:
        stem = stem[:-1]
    return stem


def fit_name(name: str, room: int = 0) -> str:
    """``name``, its stem shortened so that it plus ``room`` bytes fits in NAME_MAX.

    An input may use all 255 bytes; its output name (another extension) and its
    sidecar (``.meta.json``, ``.error.json``) would then not fit."""
    if len(os.fsencode(name)) + room <= NAME_MAX:
        return name
    stem, suffix = _split(name)
    return _fit(stem, suffix, room) + suffix


def lexists(path: Path) -> bool:
    """Is there an entry (of any kind) at ``path``? A name too long to exist is not."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False  # such a name cannot exist
        raise
    return True


def tagged_name(name: str, n: int, *, room: int = 0) -> str:
    """``name`` as the n-th candidate of the collision rule: ``name`` itself for
    n = 1, else ``stem~n.ext``; shortened so that it plus ``room`` fits NAME_MAX."""
    if n == 1:
        return fit_name(name, room)
    stem, suffix = _split(name)
    tag = f"~{n}{suffix}"
    return _fit(stem, tag, room) + tag


def unique_name(path: Path, *, room: int = 0) -> Path:
    """``path`` if free, else ``stem~2.ext``, ``stem~3.ext``… (the collision rule).

    A name counts as taken if it exists or its sidecar exists.
    Names are shortened where needed so that each, plus ``room`` bytes for a
    companion such as ``.error.json``, fits in NAME_MAX.
    """
    n = 1
    while True:
        candidate = path.with_name(tagged_name(path.name, n, room=room))
        if not (lexists(candidate) or lexists(candidate.with_name(candidate.name + META_SUFFIX))):
            return candidate
        n += 1
