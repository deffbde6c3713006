"""The real daemon (``python -m daemon run``) on a temporary data root, for measuring.

Profile ``eval`` with the product's defaults except what a benchmark sets on
purpose (models folder, port, and the knobs named in ``extra``); the effective
values are read back from the config so the report states what was in effect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from daemon.sidecar import ERROR_SUFFIX, META_SUFFIX
from ops.bench_lib import procfs
from ops.daemon_harness import REPO, DaemonProcess, daemon_env, free_port

__all__ = ["REPO", "BenchDaemon", "free_port"]


class BenchDaemon(DaemonProcess):
    """One daemon process. ``extra`` is TOML appended to ``[profiles.eval]``.

    Result reuse is off unless ``reuse``: the sections drop copies of one template
    and measure conversions, which reuse would skip (ops/bench_lib/reuse.py)."""

    def __init__(
        self, base: Path, *, models_dir: Path | None, extra: str = "", reuse: bool = False
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        root = base / "root"
        self.config = base / "config.toml"
        port = free_port()
        self.config.write_text(
            "[profiles.eval]\n"
            f'data_root = "{root}"\n'
            f"http_port = {port}\n"
            'gpu_policy = "preferred"\n'
            + (f'models_dir = "{models_dir}"\n' if models_dir else "")
            + ("" if reuse else "reuse = false\n")
            + extra,
            encoding="utf-8",
        )
        env = {
            "SIR_CONVERT_A_LOT_CONFIG": str(self.config),
            "SIR_CONVERT_A_LOT_PROFILE": "eval",
            "SIR_CONVERT_A_LOT_SERVICE_REVISION": "bench",
        }
        super().__init__(base, port, daemon_env(env))
        self.root: Path = root
        self.ready_seconds: float | None = None
        self.listening_seconds: float | None = None

    # -- paths -----------------------------------------------------------------

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

    def start(self, *, wait: bool = True, timeout: float = 600.0) -> BenchDaemon:
        """Start; with ``wait``, measure the seconds to the listener and to ready."""
        self.staging.mkdir(parents=True, exist_ok=True)
        super().start()
        if wait:
            self.wait_measured(timeout)
        return self

    def wait_measured(self, timeout: float = 600.0) -> float:
        """Seconds from start to the first 200 from /readyz."""

        def listening(status: int, body: dict[str, Any]) -> bool:
            if self.listening_seconds is None:
                # The listener opens once the start-up scan is done (Service.start).
                self.listening_seconds = time.monotonic() - self.started_at
            return False

        self.wait_ready(timeout, on_answer=listening)
        if self.listening_seconds is None:
            self.listening_seconds = time.monotonic() - self.started_at
        self.ready_seconds = time.monotonic() - self.started_at
        return self.ready_seconds

    # -- observation -------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return procfs.children(self.pid) if self.alive() else []

    def restarts(self) -> dict[str, float]:
        """Worker replacements so far by reason (from /metrics)."""
        text = self.metrics()
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
        for base, suffix in ((self.outbox, META_SUFFIX), (self.failed, ERROR_SUFFIX)):
            where = base / folder if folder else base
            try:
                total += sum(1 for e in os.scandir(where) if e.name.endswith(suffix))
            except FileNotFoundError:
                continue
        return total
