"""Opening paths beneath a directory descriptor, one component at a time, never
following a symbolic link.

Anything a dropper controls (names in the inbox, the folders a document sits in,
the files it references, options files) is reached through these functions:

* the walk starts at a descriptor the daemon opened itself (the inbox, or a
  drop folder pinned at claim time), never at a path string;
* each folder is opened with ``openat(O_DIRECTORY | O_NOFOLLOW)`` relative to
  the one before, so a folder swapped for a symlink fails the walk (``ELOOP``
  or ``ENOTDIR``) instead of leading elsewhere;
* ``..``, ``.``, empty components, absolute paths and NUL bytes are refused
  before anything is opened, so a walk cannot climb out of its start folder;
* the final file is opened with ``O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`` (a FIFO
  never hangs the reader) and judged by ``fstat`` of the open descriptor:
  a regular file with exactly one link, no larger than the caller's cap.

Every check is made on the descriptor that is then read, so nothing can change
between the check and the use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

__all__ = [
    "Beneath",
    "HardLinked",
    "Missing",
    "NotRegular",
    "OutsideFolder",
    "TooLarge",
    "check_regular",
    "open_dir_beneath",
    "open_file_beneath",
    "opened_dir",
    "read_regular",
    "split_relative",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Beneath(OSError):
    """A path that cannot be opened beneath its folder, and why (a subclass)."""


class OutsideFolder(Beneath):
    """The path is absolute, climbs with ``..``, is empty or holds a NUL byte."""


class Missing(Beneath):
    """Some component does not exist, or a folder on the way is not a folder."""


class NotRegular(Beneath):
    """The entry is a symlink, a folder, a FIFO, a socket or a device."""


class HardLinked(Beneath):
    """A regular file with more than one link: its other name may be anywhere."""


class TooLarge(Beneath):
    """A regular file larger than the caller allows (from ``fstat``, nothing read)."""


def split_relative(relative: str | PurePosixPath | Sequence[str]) -> list[str]:
    """The components of a '/'-separated relative path; refuses escapes.

    A sequence is taken as components already split. Nothing is opened.
    """
    if isinstance(relative, str | PurePosixPath):
        text = str(relative)
        if text.startswith("/"):
            raise OutsideFolder(f"absolute path {text[:200]!r}")
        parts = text.split("/")
    else:
        parts = list(relative)
    if not parts:
        raise OutsideFolder("empty path")
    for part in parts:
        if part in ("", ".", "..") or "\x00" in part or "/" in part:
            raise OutsideFolder(f"path component {part[:200]!r} is not allowed")
    return parts


def _classify(exc: OSError, what: str, *, folder: bool = False) -> Beneath:
    what = what if len(what) <= 80 else what[:77] + "..."
    if folder and exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return Missing(f"{what} is not a folder (a symbolic link or a file)")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return NotRegular(f"{what} is a symbolic link")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return Missing(f"{what} does not exist")
    if exc.errno == errno.ENAMETOOLONG:
        return Missing(f"{what}: name too long")
    if exc.errno == errno.ENXIO:
        return NotRegular(f"{what} is a socket or device")
    return Beneath(exc.errno, f"{what}: {exc.strerror}")


def open_dir_beneath(dir_fd: int, parts: Sequence[str]) -> int:
    """A new descriptor for the folder ``parts`` beneath ``dir_fd`` (empty: a dup).

    Raises Missing (absent, or a non-folder on the way), NotRegular (a symlink on
    the way), or Beneath for other errors. The caller closes the result.
    """
    fd = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for part in split_relative(parts) if parts else []:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _classify(exc, part, folder=True) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_beneath(dir_fd: int, parts: Sequence[str]) -> int:
    """A read-only descriptor for the entry ``parts`` beneath ``dir_fd``.

    Never follows a link, never blocks on a FIFO. The entry may still be of any
    kind: ``read_regular`` (or the caller's own ``fstat``) judges it.
    """
    parts = split_relative(parts)
    folder = open_dir_beneath(dir_fd, parts[:-1])
    try:
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
    except OSError as exc:
        raise _classify(exc, parts[-1]) from None
    finally:
        os.close(folder)


def check_regular(fd: int, name: str, max_bytes: int) -> os.stat_result:
    """``fstat`` the open ``fd``: a regular file, one link, at most ``max_bytes``."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegular(f"{name} is not a regular file")
    if info.st_nlink != 1:
        raise HardLinked(f"{name} has {info.st_nlink} links")
    if info.st_size > max_bytes:
        raise TooLarge(f"{name} is {info.st_size} bytes, more than {max_bytes}")
    return info


def read_regular(dir_fd: int, relative: str | Sequence[str], max_bytes: int) -> bytes:
    """The bytes of a regular, singly linked file beneath ``dir_fd``, size-capped.

    The size is judged from ``fstat`` before a byte is read, and at most
    ``max_bytes`` are read even if the file grows meanwhile.
    """
    parts = split_relative(relative) if isinstance(relative, str) else list(relative)
    fd = open_file_beneath(dir_fd, parts)
    try:
        check_regular(fd, parts[-1], max_bytes)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise TooLarge(f"{parts[-1]} grew past {max_bytes} bytes while it was read")
        return data
    finally:
        os.close(fd)


@contextlib.contextmanager
def opened_dir(path: str | os.PathLike[str]) -> Iterator[int]:
    """A descriptor for a folder the daemon trusts (its own data root)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
