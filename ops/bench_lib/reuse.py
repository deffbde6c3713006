"""Result reuse: N different PDFs against N copies of one PDF, in one daemon.

The other sections measure conversions, so their daemons run with ``reuse =
false`` (they drop copies of one template). This one runs with the product's
default, ``reuse = true``, and drops two batches of ``reuse_files`` PDFs to
Markdown (pdf->md, the tiny docling models): first N *different* files (the
template plus a distinct PDF comment line, which changes the sha256 and nothing
else), then N copies of one further variant. It reports both drain times, how
many of the copies were really converted (the sidecars' ``reused_from``), and
the daemon's own ``reuse_seconds_saved`` counter.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from daemon.sidecar import META_SUFFIX
from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.plan import Bench

__all__ = ["measure_reuse"]

KIND = "pdf_text_small"


def _variant(template: bytes, tag: str) -> bytes:
    """The same document with other bytes: a PDF comment line after the end."""
    return template + f"\n% bench variant {tag}\n".encode()


def _drain(bench: Bench, daemon: BenchDaemon, folder: str, files: dict[str, bytes]) -> float:
    """Rename ``files`` into ``inbox/<folder>`` at once; seconds until all are answered."""
    daemon.staging.mkdir(parents=True, exist_ok=True)
    (daemon.inbox / folder).mkdir(parents=True, exist_ok=True)
    staged = []
    for name, data in files.items():
        path = daemon.staging / name
        path.write_bytes(data)
        staged.append(path)
    t0 = time.monotonic()
    for path in staged:
        os.rename(path, daemon.inbox / folder / path.name)
    deadline = t0 + 600
    while daemon.answered(folder) < len(files):
        if time.monotonic() > deadline or not daemon.alive():
            raise RuntimeError(f"reuse: {folder} did not drain:\n{daemon.tail()}")
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    bench.log(f"reuse: {len(files)} files in {folder}/ answered in {seconds:.1f} s")
    return seconds


def _sidecars(daemon: BenchDaemon, folder: str) -> list[dict[str, Any]]:
    where = daemon.outbox / folder
    return [
        json.loads((where / name).read_text())
        for name in sorted(os.listdir(where))
        if name.endswith(META_SUFFIX)
    ]


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def measure_reuse(bench: Bench) -> dict[str, Any]:
    count = bench.plan.reuse_files
    template = bench.corpus.templates[KIND].read_bytes()
    daemon = BenchDaemon(bench.folder("reuse"), models_dir=bench.models_dir, reuse=True)
    bench.log(f"reuse: starting a daemon with reuse on for 2 x {count} PDFs")
    daemon.start()
    try:
        different = {f"d-{i:04d}.pdf": _variant(template, f"d{i}") for i in range(count)}
        different_seconds = _drain(bench, daemon, "to-md/different", different)
        same = _variant(template, "same")
        copies = {f"c-{i:04d}.pdf": same for i in range(count)}
        copies_seconds = _drain(bench, daemon, "to-md/copies", copies)
        metrics = daemon.metrics()
    finally:
        daemon.stop()
    converted_copies = [s for s in _sidecars(daemon, "to-md/copies") if s["reused_from"] is None]
    converted_different = [
        s for s in _sidecars(daemon, "to-md/different") if s["reused_from"] is None
    ]
    convert = [s["timings"]["convert_seconds"] for s in converted_different]
    return {
        "route": "pdf->md",
        "input_kind": KIND,
        "files": count,
        "different_drain_seconds": round(different_seconds, 2),
        "different_converted": len(converted_different),
        "copies_drain_seconds": round(copies_seconds, 2),
        "copies_converted": len(converted_copies),
        "copies_reused": count - len(converted_copies),
        "speedup": round(different_seconds / copies_seconds, 1) if copies_seconds else None,
        "median_convert_seconds": sorted(convert)[len(convert) // 2] if convert else None,
        "reuse_seconds_saved": round(
            _metric(metrics, "sir_convert_a_lot_reuse_seconds_saved_total"), 2
        ),
    }
