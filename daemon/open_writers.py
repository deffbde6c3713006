"""Asking the kernel whether some process still holds a file open for writing.

inotify says when a writer *closed* a file, not whether another descriptor is
still open on it, and it says nothing about writes made before a folder was
watched (``mkdir d && cp x d/``, a file already being written when the daemon
starts). A writer that holds such a file open and pauses longer than the settle
window would look finished. The kernel knows better: a read lease
(``fcntl(F_SETLEASE, F_RDLCK)``) is refused with ``EAGAIN`` while any process has
the file open for writing (or mapped writable). The probe takes one and gives it
back at once; nothing is read.

* The file is reached by a walk of descriptors from the inbox, never following a
  link (``converters.beneath``), and probed only if it is a regular file.
* A lease needs the file's owner or ``CAP_LEASE`` (the systemd unit grants it),
  leases enabled (``fs.leases-enable``, the default) and a local file system
  (NFS and CIFS mounts refuse them). When the kernel cannot be asked, the probe
  answers "not held" and the settle rules alone decide, as before; why is logged
  once (``writer_probe_unavailable``).
* A process holding a write lease on the file (Samba with kernel oplocks, for a
  client that has it open) makes the non-blocking open fail with ``EAGAIN``:
  held, too.
* A writer that opens the file during the microseconds the lease is held waits
  until it is given back. The kernel tells the lease holder with ``SIGIO``, whose
  default action ends the process, so the daemon ignores ``SIGIO`` (set up here,
  from the main thread; anywhere else the probe stays off).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Sequence

import structlog

from converters.beneath import open_file_beneath

__all__ = ["WriterProbe"]

log = structlog.get_logger("sir_convert_a_lot.open_writers")

_CANNOT_ASK = {
    errno.EACCES: "the daemon neither owns the file nor has CAP_LEASE",
    errno.EPERM: "the daemon neither owns the file nor has CAP_LEASE",
    errno.EINVAL: "this file system (or fs.leases-enable=0) refuses leases",
    errno.ENOLCK: "the kernel has no lease left to give",
}


class WriterProbe:
    def __init__(self) -> None:
        self.off_reason: str | None = None
        self._logged: set[str] = set()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        elif signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
            self.off_reason = "SIGIO is not ignored (probe set up outside the main thread)"

    def held_for_writing(self, dir_fd: int, parts: Sequence[str]) -> bool:
        """True when some process holds the entry ``parts`` beneath ``dir_fd`` open
        for writing. False when none does, and whenever that cannot be told: the
        entry is gone, not a regular file, or the kernel refuses to be asked."""
        if self.off_reason is not None:
            return False
        try:
            fd = open_file_beneath(dir_fd, parts)
        except OSError as exc:  # Beneath included
            # Another process's write lease (Samba with kernel oplocks) refuses a
            # non-blocking open: that process has it open. Anything else (gone,
            # swapped for a link or a folder): the claim finds out what is there.
            return exc.errno == errno.EWOULDBLOCK
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return True
                self._cannot_ask(exc)
                return False
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return False
        finally:
            os.close(fd)

    def _cannot_ask(self, exc: OSError) -> None:
        reason = _CANNOT_ASK.get(exc.errno or 0, f"{errno.errorcode.get(exc.errno or 0, '?')}")
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "writer_probe_unavailable",
                reason=reason,
                consequence="files written before their folder was watched settle on "
                "the quiet window alone",
            )
