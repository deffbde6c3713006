"""``sir-convert-a-lot convert``: the daemon's own pipeline, once, without a watcher.

Each file is copied into a private data root next to the output folder, claimed,
converted by the same warm workers, and published with the same sidecars; the
results are then moved to ``--output-dir``. Originals are never modified.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from converters.errors import SirError, UnsupportedRoute
from daemon.config import ProfileSettings, Settings
from daemon.durable import unique_name
from daemon.errors import error_for_code
from daemon.layout import normalize_extension
from daemon.sidecar import ERROR_SUFFIX, META_SUFFIX

__all__ = ["convert_files"]


async def _convert(
    files: list[Path], target: str, output_dir: Path, profile: ProfileSettings
) -> int:
    from daemon.service import Service

    output_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".sir-convert-a-lot-", dir=output_dir))
    # Files are converted one after another: one warm worker per lane is enough.
    settings = profile.model_copy(
        update={
            "data_root": scratch,
            # A scratch root lives for one command: a reuse cache there is only copying.
            "reuse": False,
            # One file at a time: one warm worker, no express slot beside it.
            "cpu": profile.cpu.model_copy(update={"workers": 1, "express_workers": 0}),
            "gpu": profile.gpu.model_copy(update={"workers": 1}),
        }
    )
    service = Service(Settings(profiles={settings.name: settings}), settings)
    root = service.root
    worst = 0
    try:
        await service.start_lanes(
            {service.lane_for(root.inbox / f"to-{target}" / f.name) for f in files}
        )
        for index, source in enumerate(files, 1):
            dropped = root.inbox / f"to-{target}" / source.name
            shutil.copyfile(source, dropped)
            await service.convert_now(dropped, document_folder=source.parent)
            code, line = _collect(root.root, output_dir, source)
            print(f"[{index}/{len(files)}] {source} -> {line}", file=sys.stderr, flush=True)
            if code and not worst:
                worst = error_for_code(code, "").exit_code
    finally:
        await service.shutdown(drain_seconds=0)
        shutil.rmtree(scratch, ignore_errors=True)
    return worst


def _collect(scratch: Path, output_dir: Path, source: Path) -> tuple[str | None, str]:
    """Move the job's published files out of the scratch root; report the outcome."""
    outbox, failed = scratch / "outbox", scratch / "failed"
    for sidecar in outbox.rglob(f"*{META_SUFFIX}"):
        produced = sidecar.with_name(sidecar.name.removesuffix(META_SUFFIX))
        final = unique_name(output_dir / produced.name)
        os.replace(produced, final)
        os.replace(sidecar, final.with_name(final.name + META_SUFFIX))
        return None, f"{final}"
    for error in failed.rglob(f"*{ERROR_SUFFIX}"):
        data = json.loads(error.read_bytes())
        final = output_dir / f"{source.name}{ERROR_SUFFIX}"
        os.replace(error, final)
        shutil.rmtree(failed)
        failed.mkdir()
        return data["error"]["code"], f"FAILED {data['error']['code']}: {data['error']['message']}"
    return "internal_error", "FAILED: no result was published"


def convert_files(
    files: list[Path], target: str, output_dir: Path, profile: ProfileSettings
) -> int:
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SirError(f"not a file: {', '.join(map(str, missing))}")
    for f in files:
        if not normalize_extension(f.name):
            raise UnsupportedRoute(f"{f} has no extension to tell its format")
    # The scratch data root lives in output_dir; workers and pandoc (run with the
    # drop folder as cwd) need its paths absolute.
    return asyncio.run(_convert(files, target, output_dir.absolute(), profile))
