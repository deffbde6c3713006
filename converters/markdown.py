"""Markdown normalisation: the same bytes for the same document, whatever wrote it.

Rules, applied outside fenced code blocks:

* CRLF and lone CR become LF (inside fences too: line endings are not content);
* trailing whitespace is stripped from every line;
* runs of blank lines collapse to a single blank line;
* leading blank lines are dropped and the text ends with exactly one newline
  (a document with no content at all becomes the empty string).

Inside a fenced code block (```` ``` ```` or ``~~~``, CommonMark rules for
matching the closing fence) every line is kept verbatim.
"""

from __future__ import annotations

import re

__all__ = ["normalize_markdown", "separate_tables"]

_FENCE_OPEN = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# A GFM table delimiter row: | --- | :--: | ... (cells of dashes, optional colons)
_TABLE_DELIMITER = re.compile(r"^\|(?:\s*:?-+:?\s*\|)+\s*$")


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _opens(line: str) -> str | None:
    match = _FENCE_OPEN.match(line)
    if match is None:
        return None
    fence = match.group("fence")
    # A backtick fence's info string may not contain backticks (```x``` is inline code).
    if fence[0] == "`" and "`" in match.group("info"):
        return None
    return fence


def normalize_markdown(text: str) -> str:
    """Normalise line endings, trailing whitespace and blank lines; see the module doc."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    fence: str | None = None
    blank_pending = False
    for raw in lines:
        if fence is not None:
            out.append(raw)
            if _closes(raw, fence):
                fence = None
            continue
        line = raw.rstrip()
        if not line:
            blank_pending = bool(out)  # drop leading blank lines
            continue
        if blank_pending:
            out.append("")
            blank_pending = False
        out.append(line)
        fence = _opens(line)
    body = "\n".join(out).rstrip("\n")
    return body + "\n" if body else ""


def separate_tables(text: str) -> str:
    """Put a blank line before a pipe table that directly follows a line of text.

    docling writes a table that its reader attached to a list (a Word table right
    after a bulleted list) on the line under the last item; CommonMark and GFM
    readers then fold the whole table into that item as text. Only tables whose
    rows start in the first column are touched (an indented table belongs to the
    item on purpose), and nothing inside fenced code blocks changes.
    """
    lines = text.split("\n")
    out: list[str] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        if fence is not None:
            out.append(line)
            if _closes(line, fence):
                fence = None
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if (
            line.startswith("|")
            and _TABLE_DELIMITER.match(following.rstrip())
            and out
            and out[-1].strip()
            and not out[-1].startswith("|")
        ):
            out.append("")
        out.append(line)
        fence = _opens(line)
    return "\n".join(out)
