"""Result reuse: an input converted before, the same way, gets the earlier output.

rsync re-sends, people drop the same PDF twice, and a pdf->md costs seconds of
GPU. A job whose **key** equals a finished job's is not converted: that job's
work folder is copied, verified, from the cache (daemon/reuse_cache.py) into
this job's work folder and published through the normal path, so publishing and
crash recovery are unchanged. Its sidecar says ``reused_from`` and
``convert_seconds: 0``.

The key is a sha256 over everything the output depends on:

* the input's sha256 (inputs over the hashing cap have none: never reused);
* the route, the converter's name and the versions the lane's workers report
  (``Ready.versions``: the libraries and tools that ran), and the device;
* the model files the route reads (pdf->md: each file's path, size and mtime
  under ``models_dir``), so provisioning other models converts again;
* the effective options, with the *content* of a stylesheet or reference docx
  they name (the job's private copies), and the profile's limits;
* the daemon's own version and revision (its converters' code and print.css);
* for md->pdf, the input's name (the PDF title falls back to it).

Two more conditions are checked against the entry itself: every file the
conversion read beside the document (an image, a stylesheet; ``DropFolder``
records them) must still read the same, and an entry of several files (a main
output and artifacts named after the input) serves only an input of the same
name. Identical jobs in flight at once convert once: the first converts, the
others wait for it and then reuse its result.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from converters.base import Converter, ConvertOptions
from converters.dropfolder import DropFolder
from converters.models import required_artifacts
from converters.warning_codes import WarningCode
from daemon.config import ProfileSettings
from daemon.jobs import Job, JobStore
from daemon.layout import DataRoot, ResolvedRoute
from daemon.metrics import Metrics
from daemon.reuse_cache import Entry, ReuseCache
from daemon.sidecar import ConverterInfo, ReusedFrom, ServiceInfo
from daemon.wire import JobReply
from daemon.workers import LanePool

__all__ = ["KEY_FORMAT", "NAME_BOUND_ROUTES", "Reuse", "ReuseHit", "reuse_key"]

log = structlog.get_logger("sir_convert_a_lot.reuse")

# Bumped when what goes into a key changes: older entries are then never found.
KEY_FORMAT = 1
# Routes whose output contains the input's name (md->pdf: the PDF title).
NAME_BOUND_ROUTES = frozenset({"md->pdf"})
_FILE_OPTIONS = ("stylesheet", "reference_docx")
# A result with one of these may come out better next time (docling stops a
# document at its time-out under load): it is never kept.
_NOT_KEPT = frozenset({WarningCode.PARTIAL_CONVERSION})


class NotReusable(Exception):
    """This job's result cannot be keyed (an options file that cannot be read)."""


@dataclass(frozen=True)
class ReuseHit:
    """A job served from the cache: what its sidecar and the ``job_reused`` event need."""

    job_id: str
    key: str
    route: str
    reused_from: ReusedFrom
    saved_seconds: float | None  # the earlier job's convert_seconds

    def event_fields(self) -> dict[str, Any]:
        """The fields of the ``job_reused`` log line. The journal's ``job_reused``
        event is written at publishing, from the sidecar (daemon/announce.py)."""
        return {
            "job_id": self.job_id,
            "route": self.route,
            "reused_from": self.reused_from.model_dump(mode="json"),
            "saved_seconds": self.saved_seconds,
        }


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reuse_key(
    base: Mapping[str, Any], converter: str, versions: Mapping[str, str], device: str | None
) -> str:
    """The key: a sha256 of the canonical JSON of the job's facts (``_base_facts``)
    and what runs it (converter name, library versions, device)."""
    facts = {**base, "converter": converter, "versions": dict(versions), "device": device}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _sha256_bytes(canonical.encode("ascii"))


def _file_digest(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise NotReusable(f"{path.name} cannot be read: {exc.strerror}") from None


def options_facts(options: ConvertOptions) -> dict[str, Any]:
    """The effective options as key material: files by their content, not their path
    (each job has its own copies, in its own folder)."""
    facts: dict[str, Any] = options.model_dump(mode="json")
    for name in _FILE_OPTIONS:
        path = getattr(options, name)
        if path is not None:
            facts[name] = _file_digest(Path(path))
    return facts


def models_facts(models_dir: Path | None, route: str) -> list[list[object]]:
    """The model files ``route`` reads, as key material: path, size and mtime of each."""
    folders = required_artifacts().get(route, [])
    if models_dir is None or not folders:
        return []
    found: list[list[object]] = []
    for folder in folders:
        for dirpath, dirs, names in os.walk(models_dir / folder):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append([path.relative_to(models_dir).as_posix(), st.st_size, st.st_mtime_ns])
    return found


class Reuse:
    """The lifecycle's side of reuse: ``lookup`` before converting, ``keep`` after a
    conversion succeeded, ``release`` when the job is done either way."""

    def __init__(
        self,
        settings: ProfileSettings,
        root: DataRoot,
        store: JobStore,
        metrics: Metrics,
        service: ServiceInfo,
    ) -> None:
        self.enabled = settings.reuse
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.service = service
        self.cache = ReuseCache(
            root.state / "reuse", settings.reuse_max_bytes, on_discard=metrics.reuse_discarded.inc
        )
        self._opened = False
        self._base: dict[str, dict[str, Any]] = {}  # job id -> key facts
        self._hits: dict[str, ReuseHit] = {}
        self._leading: dict[str, str] = {}  # job id -> the key it converts for
        self._converting: dict[str, asyncio.Event] = {}  # key -> set when its job ends

    def open(self) -> None:
        """Index the cache (blocking). Called at start; ``lookup`` calls it if needed.
        A cache that cannot be opened turns reuse off for this run, nothing more."""
        if self.enabled and not self._opened:
            try:
                self.cache.open()
            except OSError as exc:
                log.error("reuse_cache_unusable", error=str(exc))
                self.enabled = False
                return
            self._opened = True
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.reuse_cache_bytes.set(self.cache.total_bytes)
        self.metrics.reuse_cache_entries.set(len(self.cache))

    # -- before converting -----------------------------------------------------------

    def _base_facts(
        self, job: Job, resolved: ResolvedRoute, options: ConvertOptions
    ) -> dict[str, Any]:
        route = resolved.route
        stem = os.fsencode(PurePosixPath(job.record.relative.name).stem)
        return {
            "format": KEY_FORMAT,
            "input_sha256": job.record.input_sha256,
            "route": route,
            "options": options_facts(options),
            "limits": self.settings.limits.model_dump(mode="json"),
            "models": models_facts(self.settings.models_dir, route),
            "service": {"version": self.service.version, "revision": self.service.revision},
            "stem_sha256": _sha256_bytes(stem) if route in NAME_BOUND_ROUTES else None,
            # Not key material for other routes; kept for the entry's own name check.
            "_stem": _sha256_bytes(stem),
        }

    async def lookup(
        self,
        job: Job,
        resolved: ResolvedRoute,
        converter: Converter,
        options: ConvertOptions,
        pool: LanePool,
    ) -> JobReply | None:
        """The reply of an earlier identical job, its files already in ``job.work_dir``;
        None: convert (and ``keep`` the result)."""
        self.release(job)  # a job resumed after a pause starts over
        if not self.enabled or job.record.input_sha256 is None:
            return None
        if not self._opened:
            await asyncio.to_thread(self.open)
            if not self.enabled:
                return None
        try:
            self._base[job.id] = await asyncio.to_thread(self._base_facts, job, resolved, options)
        except NotReusable as exc:
            log.info("reuse_not_possible", job_id=job.id, reason=str(exc))
            return None
        ready = pool.ready_info()
        versions = ready.versions.get(str(converter.route)) if ready else None
        if ready is None or versions is None:
            return None  # no worker has said yet what it runs
        key = reuse_key(self._key_base(job.id), converter.name, versions, ready.device)
        with pool.holding():
            while (event := self._converting.get(key)) is not None:
                await event.wait()  # an identical job is converting: use its result
        # Lead from here (no await before this line): later identical jobs wait for us.
        self._converting[key] = asyncio.Event()
        self._leading[job.id] = key
        try:
            entry = await asyncio.to_thread(self._take, job, key, resolved)
        except OSError as exc:  # the cache never fails a job: convert it
            log.warning("reuse_lookup_failed", job_id=job.id, error=str(exc))
            return None
        if entry is None:
            return None
        self._end_lead(job.id)
        hit = ReuseHit(
            job_id=job.id,
            key=key,
            route=entry.route,
            reused_from=ReusedFrom(job_id=entry.job_id, finished_at=entry.finished_at),
            saved_seconds=entry.convert_seconds,
        )
        self._hits[job.id] = hit
        self.metrics.reused.labels(self.metrics.route_label(entry.route)).inc()
        self.metrics.reuse_seconds_saved.inc(entry.convert_seconds or 0.0)
        self._gauges()
        log.info("job_reused", **hit.event_fields())
        return JobReply(
            ok=True,
            warnings=list(entry.warnings),
            pages=entry.pages,
            pages_converted=entry.pages_converted,
            pdf_variant=entry.pdf_variant,
            device="cuda" if entry.device == "cuda" else "cpu",
            converter=entry.converter.name,
            versions=dict(entry.converter.versions),
            convert_seconds=0.0,
        )

    def _key_base(self, job_id: str) -> dict[str, Any]:
        return {k: v for k, v in self._base[job_id].items() if not k.startswith("_")}

    def _take(self, job: Job, key: str, resolved: ResolvedRoute) -> Entry | None:
        """Blocking: check the entry against this job, copy its files in, verified."""
        entry = self.cache.peek(key)
        if entry is None:
            return None
        if entry.name_bound and entry.stem_sha256 != self._base[job.id]["_stem"]:
            return None
        if not self._same_resources(job, entry.resources):
            return None
        if job.work_dir.exists():
            shutil.rmtree(job.work_dir)
        job.work_dir.mkdir()
        taken = self.cache.take(key, job.work_dir, resolved.output_relative.name)
        if taken is None:
            return None
        if job.record.input_size is not None and self.store.input_changed(job):
            # Still being written after it settled: convert, which waits for it.
            shutil.rmtree(job.work_dir)
            return None
        return taken.entry

    def _same_resources(self, job: Job, resources: Mapping[str, str]) -> bool:
        """Every file the earlier conversion read beside its document reads the same now."""
        if not resources:
            return True
        if job.drop_fd is None:
            return False
        with DropFolder(os.dup(job.drop_fd)) as folder:
            for encoded, outcome in resources.items():
                try:
                    path = os.fsdecode(base64.b64decode(encoded, validate=True))
                except ValueError:
                    return False  # an entry this daemon could not have written: convert
                now = folder.outcome(path, max_bytes=self.settings.limits.max_input_bytes)
                if now != outcome:
                    return False
        return True

    def hit(self, job: Job) -> ReuseHit | None:
        """The reuse that served ``job``, if one did (for its sidecar and events)."""
        return self._hits.get(job.id)

    # -- after converting ------------------------------------------------------------

    async def keep(self, job: Job, reply: JobReply, finished_at: datetime, output: Path) -> None:
        """Keep a successful conversion's work folder for later identical jobs. A
        failure to keep it is logged, never the job's failure."""
        base = self._base.get(job.id)
        if not self.enabled or base is None or reply.resources is None or job.id in self._hits:
            return
        if _NOT_KEPT.intersection(reply.warnings):
            return
        entry = Entry(
            key=reuse_key(
                self._key_base(job.id), str(reply.converter), reply.versions, reply.device
            ),
            job_id=job.id,
            finished_at=finished_at,
            route=base["route"],
            stem_sha256=base["_stem"],
            name_bound=base["route"] in NAME_BOUND_ROUTES,
            output=output.name,
            resources=dict(reply.resources),
            converter=ConverterInfo(name=str(reply.converter), versions=dict(reply.versions)),
            device=reply.device,
            warnings=list(reply.warnings),
            pages=reply.pages,
            pages_converted=reply.pages_converted,
            pdf_variant=reply.pdf_variant,
            convert_seconds=reply.convert_seconds,
        )
        try:
            await asyncio.to_thread(self.cache.store, entry, job.work_dir, output)
        except OSError as exc:
            log.warning("reuse_store_failed", job_id=job.id, error=str(exc))
        self._gauges()

    def release(self, job: Job) -> None:
        """The job is done (published, failed or paused): identical jobs may go on."""
        self._base.pop(job.id, None)
        self._hits.pop(job.id, None)
        self._end_lead(job.id)

    def _end_lead(self, job_id: str) -> None:
        key = self._leading.pop(job_id, None)
        if key is not None:
            event = self._converting.pop(key, None)
            if event is not None:
                event.set()
