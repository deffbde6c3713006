"""Memory of a worker's whole process group, sampled from /proc while a job runs.

A worker leads its own process group (``start_new_session``), and everything it
starts (pandoc) stays in it, so the group's resident memory is what one job
costs. The reply's ``rss_mb`` only tells after the job; a hostile document
grows a converter to 9 GB within seconds, so the main process samples the group
every ``SAMPLE_SECONDS`` during the job and kills it past the lane's ceiling.

Finding the group's members means reading every ``/proc/<pid>/stat``; that is
done once a second at most (a worker keeps one sampler across its jobs), and
the known members are re-read in between.
"""

from __future__ import annotations

import os
import time

__all__ = ["SAMPLE_SECONDS", "GroupSampler"]

SAMPLE_SECONDS = 0.1
_RESCAN_SECONDS = 1.0
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: str) -> tuple[int, int] | None:
    """(process group, resident pages) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # after "pid (comm) ": state ppid pgrp ... rss is the 24th field of the line
    return int(fields[2]), int(fields[21])


class GroupSampler:
    """Resident memory (MB) of one process group, all members summed."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.members: set[str] = {str(pgid)}
        self.peak_mb = 0.0
        self._scanned = 0.0

    def _rescan(self) -> None:
        found: set[str] = set()
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    stat = _stat(entry.name)
                    if stat is not None and stat[0] == self.pgid:
                        found.add(entry.name)
        self.members = found
        self._scanned = time.monotonic()

    def sample(self) -> float:
        if time.monotonic() - self._scanned >= _RESCAN_SECONDS:
            self._rescan()
        pages = 0
        for pid in list(self.members):
            stat = _stat(pid)
            if stat is None or stat[0] != self.pgid:
                self.members.discard(pid)
            else:
                pages += stat[1]
        mb = pages * _PAGE_MB
        self.peak_mb = max(self.peak_mb, mb)
        return mb
