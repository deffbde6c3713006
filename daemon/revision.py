"""Which revision is running: from the environment, else the git HEAD of the install."""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from daemon.config import ProfileSettings
from daemon.sidecar import ServiceInfo

__all__ = ["code_dirs", "code_root", "git_revision", "service_info"]


def code_root() -> Path:
    return Path(__file__).resolve().parent.parent


def code_dirs() -> list[Path]:
    """Folders a data root must never overlap: the program and its environment."""
    return [code_root() / "daemon", code_root() / "converters", Path(sys.prefix)]


def git_revision(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def version() -> str:
    try:
        return metadata.version("sir-convert-a-lot")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def service_info(settings: ProfileSettings) -> ServiceInfo:
    revision = settings.service_revision or git_revision(code_root()) or "unknown"
    return ServiceInfo(revision=revision, host=socket.gethostname(), version=version())
