"""Reading text inputs: strict UTF-8 (a BOM is allowed), with a clear error otherwise."""

from __future__ import annotations

from pathlib import Path

from converters.errors import UnsupportedContent

__all__ = ["read_text_input"]


def read_text_input(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsupportedContent(
            f"{path.name} is not valid UTF-8 (byte {exc.start}): save it as UTF-8 and retry"
        ) from None
