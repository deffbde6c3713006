"""Per-folder conversion options: ``.sir-convert-a-lot.toml`` files in the inbox.

The profile's ``options`` table is the default. A file named
``.sir-convert-a-lot.toml`` with an ``[options]`` table in any inbox folder
overrides it for that folder and its subfolders; deeper files win. Paths in it
are relative to the file's folder and must stay inside the inbox. A bad file
fails the affected jobs with ``options_invalid``; it never stops the daemon.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from converters.base import ConvertOptions
from converters.errors import OptionsInvalid

__all__ = ["OPTIONS_FILE", "resolve_options"]

OPTIONS_FILE = ".sir-convert-a-lot.toml"
_PATH_FIELDS = ("stylesheet", "reference_docx")


def _load(path: Path, inbox: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionsInvalid(f"{path.relative_to(inbox)} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"options"})
    if unknown:
        raise OptionsInvalid(f"{path.relative_to(inbox)}: unknown table(s) {', '.join(unknown)}")
    table = raw.get("options", {})
    if not isinstance(table, dict):
        raise OptionsInvalid(f"{path.relative_to(inbox)}: [options] must be a table")
    real_inbox = Path(os.path.realpath(inbox))
    for key in _PATH_FIELDS:
        if key in table:
            value = Path(str(table[key]))
            if value.is_absolute():
                raise OptionsInvalid(f"{path.relative_to(inbox)}: {key} must be a relative path")
            resolved = Path(os.path.realpath(path.parent / value))
            if not resolved.is_relative_to(real_inbox) or not resolved.is_file():
                raise OptionsInvalid(
                    f"{path.relative_to(inbox)}: {key} {value} is not a file inside the inbox"
                )
            table[key] = str(resolved)
    return table


def resolve_options(
    defaults: ConvertOptions, inbox: Path, relative: PurePosixPath
) -> ConvertOptions:
    """The options for a job dropped at ``inbox/relative``."""
    merged: dict[str, Any] = defaults.model_dump()
    folder = inbox
    for part in ("", *relative.parent.parts):
        folder = folder / part if part else folder
        candidate = folder / OPTIONS_FILE
        if candidate.is_file() and not candidate.is_symlink():
            merged.update(_load(candidate, inbox))
    try:
        return ConvertOptions.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise OptionsInvalid(f"options for {relative}: {problems}") from None
