"""Readiness: can this process do its job right now? Every check, with its state.

Results are cached briefly and a check is only reported failing after two
consecutive failures (or if it never passed), so one slow probe never flaps
/readyz.

Model artifacts are checked here, in the main process, on every evaluation
(a few ``stat`` calls, nothing imported): a worker reports its problems once,
when it starts, so trusting that report would keep a daemon unready after the
models were provisioned. The PDF route looks its models up per job, so a
worker started before they arrived uses them as soon as they are there.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from converters.base import Lane
from converters.errors import ModelsMissing, SirError
from converters.models import check_models
from daemon.config import check_data_roots
from daemon.revision import code_dirs
from daemon.wire import Problem

if TYPE_CHECKING:
    from daemon.service import Service

__all__ = ["CHECKS", "INTAKE_BLOCKERS", "CheckResult", "Readiness"]

# check name -> the reason code it reports when failing
CHECKS: dict[str, str] = {
    "revision": "stale_revision",
    "profile": "profile_mismatch",
    "data_roots": "data_root_overlap",
    "data_root_writable": "data_root_unwritable",
    "disk": "disk_low",
    "watcher": "watcher_stale",
    "workers": "workers_not_warm",
    "converters": "converter_unavailable",
    "models": "models_missing",
    "gpu": "gpu_unavailable",
    "engine": "engine_unavailable",
}
# Failing checks that stop new claims (a claim would fail, or fill the disk).
INTAKE_BLOCKERS = ("data_root_unwritable", "disk_low", "profile_mismatch", "data_root_overlap")


@dataclass
class CheckResult:
    name: str
    ok: bool
    code: str
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "ok": self.ok,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }


class Readiness:
    def __init__(self, service: Service, cache_seconds: float = 1.0) -> None:
        self.service = service
        self.cache_seconds = cache_seconds
        self._cached_at = 0.0
        self._results: list[CheckResult] = []
        self._failures: dict[str, int] = {}
        self._ever_ok: set[str] = set()

    def evaluate(self, *, force: bool = False) -> tuple[bool, list[CheckResult]]:
        now = time.monotonic()
        if force or now - self._cached_at >= self.cache_seconds or not self._results:
            self._results = [self._debounced(name, fn) for name, fn in self._checks().items()]
            self._cached_at = now
            metrics = self.service.metrics
            for result in self._results:
                metrics.readiness_check.labels(result.name).set(1 if result.ok else 0)
            metrics.ready.set(1 if all(r.ok for r in self._results) else 0)
        return all(r.ok for r in self._results), self._results

    def _debounced(self, name: str, fn: Callable[[], CheckResult]) -> CheckResult:
        try:
            result = fn()
        except Exception as exc:  # a broken probe is a failing check, not a crash
            result = CheckResult(name, False, CHECKS[name], f"check raised {exc!r}")
        if result.ok:
            self._failures[name] = 0
            self._ever_ok.add(name)
            return result
        self._failures[name] = self._failures.get(name, 0) + 1
        if name in self._ever_ok and self._failures[name] < 2:
            return CheckResult(
                name,
                True,
                result.code,
                f"(1 failure, not yet down) {result.message}",
                result.details,
            )
        return result

    def _checks(self) -> dict[str, Callable[[], CheckResult]]:
        return {
            "revision": self._revision,
            "profile": self._profile,
            "data_roots": self._data_roots,
            "data_root_writable": self._writable,
            "disk": self._disk,
            "watcher": self._watcher,
            "workers": self._workers,
            "converters": self._converters,
            "models": self._models,
            "gpu": self._gpu,
            "engine": self._engine,
        }

    # -- the checks -------------------------------------------------------------------

    def _ok(self, name: str, **details: Any) -> CheckResult:
        return CheckResult(name, True, CHECKS[name], "", details)

    def _fail(self, name: str, message: str, **details: Any) -> CheckResult:
        return CheckResult(name, False, CHECKS[name], message, details)

    def _revision(self) -> CheckResult:
        info, settings = self.service.info, self.service.settings
        details = {"revision": info.revision, "expected": settings.expected_revision}
        if info.revision == "unknown":
            return self._fail("revision", "the running revision is unknown", **details)
        if settings.expected_revision and settings.expected_revision != info.revision:
            return self._fail(
                "revision", "running revision differs from the expected one", **details
            )
        return self._ok("revision", **details)

    def _profile(self) -> CheckResult:
        root, name = self.service.root, self.service.settings.name
        recorded = root.owner()
        if recorded is None:
            return self._fail("profile", f"data root has no profile marker ({root.profile_marker})")
        if recorded != name:
            return self._fail(
                "profile",
                f"data root belongs to profile {recorded!r}, not {name!r}",
                recorded=recorded,
                configured=name,
            )
        return self._ok("profile", profile=name)

    def _data_roots(self) -> CheckResult:
        try:
            check_data_roots(self.service.all_settings, code_dirs=code_dirs())
        except SirError as exc:
            return self._fail("data_roots", exc.message)
        return self._ok("data_roots")

    def _writable(self) -> CheckResult:
        probe = self.service.root.tmp / f"ready-{uuid.uuid4().hex}"
        try:
            try:
                probe.write_bytes(b"ok")
            finally:
                # A full disk creates the file and then fails the write: no litter.
                probe.unlink(missing_ok=True)
            for folder in self.service.root.folders():
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise PermissionError(f"{folder} is not writable")
        except OSError as exc:
            return self._fail("data_root_writable", str(exc), data_root=str(self.service.root.root))
        return self._ok("data_root_writable")

    def _disk(self) -> CheckResult:
        free_mb = shutil.disk_usage(self.service.root.root).free / 2**20
        floor = self.service.settings.min_free_disk_mb
        if free_mb < floor:
            return self._fail(
                "disk",
                f"{free_mb:.0f} MiB free, below {floor} MiB",
                free_mb=round(free_mb),
                min_free_mb=floor,
            )
        return self._ok("disk", free_mb=round(free_mb))

    def _watcher(self) -> CheckResult:
        svc = self.service
        if not svc.watcher.alive():
            return self._fail("watcher", "the inbox observer thread is not running")
        bound = 3 * svc.settings.rescan_interval_seconds + 10
        if svc.last_rescan is None or time.monotonic() - svc.last_rescan > bound:
            return self._fail("watcher", f"no rescan completed in the last {bound:.0f} s")
        return self._ok("watcher", observer=svc.settings.observer)

    def _workers(self) -> CheckResult:
        pools = self.service.pools
        dead = {lane.value: pool.dead_slots() for lane, pool in pools.items()}
        if any(dead.values()):
            errors = {
                f"{lane.value}/{s.index}": s.last_error
                for lane, pool in pools.items()
                for s in pool.slots
                if s.index in dead[lane.value]
            }
            return self._fail(
                "workers",
                "a worker slot stopped on an unexpected error and is being restarted",
                dead_slots=dead,
                errors=errors,
            )
        # An express slot restarts after each overrun and is not needed to serve.
        cold = {
            lane.value: [s.index for s in pool.slots if not s.warm and not s.express]
            for lane, pool in pools.items()
        }
        if any(cold.values()):
            return self._fail("workers", "workers are starting or warming up", cold_slots=cold)
        return self._ok("workers")

    def _problems(self) -> dict[str, list[Problem]]:
        found: dict[str, list[Problem]] = {}
        for pool in self.service.pools.values():
            info = pool.ready_info()
            for route, items in (info.problems if info else {}).items():
                if items:
                    found[route] = list(items)
        return found

    def _converters(self) -> CheckResult:
        broken = {
            r: [str(x) for x in p]
            for r, p in self._problems().items()
            if not any(x.code == ModelsMissing.code for x in p)
        }
        if broken:
            return self._fail("converters", "some routes cannot run", routes=broken)
        return self._ok("converters")

    def _models(self) -> CheckResult:
        models_dir = self.service.settings.models_dir
        report = check_models(models_dir)
        # Routes of engine lanes are checked by the worker nodes that serve them.
        remote = self.service.settings.engine_lanes
        served = {str(c.route) for c in self.service.registry if c.lane not in remote}
        missing: dict[str, list[str]] = {
            route: [
                f"models_missing: {a.folder} lacks {', '.join(a.missing_files)}"
                for a in report.artifacts
                if a.required and not a.present
            ]
            for route, ready in report.routes.items()
            if route in served and not ready
        }
        # Routes the catalogue does not cover: trust what their workers reported.
        for route, items in self._problems().items():
            if route not in report.routes and any(x.code == ModelsMissing.code for x in items):
                missing[route] = [str(x) for x in items]
        if missing:
            where = f"in {models_dir}" if models_dir is not None else "(models_dir is not set)"
            return self._fail(
                "models",
                f"model artifacts are missing {where} for {', '.join(sorted(missing))}; "
                "run `sir-convert-a-lot models fetch` or copy a fetched folder there",
                routes=missing,
                models_dir=str(models_dir) if models_dir is not None else None,
            )
        return self._ok("models", models_dir=str(models_dir) if models_dir is not None else None)

    def _engine(self) -> CheckResult:
        engine = self.service.engine
        if engine is None:
            return self._ok("engine", mode="embedded")
        if not engine.available:
            return self._fail(
                "engine",
                "the job engine (PostgreSQL) cannot be reached; claimed jobs wait for it",
                error=engine.last_error,
                outstanding=len(engine.waiters),
            )
        return self._ok("engine", queue_depth=dict(engine.depth))

    def _gpu(self) -> CheckResult:
        settings = self.service.settings
        if Lane.GPU in settings.engine_lanes:
            return self._ok("gpu", policy=settings.gpu_policy, served_by="engine worker nodes")
        info = self.service.pools[Lane.GPU].ready_info()
        probe = (info.probe if info else None) or {}
        details = {"policy": settings.gpu_policy, "device": info.device if info else None, **probe}
        available = bool(probe.get("available"))
        self.service.metrics.gpu_available.labels(str(probe.get("runtime_kind", "none"))).set(
            1 if available else 0
        )
        if settings.gpu_policy == "required" and info and not available:
            return self._fail("gpu", "policy is 'required' and no usable GPU was found", **details)
        if settings.gpu_policy == "required" and not info:
            return self._fail("gpu", "the GPU worker has not reported yet", **details)
        return self._ok("gpu", **details)
