"""The data-root layout, and how a path in the inbox maps to a route and outputs.

    <data_root>/
      inbox/            files are dropped here (to-md/, to-pdf/, to-docx/ pick a target)
      outbox/           results and their .meta.json sidecars, mirrored paths
      failed/           inputs that failed, each with <name>.error.json
      archive/          originals of successful jobs (unless on_success = "delete")
      events/           the events journal, JSON Lines segments (daemon/events.py)
      .state/jobs/<id>/ claimed work in progress (input, job record, staged output)
      .state/tmp/       staging for atomic writes into outbox/failed/archive

Everything lives on one filesystem so that every move is an atomic rename.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from converters.errors import UnsupportedRoute
from daemon.durable import fit_name
from daemon.errors import ConfigError
from daemon.sidecar import META_SUFFIX

__all__ = ["TARGET_FOLDERS", "DataRoot", "ResolvedRoute", "normalize_extension"]

TARGET_FOLDERS: dict[str, str] = {"to-md": "md", "to-pdf": "pdf", "to-docx": "docx"}
_EXTENSION_ALIASES = {"htm": "html", "markdown": "md"}


def normalize_extension(name: str) -> str:
    ext = PurePosixPath(name).suffix.lower().lstrip(".")
    return _EXTENSION_ALIASES.get(ext, ext)


@dataclass(frozen=True)
class ResolvedRoute:
    """What an inbox-relative path means: its route and its mirrored output path."""

    relative_path: PurePosixPath  # relative to inbox/
    source: str
    target: str

    @property
    def route(self) -> str:
        """``source->target``, as routes, metrics and events name it."""
        return f"{self.source}->{self.target}"

    @property
    def output_relative(self) -> PurePosixPath:
        """Relative to outbox/: same folders, the name with the target's extension.

        A very long name is shortened so that the output and its ``.meta.json``
        fit in one path component (255 bytes).
        """
        name = f"{self.relative_path.stem}.{self.target}"
        return self.relative_path.with_name(fit_name(name, room=len(META_SUFFIX)))


@dataclass(frozen=True)
class DataRoot:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def state(self) -> Path:
        return self.root / ".state"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs"

    @property
    def tmp(self) -> Path:
        return self.state / "tmp"

    def folders(self) -> list[Path]:
        return [
            self.inbox,
            *(self.inbox / name for name in TARGET_FOLDERS),
            self.outbox,
            self.failed,
            self.archive,
            self.events,
            self.state,
            self.jobs,
            self.tmp,
        ]

    def create(self) -> None:
        """Create the layout (idempotent) and check it sits on one filesystem.

        ``events/`` is 0750: readable by the group, written by the daemon only.
        ``.state`` is the daemon's alone (mode 0700, whatever the umask): the
        people who drop files share the service group and may write the inbox,
        but a job record they could plant or edit would steer the daemon's
        renames (docs/security.md).
        """
        for folder in self.folders():
            folder.mkdir(parents=True, exist_ok=True)
        for private in (self.state, self.jobs, self.tmp):
            if os.stat(private).st_mode & 0o777 != 0o700:
                os.chmod(private, 0o700)
        # The journal: the service's group may read it, only the daemon writes it
        # (a planted segment would be posted to webhooks as the daemon's word).
        if os.stat(self.events).st_mode & 0o777 != 0o750:
            os.chmod(self.events, 0o750)  # noqa: S103 (group read is the point)
        self.check_one_filesystem()

    def exists(self) -> bool:
        return all(folder.is_dir() for folder in self.folders())

    def check_one_filesystem(self) -> None:
        devices = {folder: os.stat(folder).st_dev for folder in self.folders()}
        if len(set(devices.values())) > 1:
            detail = ", ".join(f"{p} (dev {d})" for p, d in devices.items())
            raise ConfigError(
                "inbox, outbox, failed, archive and .state must be on one filesystem "
                f"so that moves are atomic renames: {detail}"
            )

    @property
    def profile_marker(self) -> Path:
        return self.state / "profile"

    def owner(self) -> str | None:
        """The profile this data root was created for, if recorded."""
        try:
            return self.profile_marker.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def adopt(self, profile: str) -> None:
        """Record ``profile`` as the owner of a data root that has none yet."""
        if self.owner() is None:
            self.profile_marker.write_text(profile + "\n", encoding="utf-8")

    def inbox_relative(self, path: Path) -> PurePosixPath:
        return PurePosixPath(path.relative_to(self.inbox).as_posix())

    def resolve(self, relative: PurePosixPath, default_targets: Mapping[str, str]) -> ResolvedRoute:
        """The route for an inbox-relative path; a missing default is UnsupportedRoute."""
        source = normalize_extension(relative.name)
        first = relative.parts[0] if len(relative.parts) > 1 else None
        if first in TARGET_FOLDERS:
            target = TARGET_FOLDERS[first]
        elif source in default_targets:
            target = default_targets[source]
        else:
            raise UnsupportedRoute(
                f"no default target for .{source or '(no extension)'} files at the inbox root; "
                "drop it into inbox/to-md/, inbox/to-pdf/ or inbox/to-docx/",
                source=source,
            )
        return ResolvedRoute(relative_path=relative, source=source, target=target)
