"""``retry``: move failed inputs back into the inbox so they are converted again."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import ProfileSettings
from daemon.durable import durable_move, unique_name
from daemon.errors import ConfigError
from daemon.layout import DataRoot
from daemon.sidecar import ERROR_SUFFIX

__all__ = ["retry_failed"]


def retry_failed(profile: ProfileSettings, paths: list[Path]) -> list[tuple[Path, Path]]:
    root = DataRoot(profile.data_root)
    if paths:
        chosen = []
        for raw in paths:
            path = raw if raw.is_absolute() else root.failed / raw
            real = Path(os.path.realpath(path.parent)) / path.name
            if not real.is_relative_to(Path(os.path.realpath(root.failed))):
                raise ConfigError(f"{raw} is not inside {root.failed}")
            chosen.append(real)
    else:
        chosen = [
            p
            for p in root.failed.rglob("*")
            if not p.name.endswith(ERROR_SUFFIX) and (p.is_file() or p.is_symlink())
        ]
    moved: list[tuple[Path, Path]] = []
    for path in sorted(chosen):
        if not (path.exists() or path.is_symlink()):
            raise ConfigError(f"{path} does not exist")
        relative = path.relative_to(os.path.realpath(root.failed))
        target = unique_name(root.inbox / relative)
        durable_move(path, target)
        path.with_name(path.name + ERROR_SUFFIX).unlink(missing_ok=True)
        moved.append((path, target))
    return moved
