"""Dropping files into a running daemon and timing its answers from outside.

Inputs are written in a staging folder on the data root's filesystem and
renamed into the inbox (complete at once), or written in place (the settle
window applies). An inotify watch on the inbox, outbox and failed folders
stamps the claim (the input renamed out of the inbox) and the publication of
the sidecar (renamed into outbox/ or failed/).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.inotify import IN_MOVED_FROM, IN_MOVED_TO, Event, Inotify

__all__ = ["Answer", "Observer", "TARGET_FOLDER"]

TARGET_FOLDER = {"md": "to-md", "pdf": "to-pdf", "docx": "to-docx"}


@dataclass(frozen=True)
class Answer:
    claimed_at: float | None
    answered_at: float
    ok: bool


class Observer:
    """inotify on ``inbox/to-*``, ``outbox/to-*`` and ``failed/to-*`` of one daemon."""

    def __init__(self, daemon: BenchDaemon) -> None:
        self.daemon = daemon
        self.ino = Inotify()
        for folder in TARGET_FOLDER.values():
            for base in (daemon.inbox, daemon.outbox, daemon.failed):
                (base / folder).mkdir(parents=True, exist_ok=True)
            self.ino.watch(daemon.inbox / folder, IN_MOVED_FROM)
            self.ino.watch(daemon.outbox / folder, IN_MOVED_TO)
            self.ino.watch(daemon.failed / folder, IN_MOVED_TO)
        self.ino.start()

    def close(self) -> None:
        self.ino.stop()

    # -- dropping ----------------------------------------------------------------

    def rename_in(self, staged: Iterable[Path], target: str) -> float:
        """Rename staged files into ``inbox/to-<target>/``; the time of the first rename."""
        dest = self.daemon.inbox / TARGET_FOLDER[target]
        first: float | None = None
        for path in staged:
            if first is None:
                first = time.monotonic()
            os.rename(path, dest / path.name)
        return first if first is not None else time.monotonic()

    def write_in_place(self, data: bytes, name: str, target: str) -> float:
        """Write a file directly in the inbox, in two chunks; the time of the close."""
        path = self.daemon.inbox / TARGET_FOLDER[target] / name
        half = len(data) // 2
        with path.open("wb") as fh:
            fh.write(data[:half])
            fh.flush()
            fh.write(data[half:])
        return time.monotonic()

    # -- answers -------------------------------------------------------------------

    def _answers(self, target: str) -> list[Event]:
        folder = TARGET_FOLDER[target]
        out_dir, failed_dir = self.daemon.outbox / folder, self.daemon.failed / folder
        return [
            e
            for e in self.ino.events()
            if (e.folder == out_dir and e.name.endswith(".meta.json"))
            or (e.folder == failed_dir and e.name.endswith(".error.json"))
        ]

    def answer(self, name: str, target: str, timeout: float) -> Answer:
        """Wait for the sidecar of inbox/to-<target>/<name>."""
        stem = Path(name).stem
        ok_name = f"{stem}.{target}.meta.json"
        failed_name = f"{name}.error.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self._answers(target):
                if event.name in (ok_name, failed_name):
                    claimed = self.ino.first(
                        self.daemon.inbox / TARGET_FOLDER[target], name, IN_MOVED_FROM
                    )
                    return Answer(claimed, event.at, event.name == ok_name)
            self._check_alive()
            time.sleep(0.005)
        raise TimeoutError(f"no answer for {name} within {timeout:.0f} s\n{self.daemon.tail()}")

    def wait_batch(self, prefix: str, count: int, target: str, timeout: float) -> tuple[float, int]:
        """Wait until ``count`` inputs named ``prefix*`` are answered; (last time, failures)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answers = [e for e in self._answers(target) if e.name.startswith(prefix)]
            if len(answers) >= count:
                failed = sum(1 for e in answers if e.name.endswith(".error.json"))
                return max(e.at for e in answers), failed
            self._check_alive()
            time.sleep(0.01)
        raise TimeoutError(f"{prefix}*: not all {count} answered in {timeout:.0f} s")

    def _check_alive(self) -> None:
        if not self.daemon.alive():
            raise RuntimeError(f"the daemon exited:\n{self.daemon.tail()}")
