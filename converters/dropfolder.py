"""The folder a document was dropped in, pinned as a directory descriptor.

A document may load files beside it (an image, a stylesheet, a font). The
dropper can still change that folder while the job waits and runs: rename it,
replace it by a symbolic link to ``/``, swap a subfolder for a link, hard-link
a secret into it. So the worker never gets a path to the drop folder, only a
descriptor the daemon opened (``O_DIRECTORY | O_NOFOLLOW``) when it claimed the
file: whatever happens to the name afterwards, the descriptor still means the
folder that was checked.

Every read goes through ``DropFolder.read``, built on ``converters.beneath``:
each component is opened with ``O_NOFOLLOW`` beneath the descriptor, ``..`` and
absolute paths are refused before anything is opened, and only a regular file
with exactly one link, no larger than the cap (from ``fstat``), is read.
A refusal is a ``ResourceUnavailable`` carrying the warning code for the sidecar.

Every read is remembered (``reads``: the path and what it gave, the content's
sha256 or the refusal's code), so that a result can be reused later only while
the files it was made from are still the same (daemon/reuse.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from converters.beneath import (
    Beneath,
    HardLinked,
    Missing,
    NotRegular,
    OutsideFolder,
    TooLarge,
    read_regular,
    split_relative,
)
from converters.warning_codes import WarningCode

__all__ = ["DropFolder", "ResourceUnavailable"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class ResourceUnavailable(Exception):
    """A resource that is not read, with the warning code that says why."""

    def __init__(self, code: WarningCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DropFolder:
    """Owns one directory descriptor; reads files strictly beneath it."""

    def __init__(self, fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise NotADirectoryError(f"descriptor {fd} is not a folder")
        self._fd: int | None = fd
        # Each path read (as given) and what it gave: ``sha256:<hex>`` of the
        # bytes, or the warning code of the refusal.
        self.reads: dict[str, str] = {}
        self.read_bytes = 0  # all the bytes ``read`` returned

    @classmethod
    def open(cls, path: Path) -> DropFolder:
        """Open a folder the caller trusts by path (the one-shot CLI, tests, benches)."""
        fd = os.open(path, _DIR_FLAGS)
        try:
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("the drop folder is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> DropFolder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, relative: str | Sequence[str], *, max_bytes: int) -> bytes:
        """The bytes of ``relative`` ('/'-separated, or components) beneath the folder.

        Raises ResourceUnavailable: ``local_resource_blocked`` (escapes the
        folder, a symbolic link on the way, hard-linked, a FIFO, socket, device
        or folder), ``resource_missing`` or ``resource_too_large``. The outcome
        is added to ``reads``.
        """
        key = relative if isinstance(relative, str) else "/".join(relative)
        try:
            body = self._read(relative, max_bytes=max_bytes)
        except ResourceUnavailable as exc:
            self.reads[key] = str(exc.code)
            raise
        self.reads[key] = "sha256:" + hashlib.sha256(body).hexdigest()
        self.read_bytes += len(body)
        return body

    def outcome(self, relative: str, *, max_bytes: int) -> str:
        """What reading ``relative`` gives now, in the form ``reads`` records."""
        with contextlib.suppress(ResourceUnavailable):
            self.read(relative, max_bytes=max_bytes)
        return self.reads[relative]

    def _read(self, relative: str | Sequence[str], *, max_bytes: int) -> bytes:
        try:
            parts = split_relative(relative)
            return read_regular(self.fileno(), parts, max_bytes)
        except OutsideFolder as exc:
            raise ResourceUnavailable(WarningCode.LOCAL_RESOURCE_BLOCKED, str(exc)) from None
        except (NotRegular, HardLinked) as exc:
            raise ResourceUnavailable(WarningCode.LOCAL_RESOURCE_BLOCKED, str(exc)) from None
        except TooLarge as exc:
            raise ResourceUnavailable(WarningCode.RESOURCE_TOO_LARGE, str(exc)) from None
        except Missing as exc:
            code = (
                WarningCode.LOCAL_RESOURCE_BLOCKED
                if self._link_on_the_way(parts)
                else WarningCode.RESOURCE_MISSING
            )
            raise ResourceUnavailable(code, str(exc)) from None
        except (Beneath, OSError) as exc:  # EACCES and the like: not read, not missing
            raise ResourceUnavailable(WarningCode.LOCAL_RESOURCE_BLOCKED, str(exc)) from None

    def _link_on_the_way(self, parts: Sequence[str]) -> bool:
        """Whether a folder on the way is a symbolic link (beneath calls that Missing).

        Only chooses the warning code: the walk already refused to follow it.
        """
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.fileno())
        try:
            for part in parts:
                try:
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    return False
                if stat.S_ISLNK(info.st_mode):
                    return True
                if not stat.S_ISDIR(info.st_mode):
                    return False
                nxt = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return False
        except OSError:
            return False
        finally:
            os.close(fd)
