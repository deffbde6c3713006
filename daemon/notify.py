"""systemd's sd_notify protocol, spoken directly over the datagram socket.

READY=1 once the daemon has started (recovery done, lanes and watcher running,
health served: the supervisor's first readiness round), STATUS= lines every
second that say whether it takes files and why not, WATCHDOG=1 from the
supervisor loop (rate-limited to half of WATCHDOG_USEC), STOPPING=1 on SIGTERM.
Without NOTIFY_SOCKET every call is a no-op. What "started" means, and why it
is not "ready", is in docs/health.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_watchdog = 0.0
        self._ready_sent = False
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls) -> Notifier:
        address = os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None
        return cls(address, int(usec) if usec and usec.isdigit() else None)

    @property
    def ready_sent(self) -> bool:
        return self._ready_sent

    def send(self, message: str) -> None:
        if self._sock is None or self.address is None:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        with contextlib.suppress(OSError):  # the manager went away: nothing to do
            self._sock.sendto(message.encode(), target)

    def ready(self, status: str) -> None:
        self._ready_sent = True
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def status_or_ready(self, status: str) -> None:
        """READY=1 with the first status line, plain STATUS= lines after it."""
        if self._ready_sent:
            self.status(status)
        else:
            self.ready(status)

    def watchdog(self) -> None:
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=draining")
