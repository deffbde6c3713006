"""Per-folder conversion options: ``.sir-convert-a-lot.toml`` files in the inbox.

The profile's ``options`` table is the default. A file named
``.sir-convert-a-lot.toml`` with an ``[options]`` table in any inbox folder
overrides it for that folder and its subfolders; deeper files win. Paths in it
are relative to the file's folder and must stay inside the inbox.

Droppers write these files, so they are read like any other hostile input:

* found through the descriptors of the claim's walk (``JobStore.open_levels``),
  never by a path lookup, and opened once with ``O_NOFOLLOW | O_NONBLOCK``: a
  symlink, a FIFO or a folder in its place is ``options_invalid``;
* judged by ``fstat`` before a byte is read: a regular file of at most
  ``MAX_OPTIONS_BYTES`` (a sparse 2 GiB file costs nothing);
* parsed in the claim's thread, never in the event loop; any parse failure,
  nesting that exhausts the parser, or a value that is not a clean path is
  ``options_invalid`` for the jobs below it, never an exception that escapes;
* the files it names (stylesheet, reference docx) are read once, beneath the
  inbox descriptor without following links, and copied into the job's own
  folder: the worker reads the copy, so swapping the original later changes
  nothing.

``notify_url`` is not a conversion option: it names a webhook that receives the
final event of each job below the file, besides the profile's ``[notify] url``.
It must be one the profile's ``[notify] allowed_urls`` allows, else the jobs
below fail with ``options_invalid``; it is returned beside the options (it never
reaches a worker, nor the reuse key).
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from pydantic import ValidationError

from converters.base import ConvertOptions, Limits
from converters.beneath import Beneath, Missing, OutsideFolder, read_regular
from converters.errors import OptionsInvalid
from daemon.automation_settings import NotifySettings

__all__ = ["MAX_OPTIONS_BYTES", "OPTIONS_FILE", "FolderOptions", "resolve_options"]

OPTIONS_FILE = ".sir-convert-a-lot.toml"
MAX_OPTIONS_BYTES = 64 * 1024
_PATH_FIELDS = {"stylesheet": ".css", "reference_docx": ".docx"}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOTIFY_KEY = "notify_url"


class FolderOptions(NamedTuple):
    """What a job's folder decides: its conversion options and its webhook."""

    options: ConvertOptions
    notify_url: str | None


def _notify_url(value: object, notify: NotifySettings, where: str) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise OptionsInvalid(f"{where}: notify_url must be a URL")
    if not notify.allows(value):
        shown = value if len(value) <= 160 else value[:157] + "..."
        raise OptionsInvalid(
            f"{where}: notify_url {shown} is not allowed by the profile's [notify] allowed_urls"
        )
    return value


def _shown(folder: PurePosixPath) -> str:
    where = str(folder / OPTIONS_FILE)
    return where if len(where) <= 160 else "..." + where[-157:]


def _read_file(folder_fd: int, where: str) -> bytes | None:
    """The options file's bytes in this folder, None when there is none."""
    try:
        fd = os.open(OPTIONS_FILE, _OPEN_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OptionsInvalid(
            f"{where} cannot be opened ({exc.strerror}); it must be a file"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OptionsInvalid(f"{where} is not a regular file")
        if info.st_size > MAX_OPTIONS_BYTES:
            raise OptionsInvalid(
                f"{where} is {info.st_size} bytes; options files are at most {MAX_OPTIONS_BYTES}"
            )
        data = os.read(fd, MAX_OPTIONS_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_OPTIONS_BYTES:
        raise OptionsInvalid(f"{where} grew past {MAX_OPTIONS_BYTES} bytes while it was read")
    return data


def _parse(data: bytes, where: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise OptionsInvalid(f"{where} is not valid TOML: {str(exc)[:300]}") from None
    except RecursionError:
        raise OptionsInvalid(f"{where} is nested too deeply to read") from None
    unknown = sorted(set(raw) - {"options"})
    if unknown:
        raise OptionsInvalid(f"{where}: unknown table(s) {', '.join(unknown)[:200]}")
    table = raw.get("options", {})
    if not isinstance(table, dict):
        raise OptionsInvalid(f"{where}: [options] must be a table")
    return table


def _inbox_parts(folder: PurePosixPath, value: object, key: str, where: str) -> list[str]:
    """``value`` (relative to ``folder``) as components below the inbox, '..'
    resolved by name alone; refused if it leaves the inbox."""
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 1024:
        raise OptionsInvalid(f"{where}: {key} must be a relative path")
    if value.startswith("/"):
        raise OptionsInvalid(f"{where}: {key} must be a relative path")
    parts = list(folder.parts)
    for part in value.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise OptionsInvalid(f"{where}: {key} {value[:100]} leaves the inbox")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise OptionsInvalid(f"{where}: {key} must name a file")
    return parts


def _copy_in(
    inbox_fd: int, parts: list[str], key: str, *, where: str, copies: Path, limits: Limits
) -> Path:
    """Read the named file beneath the inbox and keep a private copy for the worker."""
    shown = "/".join(parts)
    shown = shown if len(shown) <= 160 else "..." + shown[-157:]
    try:
        data = read_regular(inbox_fd, parts, limits.max_input_bytes)
    except (Missing, OutsideFolder):
        raise OptionsInvalid(f"{where}: {key} {shown} is not a file inside the inbox") from None
    except Beneath as exc:
        raise OptionsInvalid(f"{where}: {key} {shown} cannot be used: {exc}") from None
    copies.mkdir(mode=0o700, exist_ok=True)
    copy = copies / f"{key}{_PATH_FIELDS[key]}"
    copy.write_bytes(data)
    return copy


def resolve_options(
    defaults: ConvertOptions,
    levels: list[int],
    relative: PurePosixPath,
    copies: Path,
    limits: Limits,
    *,
    notify: NotifySettings,
) -> FolderOptions:
    """The options for a job dropped at ``inbox/relative``.

    ``levels`` are the descriptors of the inbox and each folder down to the
    file's own (``JobStore.open_levels``); ``copies`` is a folder of the job's
    own where the files the options name are copied; ``notify`` says which
    ``notify_url`` values are allowed. Raises OptionsInvalid.
    """
    merged: dict[str, Any] = defaults.model_dump()
    notify_url: str | None = None
    named: dict[str, tuple[list[str], str]] = {}
    folders = [PurePosixPath(*relative.parts[:depth]) for depth in range(len(levels))]
    for folder_fd, folder in zip(levels, folders, strict=True):
        where = _shown(folder)
        data = _read_file(folder_fd, where)
        if data is None:
            continue
        table = _parse(data, where)
        for key in _PATH_FIELDS:
            if key in table:
                named[key] = (_inbox_parts(folder, table.pop(key), key, where), where)
        if _NOTIFY_KEY in table:
            notify_url = _notify_url(table.pop(_NOTIFY_KEY), notify, where)
        merged.update(table)
    for key, (parts, where) in named.items():
        merged[key] = _copy_in(levels[0], parts, key, where=where, copies=copies, limits=limits)
    try:
        return FolderOptions(ConvertOptions.model_validate(merged), notify_url)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise OptionsInvalid(f"options for {relative}: {problems[:500]}") from None
