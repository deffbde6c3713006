"""Asking the kernel whether some process still holds a file open for writing.

inotify says when a writer *closed* a file, not whether another descriptor is
still open on it, and it says nothing about writes made before a folder was
watched (``mkdir d && cp x d/``, a file already being written when the daemon
starts). A writer that holds such a file open and pauses longer than the settle
window would look finished. The kernel knows better: a read lease
(``fcntl(F_SETLEASE, F_RDLCK)``) is refused with ``EAGAIN`` while any process has
the file open for writing (or mapped, through a descriptor that was). The probe
takes one and gives it back at once; nothing is read.

* The claim asks, in its own thread, on the folder descriptor its walk from the
  inbox opened (never following a link), just before it moves the file; a file
  still open raises ``StillOpen`` and stays where it is. The file is opened only
  if ``fstatat`` on that folder says it is a regular file, so no device
  driver's ``open`` ever runs, and never follows a link or blocks.
* Only local file systems whose leases mean exactly that are asked
  (``_FAITHFUL``, by ``fstatfs``). NFSv4 and SMB clients answer ``EAGAIN``
  whenever the server granted no delegation or oplock, which would hold every
  file for ever; a writer on another machine is invisible here anyway.
* A lease needs the file's owner or ``CAP_LEASE``. The systemd unit grants it as
  an ambient capability, which every program the daemon runs would inherit:
  ``keep_lease_to_ourselves`` (first thing in ``cli.main``) empties the ambient
  set, so git, the scanner and the workers parsing documents never hold it. The
  set is per thread: it must run before any thread starts.
* Only a regular file with one link is opened: an entry with more links is
  refused unread by the claim's checks, and its other name is none of our
  business (docs/security.md).
* Where the kernel cannot be asked, the probe answers "not held" and the settle
  rules alone decide, as before; why is logged once (``writer_probe_unavailable``).
* A process holding a write lease on the file (Samba with kernel oplocks, for a
  client that has it open) makes the non-blocking open fail with ``EAGAIN``:
  held, too. That open also starts a break of the client's oplock.
* A writer that opens the file during the microseconds the lease is held waits
  until it is given back. The kernel tells the lease holder with ``SIGIO``, whose
  default action ends the process, so the daemon ignores ``SIGIO`` (set up here,
  from the main thread; anywhere else the probe stays off). Programs the daemon
  starts inherit the ignored ``SIGIO``; none of them uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import stat
import sys
import threading

import structlog

from converters.beneath import Beneath, check_regular

__all__ = ["StillOpen", "WriterProbe", "keep_lease_to_ourselves"]

log = structlog.get_logger("sir_convert_a_lot.open_writers")

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# statfs f_type of the local file systems whose leases follow the VFS's own count
# of writers (generic_setlease).
_FAITHFUL = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0x858458F6: "ramfs",
}
_KNOWN = {
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x794C7630: "overlay",
}
_CANNOT_ASK = {
    errno.EACCES: "the daemon neither owns the file nor has CAP_LEASE",
    errno.EPERM: "the daemon neither owns the file nor has CAP_LEASE",
    errno.EINVAL: "this file system (or fs.leases-enable=0) refuses leases",
    errno.ENOLCK: "the kernel has no lease left to give",
}
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


class StillOpen(Exception):
    """The claim found the file still open for writing: it waits in the inbox."""


class _StatFs(ctypes.Structure):
    # f_type (__fsword_t, a long on 64-bit Linux) leads struct statfs; the rest
    # is room, more than any architecture's struct needs.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 248)]


def keep_lease_to_ourselves() -> None:
    """Empty the ambient capability set: the daemon keeps CAP_LEASE (if it was
    given one), the programs it starts from now on get none. Per thread: call
    it before any thread starts."""
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        log.warning("ambient_capabilities_kept", error=os.strerror(ctypes.get_errno()))


def _file_system(fd: int) -> int | None:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


class WriterProbe:
    def __init__(self) -> None:
        self._logged: set[str] = set()
        self.off_reason: str | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        elif signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
            self.off_reason = "SIGIO is not ignored (probe set up outside the main thread)"
            self._unavailable(self.off_reason)

    def held_for_writing(self, folder_fd: int, name: str) -> bool:
        """True when some process holds the entry ``name`` of the folder
        ``folder_fd`` open for writing. False when none does, and whenever that
        cannot be told: the entry is gone, not a regular file, or the kernel
        cannot be asked."""
        if self.off_reason is not None:
            return False
        try:
            st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return False
            fd = os.open(name, _OPEN, dir_fd=folder_fd)
        except OSError as exc:
            # Another process's write lease refuses a non-blocking open: that
            # process has it open. Anything else: gone or swapped.
            return exc.errno == errno.EWOULDBLOCK
        try:
            return self._leased(fd)
        finally:
            os.close(fd)

    def _leased(self, fd: int) -> bool:
        try:
            check_regular(fd, "the entry", sys.maxsize)  # swapped since the fstatat?
        except Beneath:
            return False
        kind = _file_system(fd)
        if kind not in _FAITHFUL:
            name = _KNOWN.get(kind or 0, f"type {kind:#x}" if kind is not None else "unknown")
            self._unavailable(f"leases on this file system ({name}) do not tell who writes")
            return False
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return True
            self._unavailable(_CANNOT_ASK.get(exc.errno or 0, os.strerror(exc.errno or 0)))
            return False
        with contextlib.suppress(OSError):  # closing the descriptor gives it back too
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False

    def _unavailable(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "writer_probe_unavailable",
                reason=reason,
                consequence="such files settle on the quiet window and stable size alone",
            )
