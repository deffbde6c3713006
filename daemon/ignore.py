"""Which inbox entries are never picked up, and why (the reason is a metric label)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from daemon.layout import normalize_extension

__all__ = ["IgnoreRules"]


@dataclass(frozen=True)
class IgnoreRules:
    patterns: tuple[str, ...]
    dirs: tuple[str, ...]
    asset_extensions: tuple[str, ...]

    def reason(self, relative: PurePosixPath) -> str | None:
        """``None`` to pick the file up, else a short reason (bounded set of values)."""
        return self.reason_for_parts(relative.parts)

    def reason_for_parts(self, parts: Sequence[str]) -> str | None:
        """``reason`` of the inbox-relative path made of ``parts`` (the rescan
        helper's form: no ``PurePosixPath`` per entry of a 100,000-file inbox)."""
        *folders, name = parts
        for folder in folders:
            if folder in self.dirs:
                return "ignored_folder"
            if folder.startswith("."):
                return "hidden_folder"
        if any(fnmatchcase(name, pattern) for pattern in self.patterns):
            return "pattern"
        if normalize_extension(name) in self.asset_extensions:
            return "asset"
        return None

    def skip_folder(self, name: str) -> bool:
        return name in self.dirs or name.startswith(".")
