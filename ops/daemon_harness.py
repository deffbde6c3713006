"""Start the real daemon (``python -m daemon run``) as a subprocess, and wait on it.

The one harness for everything that runs the daemon from outside: the e2e
tests (tests/fixtures/daemon.py), the benchmark (ops/bench_lib/daemon_proc.py)
and ops/verify-gpu. Standard library only, so verify-gpu can load it with any
``python3`` (3.9 or later, like the other ops scripts) while the daemon runs
under the product's interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

    from daemon.layout import DataRoot

__all__ = ["REPO", "DaemonFailed", "DaemonProcess", "daemon_env", "free_port"]

REPO = Path(__file__).resolve().parents[1]
_ENV_PREFIX = "SIR_CONVERT_A_LOT_"


class DaemonFailed(AssertionError):
    """The daemon exited, or did not answer in time (an AssertionError, for tests)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_env(extra: Mapping[str, str], *, inherit: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without its ``SIR_CONVERT_A_LOT_*`` variables
    (except ``inherit``), with the checkout importable and output unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIX) or k in inherit}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class DaemonProcess:
    """One daemon process: start it, ask it over HTTP, wait for it, stop it."""

    def __init__(
        self,
        base: Path,
        port: int,
        env: Mapping[str, str],
        *,
        log: Path | None = None,
        python: str = sys.executable,
        args: Sequence[str] = ("run",),
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        """``prefix`` runs the daemon under another command (``ip netns exec NS``:
        the engine's e2e test); ``host`` is where its listener answers then."""
        self.base = base
        self.port = port
        self.host = host
        self.log = log or base / "daemon.log"
        self.command = [*prefix, python, "-m", "daemon", *args]
        self._env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.root: Path | None = None  # the data root, where the caller knows it

    def env(self) -> dict[str, str]:
        return dict(self._env)

    # -- the data root (needs the daemon's packages; verify-gpu never asks) --------

    @property
    def layout(self) -> DataRoot:
        """The data root's folders, as the daemon itself names them."""
        from daemon.layout import DataRoot

        assert self.root is not None, "no data root given"
        return DataRoot(self.root)

    @property
    def inbox(self) -> Path:
        return self.layout.inbox

    @property
    def outbox(self) -> Path:
        return self.layout.outbox

    @property
    def failed(self) -> Path:
        return self.layout.failed

    @property
    def archive(self) -> Path:
        return self.layout.archive

    # -- life ------------------------------------------------------------------

    def start(self) -> Self:
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command, env=self.env(), cwd=self.base, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM (the daemon drains), SIGKILL after ``timeout``; the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of GET ``path`` (503s too); OSError when nothing answers."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as resp:  # noqa: S310
            return str(resp.read().decode())

    def wait_ready(
        self,
        timeout: float = 240.0,
        *,
        interval: float = 0.05,
        on_answer: Callable[[int, dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll /readyz until it answers 200; return its body.

        ``on_answer`` sees every answer (status, body) and may end the wait early
        by returning True (verify-gpu gives up once only a missing GPU is left).
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise DaemonFailed(f"daemon exited {code}:\n{self.tail()}")
            try:
                status, last = self.get("/readyz")
            except OSError:
                status = 0
            if status == 200 or (status and on_answer is not None and on_answer(status, last)):
                return last
            time.sleep(interval)
        raise DaemonFailed(f"daemon not ready within {timeout:.0f} s: {last}\n{self.tail()}")
