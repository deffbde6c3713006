"""Opt-in fault injection, for crash and resource tests only. Off unless configured.

``SIR_CONVERT_A_LOT_FAULTS`` holds a JSON object; when the variable is unset or
empty nothing here does anything beyond one dictionary lookup. Keys:

* ``"delay"``: ``{"<point>": seconds, ...}`` sleeps that long at a named point,
  widening the window in which a test's SIGKILL lands. Points, in the order a
  successful job passes them: ``claim`` (record written, input not yet moved),
  ``sidecar_write`` (sidecar staged, phase not yet ``publishing``),
  ``publish_output`` (output in outbox/, sidecar not yet), ``publish_artifact``
  (after each further artifact of a set: images folder, JSON, chunks), ``archive`` (sidecar
  published, its final event not yet written), ``announced`` (event written,
  input not yet archived), ``finish`` (input archived, job folder not
  yet removed); and for a failed job ``fail_input`` (input in failed/, error
  sidecar not yet). ``dispatch`` waits (without blocking the event loop)
  between the claim and handing the job to a worker, widening the window in
  which a dropper's swap of files or folders lands. ``engine_job`` waits on an
  engine worker node between taking a job and converting it (kill windows).
* ``"engine_hold"``: seconds; an engine worker node answers every job by
  holding its lane that long without using the CPU and returning the input's
  bytes as the output (the bench's stand-in for GPU time, ``ops/bench
  --only scaleout``); its lane workers are not started.
* ``"enospc_flag"``: a path; while a file exists there, every durable write of
  the daemon (``atomic_write``) fails with ``ENOSPC`` as on a full disk. Used
  where a test cannot mount a small tmpfs.

This is a testing knob. Production units never set the variable.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = [
    "FAULTS_ENV",
    "POINTS",
    "check_write",
    "delay",
    "delay_seconds",
    "engine_hold_seconds",
    "engine_job_delay",
]

FAULTS_ENV = "SIR_CONVERT_A_LOT_FAULTS"
POINTS = frozenset(
    {
        "claim",
        "dispatch",
        "sidecar_write",
        "publish_output",
        "publish_artifact",
        "archive",
        "announced",
        "finish",
        "fail_input",
        "engine_job",
    }
)


@functools.cache
def _config() -> dict[str, Any]:
    raw = os.environ.get(FAULTS_ENV, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{FAULTS_ENV} must be a JSON object")
    unknown = set(value.get("delay", {})) - POINTS
    if unknown:
        raise ValueError(f"{FAULTS_ENV}: unknown fault point(s) {sorted(unknown)}")
    return value


def delay_seconds(point: str) -> float:
    """The delay configured for ``point`` (0 when none)."""
    config = _config()
    return float(config.get("delay", {}).get(point, 0.0)) if config else 0.0


def delay(point: str) -> None:
    """Sleep at ``point`` if a delay is configured for it (blocking: threads only)."""
    seconds = delay_seconds(point)
    if seconds > 0:
        time.sleep(seconds)


def engine_job_delay(output_name: str) -> float:
    """The ``engine_job`` delay for a job with this output name (0 when none)."""
    config = _config()
    only = config.get("engine_job_only") if config else None
    if only is not None and str(only) not in output_name:
        return 0.0
    return delay_seconds("engine_job")


def engine_hold_seconds() -> float:
    """The bench's stand-in conversion time on a worker node (0: convert for real)."""
    config = _config()
    return float(config.get("engine_hold", 0.0)) if config else 0.0


def check_write(target: Path) -> None:
    """Raise ENOSPC for a write to ``target`` while the configured flag file exists."""
    config = _config()
    if config:
        flag = config.get("enospc_flag")
        if flag and Path(flag).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
