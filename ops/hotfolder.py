"""The client side of a running daemon, as automation sees it: standard library only.

Drop a file into the inbox atomically, find the sidecar that answers it, check
the output against the sidecar, and ask /readyz whether the daemon can serve.
Used by ops/smoke and ops/verify-gpu; docs/dropping-files.md shows the same
protocol for other consumers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "Answer",
    "Readiness",
    "answer_paths",
    "check_output",
    "drop",
    "poll_answer",
    "readyz",
    "wait_ready",
]

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Readiness:
    """One /readyz answer. ``status`` is 0 when nothing answered."""

    status: int
    body: JsonObject
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == 200 and self.body.get("ready") is True

    @property
    def revision(self) -> str | None:
        value = self.body.get("revision")
        return value if isinstance(value, str) else None

    @property
    def codes(self) -> list[str]:
        found = self.body.get("reasons")
        if not isinstance(found, list):
            return []
        return [str(r.get("code")) for r in found if isinstance(r, dict)]

    def reasons(self) -> list[str]:
        """Human lines: the readiness reasons, or why nothing answered."""
        if self.error:
            return [self.error]
        found = self.body.get("reasons")
        if not isinstance(found, list):
            return [] if self.ready else [f"HTTP {self.status} without reasons"]
        return [
            f"{r.get('code', '?')}: {r.get('message', '')}" for r in found if isinstance(r, dict)
        ]


def readyz(base_url: str, timeout: float = 5.0) -> Readiness:
    url = base_url.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own URL)
            return Readiness(response.status, _json_object(response.read()))
    except urllib.error.HTTPError as exc:  # 503 carries the reasons
        with exc:
            return Readiness(exc.code, _json_object(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Readiness(0, {}, f"nothing answered at {url}: {reason}")


def wait_ready(base_url: str, timeout: float, interval: float = 1.0) -> Readiness:
    """Poll /readyz until it passes or ``timeout`` seconds pass; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = readyz(base_url)
        if answer.ready or time.monotonic() >= deadline:
            return answer
        time.sleep(interval)


def _json_object(raw: bytes) -> JsonObject:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def drop(data_root: Path, relative: PurePosixPath, content: bytes) -> Path:
    """Write ``content`` to ``inbox/<relative>`` so that it appears whole, at once.

    The bytes go to a dot-name in the same folder (the daemon ignores dot-files),
    are flushed to disk, and are renamed into place: the daemon never sees a
    half-written file.
    """
    final = data_root / "inbox" / Path(*relative.parts)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.part")
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(final)
    return final


def answer_paths(data_root: Path, relative: PurePosixPath, target: str) -> tuple[Path, Path]:
    """Where the daemon answers ``inbox/<relative>``: (success sidecar, error sidecar)."""
    mirrored = Path(*relative.parts)
    output = mirrored.with_name(f"{mirrored.stem}.{target}")
    meta = data_root / "outbox" / output.parent / f"{output.name}.meta.json"
    error = data_root / "failed" / mirrored.parent / f"{mirrored.name}.error.json"
    return meta, error


@dataclass(frozen=True)
class Answer:
    """A sidecar that answered a dropped file."""

    path: Path
    sidecar: JsonObject

    @property
    def succeeded(self) -> bool:
        return self.sidecar.get("status") == "succeeded"


def poll_answer(meta: Path, error: Path) -> Answer | None:
    """The sidecar for a job if one was written, else None. Never blocks.

    The daemon writes the success sidecar last, by rename, so a readable
    ``.meta.json`` means the output is complete.
    """
    for path in (meta, error):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        sidecar = _json_object(raw)
        if sidecar:
            return Answer(path, sidecar)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output(data_root: Path, sidecar: JsonObject) -> tuple[Path | None, list[str]]:
    """The output a success sidecar names, and what is wrong with it (empty: nothing)."""
    output = sidecar.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("path"), str):
        return None, ["the sidecar names no output"]
    path = data_root / "outbox" / Path(*PurePosixPath(output["path"]).parts)
    if not path.is_file():
        return path, [f"the output {path} does not exist"]
    problems = []
    size = path.stat().st_size
    if size != output.get("size_bytes"):
        problems.append(f"size {size} differs from the sidecar's {output.get('size_bytes')}")
    if _sha256(path) != output.get("sha256"):
        problems.append("sha256 differs from the sidecar's")
    return path, problems
