"""The worker wire: JSON lines between the main process and a worker, bounded on both sides.

A worker's reply quotes whatever a library put into its error message, and a
hostile document decides that: WeasyPrint quoted a 20 MB ``viewBox`` token,
the line passed the reader's limit, and the slot that read it died. So the
worker cuts every string and the whole line before sending (``encode``), and
the main process treats anything it cannot read back (``decode``) as a worker
crash, never as an exception of its own.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "LINE_LIMIT",
    "MAX_FIELD_CHARS",
    "MAX_ITEMS",
    "MAX_LINE_BYTES",
    "WireError",
    "cap",
    "decode",
    "encode",
]

# What the main process's reader accepts; far above what a worker sends.
LINE_LIMIT = 16 * 1024 * 1024
# What a worker sends at most: per string, per list or dict, per line.
MAX_FIELD_CHARS = 16 * 1024
MAX_ITEMS = 500
MAX_LINE_BYTES = 1024 * 1024
# Top-level fields kept when a capped message is still too long.
_ESSENTIAL = ("event", "ok", "code", "retryable", "pid", "lane", "warm", "rss_mb")


class WireError(ValueError):
    """A line that is not a well-formed message of the protocol."""


def _cut(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_FIELD_CHARS:
        return text, False
    return f"{text[:MAX_FIELD_CHARS]} [cut: {len(text) - MAX_FIELD_CHARS} more characters]", True


def _cap(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        cut = len(value) > MAX_ITEMS
        for key, item in list(value.items())[:MAX_ITEMS]:
            short_key, key_cut = _cut(str(key))
            out[short_key], item_cut = _cap(item)
            cut = cut or key_cut or item_cut
        return out, cut
    if isinstance(value, list | tuple):
        items = [_cap(item) for item in list(value)[:MAX_ITEMS]]
        return [v for v, _ in items], len(value) > MAX_ITEMS or any(c for _, c in items)
    return value, False


def cap(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with every string, list and dict cut to size; ``truncated`` says so."""
    capped, cut = _cap(message)
    out: dict[str, Any] = capped
    if cut:
        out["truncated"] = True
    return out


def encode(message: dict[str, Any]) -> bytes:
    """One line for the wire, never longer than ``MAX_LINE_BYTES``."""
    capped = cap(message)
    line = json.dumps(capped).encode() + b"\n"
    if len(line) <= MAX_LINE_BYTES:
        return line
    # Many fields, each under the cap: keep what the other side needs to decide.
    short = {k: capped[k] for k in _ESSENTIAL if k in capped}
    if "message" in capped:
        short["message"] = str(capped["message"])[:4096]
    short["truncated"] = True
    return json.dumps(short).encode() + b"\n"


def decode(line: bytes, *, reply: bool) -> dict[str, Any]:
    """Parse one line; ``reply`` checks the fields a job's reply must have."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"not a JSON line ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise WireError(f"a {type(message).__name__}, not an object")
    if reply:
        if not isinstance(message.get("ok"), bool):
            raise WireError("reply without a boolean 'ok'")
        if not message["ok"] and not (
            isinstance(message.get("code"), str) and isinstance(message.get("message"), str)
        ):
            raise WireError("failure reply without a 'code' and 'message'")
    return message
