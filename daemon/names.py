"""Names a dropper chose: stored losslessly, shown safely, checked when read back.

A Linux file name is any byte string without ``/`` and NUL. Python hands such a
name over as ``str`` with undecodable bytes as lone surrogates (PEP 383), which
JSON cannot carry. So:

* job records store a name as a plain string when it is valid UTF-8 and as
  ``{"b64": "<base64 of the bytes>"}`` otherwise (``StoredPath``), so a record
  round-trips every name the file system allows;
* sidecars show a readable form (undecodable bytes as U+FFFD) and, only when
  that form is lossy, the exact bytes in base64 (``*_b64`` fields), so that
  automation can map a sidecar back to its file;
* every human-facing output (the ``status`` command, logs meant for a
  terminal) escapes control characters, so a name cannot drive the terminal;
* a path read back from disk is checked again (``check_relative``) before the
  daemon acts on it: relative, no ``..``, no empty or NUL components.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import unicodedata
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "StoredPath",
    "check_relative",
    "lossless_b64",
    "printable",
    "readable",
]


def readable(name: str) -> str:
    """Valid Unicode text for ``name``: undecodable bytes become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def lossless_b64(name: str) -> str | None:
    """The exact bytes of ``name`` in base64, or None when ``readable`` is exact."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control, bidi-override and undecodable
    characters are shown as ``\\xNN`` / ``\\uNNNN`` escapes."""

    def escape(match: re.Match[str]) -> str:
        ch = match.group(0)
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    shown = _CONTROL.sub(escape, readable(text))
    # Anything else the terminal would act on (other Cc/Cf characters).
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in shown
    )


def check_relative(value: str) -> str:
    """``value`` if it is a safe relative '/'-separated path, else ValueError."""
    if not value or value.startswith("/"):
        raise ValueError("must be a non-empty relative path")
    for part in value.split("/"):
        if part in ("", ".", "..") or "\x00" in part:
            raise ValueError(f"component {part[:40]!r} is not allowed")
    return value


def _load_stored(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            raw = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("b64 is not valid base64") from None
        return check_relative(os.fsdecode(raw))
    if isinstance(value, PurePosixPath):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a string or {'b64': ...}")
    return check_relative(value)


def _dump_stored(value: str) -> str | dict[str, str]:
    encoded = lossless_b64(value)
    return value if encoded is None else {"b64": encoded}


StoredPath = Annotated[
    str,
    BeforeValidator(_load_stored),
    PlainSerializer(_dump_stored, return_type=str | dict[str, str]),
]
"""A relative path in a job record: checked on load, any bytes kept on save."""
