"""Prometheus metrics, on a registry of our own (never the global one).

Labels are bounded: profile, route, lane, outcome, error code, reason, check.
File names never appear in labels: a route label is one the registry serves, or
``unknown`` (a file named ``x.zebra`` in ``inbox/to-md/`` would otherwise put its
extension into ``route="zebra->md"``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["UNKNOWN_ROUTE", "Metrics"]

NS = "sir_convert_a_lot"
UNKNOWN_ROUTE = "unknown"
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self, profile: str, routes: Iterable[str] | None = None) -> None:
        if routes is None:
            from converters.registry import default_registry

            routes = (str(route) for route in default_registry().routes())
        self.profile = profile
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            f"{NS}_jobs",
            "Jobs finished, by route, outcome and error code.",
            ["profile", "route", "outcome", "code"],
            registry=r,
        )
        self.convert_seconds = Histogram(
            f"{NS}_convert_duration_seconds",
            "Time spent converting, by route.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            f"{NS}_queue_wait_seconds",
            "Time from detection to the start of conversion.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pages = Counter(
            f"{NS}_pages_converted", "Pages converted, by route.", ["route"], registry=r
        )
        self.queue_depth = Gauge(
            f"{NS}_queue_depth", "Claimed jobs waiting for a worker, by lane.", ["lane"], registry=r
        )
        self.in_flight = Gauge(
            f"{NS}_in_flight", "Jobs being converted now, by lane.", ["lane"], registry=r
        )
        self.pending_files = Gauge(
            f"{NS}_pending_files", "Files seen in the inbox and not yet claimed.", registry=r
        )
        self.pending_held_open = Gauge(
            f"{NS}_pending_held_open",
            "Waiting files a process still held open for writing when they were due.",
            registry=r,
        )
        self.oldest_waiting = Gauge(
            f"{NS}_oldest_waiting_seconds",
            "Age of the oldest file waiting in the inbox or queue.",
            registry=r,
        )
        self.files_detected = Counter(
            f"{NS}_files_detected", "Files found in the inbox.", registry=r
        )
        self.files_ignored = Counter(
            f"{NS}_files_ignored", "Inbox entries ignored, by reason.", ["reason"], registry=r
        )
        self.files_refused = Counter(
            f"{NS}_files_refused",
            "Inbox entries refused (not a regular file, no route).",
            ["code"],
            registry=r,
        )
        self.worker_starts = Counter(
            f"{NS}_worker_starts", "Worker processes started, by lane.", ["lane"], registry=r
        )
        self.worker_restarts = Counter(
            f"{NS}_worker_restarts",
            "Worker processes replaced, by lane and reason "
            "(timeout, memory, crash, recycle, express_overrun, error).",
            ["lane", "reason"],
            registry=r,
        )
        self.slot_errors = Counter(
            f"{NS}_slot_errors",
            "Unexpected exceptions in a lane's slot, by lane and kind: job (contained, the "
            "job failed internal_error) or slot (the slot's task died and was restarted).",
            ["lane", "kind"],
            registry=r,
        )
        self.dead_slots = Gauge(
            f"{NS}_dead_slots",
            "Slots whose task died and is being restarted, by lane.",
            ["lane"],
            registry=r,
        )
        self.gpu_available = Gauge(
            f"{NS}_gpu_available",
            "1 if a usable GPU was found, by runtime kind.",
            ["runtime_kind"],
            registry=r,
        )
        self.ready = Gauge(f"{NS}_ready", "1 when /readyz passes.", registry=r)
        self.readiness_check = Gauge(
            f"{NS}_readiness_check", "1 when a readiness check passes.", ["check"], registry=r
        )
        self.last_success = Gauge(
            f"{NS}_last_success_timestamp_seconds",
            "Unix time of the last successful job.",
            registry=r,
        )
        self.internal_errors = Counter(
            f"{NS}_internal_errors",
            "Unexpected exceptions contained by the supervisor, by where (claim, job, supervisor).",
            ["where"],
            registry=r,
        )
        self.events_written = Counter(
            f"{NS}_events_written",
            "Events written to the journal, by kind.",
            ["kind"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            f"{NS}_webhook_deliveries",
            "Webhook POSTs, by outcome (delivered, failed: will be retried; "
            "skipped: rotated away before delivery).",
            ["outcome"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            f"{NS}_webhook_backlog_events",
            "Events written to the journal and not yet delivered by the webhook sender.",
            registry=r,
        )
        self.files_pruned = Counter(
            f"{NS}_files_pruned",
            "Files removed by the retention sweeper, by folder (archive, failed, outbox).",
            ["folder"],
            registry=r,
        )
        self.reused = Counter(
            f"{NS}_jobs_reused",
            "Jobs whose output was reused from an earlier identical job, not converted, by route.",
            ["route"],
            registry=r,
        )
        self.reuse_seconds_saved = Counter(
            f"{NS}_reuse_seconds_saved",
            "Conversion seconds saved by reuse (the earlier jobs' convert_seconds).",
            registry=r,
        )
        self.reuse_discarded = Counter(
            f"{NS}_reuse_discarded",
            "Reuse cache entries found corrupt or incomplete and discarded (the job converted).",
            registry=r,
        )
        self.reuse_cache_bytes = Gauge(
            f"{NS}_reuse_cache_bytes", "Bytes held by the reuse cache.", registry=r
        )
        self.reuse_cache_entries = Gauge(
            f"{NS}_reuse_cache_entries", "Results held by the reuse cache.", registry=r
        )
        self.build_info = Info(f"{NS}_build", "Version, revision and profile.", registry=r)
        # The shared job engine (daemon/engine): empty series when embedded.
        self.engine_queue_depth = Gauge(
            f"{NS}_engine_queue_depth",
            "Jobs in the engine waiting for a worker node, by lane (all profiles).",
            ["lane"],
            registry=r,
        )
        self.engine_enqueued = Counter(
            f"{NS}_engine_enqueued",
            "Jobs handed to the engine's lane queue (re-enqueues included), by lane.",
            ["lane"],
            registry=r,
        )
        self.engine_results = Counter(
            f"{NS}_engine_results",
            "Results a worker node handed in: accepted (the one) or discarded (late), by lane.",
            ["lane", "outcome"],
            registry=r,
        )

    def route_label(self, route: str) -> str:
        """``route`` if the registry serves it, else ``unknown``: never a file's own name."""
        return route if route in self.routes else UNKNOWN_ROUTE

    def job_finished(self, route: str, outcome: str, code: str) -> None:
        self.jobs.labels(self.profile, self.route_label(route), outcome, code).inc()
