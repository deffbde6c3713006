"""sd_notify against the real daemon: we play systemd on a unix datagram socket."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import Daemon

pytestmark = pytest.mark.e2e


class FakeSystemd:
    """Binds NOTIFY_SOCKET and records every datagram, in order of arrival."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append(self._sock.recv(4096).decode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def wait_for(
        self, predicate: Callable[[list[str]], bool], daemon: Daemon, timeout: float = 240.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(list(self.messages)):
            assert time.monotonic() < deadline, f"{self.messages[-5:]}\n{daemon.tail()}"
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
            time.sleep(0.05)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    # A short path: AF_UNIX addresses are limited to ~107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="sd-"))
    fake = FakeSystemd(folder / "notify")
    yield fake
    fake.close()
    (folder / "notify").unlink(missing_ok=True)
    folder.rmdir()


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def test_ready_watchdog_status_and_stopping_in_order(
    tmp_path: Path, tiny_models_dir: Path, systemd: FakeSystemd
) -> None:
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"}
    daemon = Daemon(tmp_path, models_dir=tiny_models_dir, env=env)
    try:
        daemon.start(wait_ready=False)
        systemd.wait_for(lambda ms: any("READY=1" in m for m in ms), daemon)
        # READY=1 means started: health is served at once, readiness may follow.
        status, body = daemon.get("/healthz")
        assert status == 200, body
        ready_at = next(i for i, m in enumerate(systemd.messages) if "READY=1" in m)
        # Keep-alives go on after READY=1 (WATCHDOG_USEC=2 s: one every second),
        # and a STATUS= line says "ready" once every check passes.
        systemd.wait_for(
            lambda ms: (
                sum(m == "WATCHDOG=1" for m in ms[ready_at:]) >= 3
                and any(m.startswith("STATUS=ready") for m in ms[ready_at:])
            ),
            daemon,
        )
        status, body = daemon.get("/readyz")
        assert status == 200, body
        assert daemon.stop() == 0  # SIGTERM
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
    time.sleep(0.3)  # let the reader drain what the socket already holds
    messages = list(systemd.messages)

    readies = [i for i, m in enumerate(messages) if "READY=1" in m]
    assert len(readies) == 1, "READY=1 is sent once"
    ready_at = readies[0]
    # Nothing but keep-alives before READY=1; it comes with the first status line.
    assert all(m == "WATCHDOG=1" for m in messages[:ready_at]), messages[:ready_at]
    statuses = [fields(m)["STATUS"] for m in messages[ready_at:] if "STATUS=" in m]
    running = [s for s in statuses if s != "draining"]
    # While warming up it said why it was not ready, by code; then it said ready.
    warming = [s for s in running if s.startswith("not ready (")]
    assert all("workers_not_warm" in s for s in warming), warming
    assert all(s.startswith(("ready; ", "not ready (")) for s in running), running
    assert running[-1].startswith("ready; ")
    assert all("pending" in s and "active" in s for s in running)

    stops = [i for i, m in enumerate(messages) if "STOPPING=1" in m]
    assert len(stops) == 1 and stops[0] > ready_at
    assert fields(messages[stops[0]])["STATUS"] == "draining"
    # Nothing after STOPPING=1 contradicts it: no keep-alive, no "ready" status.
    after = messages[stops[0] + 1 :]
    assert not [m for m in after if "WATCHDOG=1" in m or "READY=1" in m or "ready" in m], after
    watchdogs = [i for i, m in enumerate(messages) if m == "WATCHDOG=1"]
    assert len(watchdogs) >= 3
    assert all(i < stops[0] for i in watchdogs)
    # Every datagram is one of the protocol's messages.
    known = {"READY", "STATUS", "WATCHDOG", "STOPPING"}
    assert all(set(fields(m)) <= known and fields(m) for m in messages), messages
