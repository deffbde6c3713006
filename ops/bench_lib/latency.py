"""Pick-up latency: from the moment a file is complete in the inbox to its claim
and to its sidecar, for files renamed in and for files written in place."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from ops.bench_lib.daemon_proc import BenchDaemon
from ops.bench_lib.drops import Observer
from ops.bench_lib.plan import Bench
from ops.bench_lib.stats import median, summary

__all__ = ["measure_latency"]

# html→md is the cheapest real route (a few ms in a warm worker), so the time to
# the sidecar is mostly the daemon's own: pick-up, claim, IPC, publish.
KIND, TARGET = "html_small", "md"


def _sidecar_queue_seconds(daemon: BenchDaemon, name: str) -> float | None:
    path = daemon.outbox / "to-md" / f"{name.rsplit('.', 1)[0]}.md.meta.json"
    try:
        timings = json.loads(path.read_text())["timings"]
    except (OSError, KeyError, ValueError):
        return None
    value = timings.get("queue_seconds")
    return float(value) if value is not None else None


def measure_latency(bench: Bench, daemon: BenchDaemon, observer: Observer) -> dict[str, Any]:
    plan = bench.plan
    rng = random.Random(4711)  # noqa: S311 (timing jitter, not secrets)
    template = bench.corpus.templates[KIND]
    data = template.read_bytes()
    failures = 0
    renamed: dict[str, dict[str, list[float]]] = {}
    # Isolated drops come well after the previous claim; back-to-back drops come
    # right after the previous answer, as in a busy inbox. (watchdog holds each
    # move out of a watched folder, i.e. each claim, before later events.)
    for series, gap in (("isolated", (0.7, 0.8)), ("back_to_back", (0.0, 0.1))):
        samples: dict[str, list[float]] = {"claim": [], "sidecar": [], "queue_seconds": []}
        renamed[series] = samples
        bench.log(f"latency: {plan.latency_renames} files renamed into the inbox ({series})")
        for i in range(plan.latency_renames):
            name = f"lat-{series}-{i:04d}.html"
            staged = daemon.staging / name
            staged.write_bytes(data)
            # A random phase against the daemon's 50 ms tick, as real drops have.
            time.sleep(rng.uniform(*gap))
            done = observer.rename_in([staged], TARGET)
            answer = observer.answer(name, TARGET, timeout=60)
            failures += not answer.ok
            if answer.claimed_at is not None:
                samples["claim"].append(answer.claimed_at - done)
            samples["sidecar"].append(answer.answered_at - done)
            queued = _sidecar_queue_seconds(daemon, name)
            if queued is not None:
                samples["queue_seconds"].append(queued)

    bench.log(f"latency: {plan.latency_in_place} files written in place (settle window applies)")
    in_place: dict[str, list[float]] = {"claim": [], "sidecar": []}
    completes: dict[str, float] = {}
    for i in range(plan.latency_in_place):
        name = f"lat-w-{i:04d}.html"
        completes[name] = observer.write_in_place(data, name, TARGET)
        time.sleep(rng.uniform(0.2, 0.4))
    for name, done in completes.items():
        answer = observer.answer(name, TARGET, timeout=60)
        failures += not answer.ok
        if answer.claimed_at is not None:
            in_place["claim"].append(answer.claimed_at - done)
        in_place["sidecar"].append(answer.answered_at - done)

    effective = daemon.effective()
    from daemon.service import TICK_SECONDS

    return {
        "route": "html->md",
        "input_kind": KIND,
        "settle_seconds": effective["settle_seconds"],
        "tick_seconds": TICK_SECONDS,
        "observer": effective["observer"],
        "failures": failures,
        **{
            f"renamed_{series}": {
                "to_claim": summary(samples["claim"]),
                "to_sidecar": summary(samples["sidecar"]),
                "sidecar_queue_seconds_median": round(median(samples["queue_seconds"]), 4),
            }
            for series, samples in renamed.items()
        },
        "in_place": {
            "to_claim": summary(in_place["claim"]),
            "to_sidecar": summary(in_place["sidecar"]),
        },
    }
