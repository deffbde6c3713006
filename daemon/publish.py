"""Publishing a finished job: its artifacts, then sidecar (the commit marker), then archive.

A job may produce a set of artifacts in its work folder: the main output
(``paper.md``) and companions named after it (``paper.images/``,
``paper.docling.json``, ``paper.chunks.jsonl``, see ``daemon.sidecar``). Staging
fixes the outbox names of the whole set at once (one collision suffix for all),
fsyncs every file, writes the sidecar listing each file with its sha256, and
records the planned moves in job.json. Publishing then renames each artifact
(a folder as one rename) and the sidecar last.

Each step is a rename out of the job folder, so every step is idempotent: after a
crash, recovery calls the same function and the steps already done are skipped
because their source is gone. Nothing half-written is ever visible in outbox/,
and a sidecar is never visible before every file it names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from converters.outputs import relink_figures
from converters.warning_codes import WarningCode
from daemon import faults
from daemon.durable import (
    atomic_write,
    durable_move,
    fsync_dir,
    fsync_file,
    lexists,
    tagged_name,
    unique_name,
)
from daemon.jobs import Job, JobStore, StagedArtifact, sha256_file
from daemon.layout import DataRoot
from daemon.names import lossless_b64, readable
from daemon.sidecar import (
    ARTIFACT_SUFFIXES,
    ERROR_SUFFIX,
    META_SUFFIX,
    ArtifactInfo,
    OutputInfo,
    Sidecar,
    artifact_kind,
)

__all__ = ["Publisher"]


def _rel(path: Path, base: Path) -> str:
    return PurePosixPath(path.relative_to(base).as_posix()).as_posix()


class Publisher:
    """Serialised by the caller: one publish at a time per data root."""

    def __init__(self, root: DataRoot, store: JobStore, *, delete_on_success: bool) -> None:
        self.root = root
        self.store = store
        self.delete_on_success = delete_on_success
        # Called once the sidecar is durable in outbox/ or failed/, before the job
        # folder goes: the job's final event (daemon/announce.py). Called again
        # by recovery when the folder survived a crash; the callee is idempotent.
        self.on_commit: Callable[[Job], None] | None = None

    # -- success ---------------------------------------------------------------

    def stage_success(
        self,
        job: Job,
        output: Path,
        wanted: PurePosixPath,
        sidecar: Sidecar,
        *,
        pages: list[int] | None = None,
        pdf_variant: str | None = None,
    ) -> None:
        """Fix the names of the whole set and stage the sidecar durably, before any move."""
        entries = _work_entries(job.work_dir, output)
        names = _free_set(self.root.outbox / wanted, [kind for kind, _ in entries])
        images = dict(entries).get("images")
        if images is not None and output.suffix == ".md":
            _relink(output, images.name, names["images"])
        for kind, entry in entries:
            if kind == "images":
                _fsync_tree(entry)
            else:
                fsync_file(entry)
        folder = _rel((self.root.outbox / wanted).parent, self.root.outbox)
        staged = [
            StagedArtifact(
                kind=kind, source=entry.name, target=PurePosixPath(folder, names[kind]).as_posix()
            )
            for kind, entry in entries
        ]
        relative = staged[0].target
        sidecar.output = OutputInfo(
            path=readable(relative),
            path_b64=lossless_b64(relative),
            sha256=sha256_file(output),
            size_bytes=output.stat().st_size,
            artifacts=[info for item in staged for info in _describe(job.work_dir, item)],
            pages=pages,
            pdf_variant=pdf_variant,
            pdf_variant_validated=False if pdf_variant else None,
        )
        if names["main"] != PurePosixPath(wanted).name:
            sidecar.warnings = sorted({*sidecar.warnings, WarningCode.OUTPUT_NAME_COLLISION})
        atomic_write(job.staged_sidecar, sidecar.to_json(), tmp_dir=job.folder)
        faults.delay("sidecar_write")
        job.record.output_relative = relative
        job.record.artifacts = staged
        job.record.reused_from = sidecar.reused_from.job_id if sidecar.reused_from else None
        job.record.phase = "publishing"
        job.save()

    def finish_success(self, job: Job) -> None:
        relative = job.record.output_relative
        assert relative is not None
        target = self.root.outbox / relative
        if job.record.artifacts:
            for number, item in enumerate(job.record.artifacts):
                source = job.work_dir / item.source
                if source.exists() or source.is_symlink():
                    durable_move(source, self.root.outbox / item.target)
                    faults.delay("publish_output" if number == 0 else "publish_artifact")
        else:  # a record of 0.1.x: one output, whatever its name in work/
            staged = self._staged_output(job)
            if staged is not None:
                durable_move(staged, target)
                faults.delay("publish_output")
        if job.staged_sidecar.exists():
            durable_move(job.staged_sidecar, target.with_name(target.name + META_SUFFIX))
            faults.delay("archive")
        self._committed(job)
        faults.delay("announced")
        self._retire_input(job)
        faults.delay("finish")
        self.store.finish(job)

    def _staged_output(self, job: Job) -> Path | None:
        if not job.work_dir.is_dir():
            return None
        files = [p for p in job.work_dir.iterdir() if p.is_file()]
        return files[0] if files else None

    def _retire_input(self, job: Job) -> None:
        source = job.input_path
        if not (source.exists() or source.is_symlink()):
            return
        if self.delete_on_success:
            source.unlink()
            return
        target = unique_name(self.root.archive / job.record.relative_path)
        durable_move(source, target)

    # -- failure ---------------------------------------------------------------

    def stage_failure(self, job: Job, sidecar: Sidecar) -> None:
        target = unique_name(self.root.failed / job.record.relative_path, room=len(ERROR_SUFFIX))
        job.record.failed_relative = _rel(target, self.root.failed)
        atomic_write(job.staged_sidecar, sidecar.to_json(), tmp_dir=job.folder)
        job.record.error_code = sidecar.error.code if sidecar.error else None
        job.record.phase = "failing"
        job.save()

    def finish_failure(self, job: Job) -> None:
        relative = job.record.failed_relative
        assert relative is not None
        target = self.root.failed / relative
        source = job.input_path
        if source.exists() or source.is_symlink():
            durable_move(source, target)
            faults.delay("fail_input")
        if job.staged_sidecar.exists():
            sidecar_path = target.with_name(target.name + ERROR_SUFFIX)
            if sidecar_path.exists():
                os.unlink(sidecar_path)  # a stale one from an earlier failure of this name
            durable_move(job.staged_sidecar, sidecar_path)
        self._committed(job)
        self.store.finish(job)

    def _committed(self, job: Job) -> None:
        if self.on_commit is not None:
            self.on_commit(job)


# -- the set of artifacts ------------------------------------------------------------

_ORDER = ("main", *ARTIFACT_SUFFIXES)


def _companion(main: str, kind: str) -> str:
    dot = main.rfind(".")
    return (main[:dot] if dot > 0 else main) + ARTIFACT_SUFFIXES[kind]


def _work_entries(work_dir: Path, output: Path) -> list[tuple[str, Path]]:
    """The artifacts in work/, main output first; entries that are not ours
    (a converter's leftovers, a symlink) are never published."""
    found: dict[str, Path] = {"main": output}
    for entry in work_dir.iterdir():
        kind = artifact_kind(entry.name, output.name)
        if kind is None or kind == "main" or entry.is_symlink():
            continue
        if (kind == "images") == entry.is_dir():
            found[kind] = entry
    return [(kind, found[kind]) for kind in _ORDER if kind in found]


def _free_set(wanted: Path, kinds: list[str]) -> dict[str, str]:
    """Names for the whole set, with one collision suffix for all: ``a.md`` +
    ``a.images`` if none of them (nor ``a.md.meta.json``) exists, else ``a~2.md``
    + ``a~2.images``… Names are shortened so that the longest fits NAME_MAX."""
    extra = [ARTIFACT_SUFFIXES[kind] for kind in kinds if kind != "main"]
    room = max([len(META_SUFFIX)] + [len(suffix) - len(wanted.suffix) for suffix in extra])
    n = 1
    while True:
        main = tagged_name(wanted.name, n, room=room)
        names = {"main": main, **{k: _companion(main, k) for k in kinds if k != "main"}}
        busy = [main + META_SUFFIX, *names.values()]
        if not any(lexists(wanted.with_name(name)) for name in busy):
            return names
        n += 1


def _fsync_tree(folder: Path) -> None:
    """Every file in a companion folder, then the folder itself."""
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fsync_file(entry)
    fsync_dir(folder)


def _relink(markdown: Path, old: str, new: str) -> None:
    """Point the Markdown at the pictures folder's published name (it links the work name)."""
    if old == new:
        return
    text = markdown.read_text(encoding="utf-8")
    atomic_write(
        markdown,
        relink_figures(text, old, new).encode("utf-8"),
        tmp_dir=markdown.parent.parent,
    )


def _describe(work_dir: Path, item: StagedArtifact) -> list[ArtifactInfo]:
    """The sidecar's entries for one staged artifact: each file of a folder."""
    source = work_dir / item.source
    files = (
        sorted(p for p in source.iterdir() if p.is_file() and not p.is_symlink())
        if source.is_dir()
        else [source]
    )
    out: list[ArtifactInfo] = []
    for file in files:
        relative = item.target if file == source else f"{item.target}/{file.name}"
        out.append(
            ArtifactInfo(
                kind=item.kind,  # type: ignore[arg-type]
                path=readable(relative),
                path_b64=lossless_b64(relative),
                sha256=sha256_file(file),
                size_bytes=file.stat().st_size,
            )
        )
    return out
