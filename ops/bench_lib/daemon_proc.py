"""The real daemon (``python -m daemon run``) on a temporary data root, for measuring.

Profile ``eval`` with the product's defaults except what a benchmark sets on
purpose (models folder, port, and the knobs named in ``extra``); the effective
values are read back from the config so the report states what was in effect.
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
from pathlib import Path
from typing import Any

from bench_lib import procfs
from daemon.layout import DataRoot

__all__ = ["REPO", "BenchDaemon", "free_port"]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchDaemon:
    """One daemon process. ``extra`` is TOML appended to ``[profiles.eval]``."""

    def __init__(self, base: Path, *, models_dir: Path | None, extra: str = "") -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.root = base / "root"
        self.port = free_port()
        self.config = base / "config.toml"
        self.config.write_text(
            "[profiles.eval]\n"
            f'data_root = "{self.root}"\n'
            f"http_port = {self.port}\n"
            'gpu_policy = "preferred"\n'
            + (f'models_dir = "{models_dir}"\n' if models_dir else "")
            + extra,
            encoding="utf-8",
        )
        self.log = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_seconds: float | None = None
        self.listening_seconds: float | None = None

    # -- paths -----------------------------------------------------------------

    @property
    def layout(self) -> DataRoot:
        """The data root's folders, as the daemon itself names them."""
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
    def staging(self) -> Path:
        """Where inputs are written before their final rename (same filesystem)."""
        return self.base / "staging"

    def effective(self) -> dict[str, Any]:
        """The settings in effect (validated by the daemon's own config loader)."""
        from daemon.config import load_settings

        _, profile = load_settings(config_path=self.config, profile="eval", environ={})
        return {
            "settle_seconds": profile.settle_seconds,
            "rescan_interval_seconds": profile.rescan_interval_seconds,
            "observer": profile.observer,
            "queue_size": profile.queue_size,
            "cpu_workers": profile.cpu.workers,
            "gpu_workers": profile.gpu.workers,
            "cpu_recycle_after_jobs": profile.cpu.recycle_after_jobs,
            "gpu_recycle_after_jobs": profile.gpu.recycle_after_jobs,
            "gpu_policy": profile.gpu_policy,
            "log_level": profile.log_level,
        }

    # -- life ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_")}
        env.update(
            SIR_CONVERT_A_LOT_CONFIG=str(self.config),
            SIR_CONVERT_A_LOT_PROFILE="eval",
            SIR_CONVERT_A_LOT_SERVICE_REVISION="bench",
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, *, wait: bool = True, timeout: float = 600.0) -> BenchDaemon:
        self.staging.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                env=self.env(),
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from start to the first 200 from /readyz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = self.get("/readyz")
            except OSError:
                status = 0
            if status and self.listening_seconds is None:
                # The listener opens once the start-up scan is done (Service.start).
                self.listening_seconds = time.monotonic() - self.started_at
            if status == 200:
                self.ready_seconds = time.monotonic() - self.started_at
                return self.ready_seconds
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 90.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    # -- observation -------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return procfs.children(self.pid) if self.alive() else []

    def restarts(self) -> dict[str, float]:
        """Worker replacements so far by reason (from /metrics)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("sir_convert_a_lot_worker_restarts_total{"):
                labels, value = line.rsplit(" ", 1)
                reason = labels.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0.0) + float(value)
        return out

    def answered(self, folder: str = "") -> int:
        """Sidecars published so far under outbox/<folder> and failed/<folder>."""
        total = 0
        for base, suffix in ((self.outbox, ".meta.json"), (self.failed, ".error.json")):
            where = base / folder if folder else base
            try:
                total += sum(1 for e in os.scandir(where) if e.name.endswith(suffix))
            except FileNotFoundError:
                continue
        return total
