"""Helpers for the chaos, hostile-input and resource-fault suites.

* ``FaultyDaemon``: the real daemon with the opt-in fault injection of
  ``daemon/faults.py`` and a few probes (``/status``, its own processes).
* ``make_inputs``: many small documents over the fast routes.
* ``phases``: what the jobs in ``.state/jobs`` were doing when the daemon died.
* ``audit``: the end-state invariants of a data root (every input exactly once,
  outputs and sidecars matching, nothing left behind).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import Daemon, sha

__all__ = [
    "CRASH_CODES",
    "ROUTE_FOLDERS",
    "Audit",
    "FaultyDaemon",
    "audit",
    "long_mode",
    "make_inputs",
    "phases",
    "sha",
]

# (inbox folder, source extension) → output extension, for the fast routes.
ROUTE_FOLDERS: tuple[tuple[str, str, str], ...] = (
    ("to-docx", "md", "docx"),
    ("to-pdf", "md", "pdf"),
    ("to-md", "html", "md"),
    ("to-pdf", "html", "pdf"),
    ("to-md", "docx", "md"),
)
# Failure codes a crash may legitimately end in: the job was in flight too often.
CRASH_CODES = frozenset({"crash_loop", "worker_crashed"})


def long_mode() -> bool:
    """``SIR_CONVERT_A_LOT_TEST_LONG=1`` scales the suites up (default: the short CI mode)."""
    return os.environ.get("SIR_CONVERT_A_LOT_TEST_LONG") == "1"


class FaultyDaemon(Daemon):
    """The daemon, with ``SIR_CONVERT_A_LOT_FAULTS`` set from ``faults``."""

    def __init__(
        self,
        base: Path,
        extra_config: str = "",
        faults: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        models_dir: Path | None = None,
    ) -> None:
        merged = dict(env or {})
        if faults:
            merged["SIR_CONVERT_A_LOT_FAULTS"] = json.dumps(faults)
        super().__init__(base, extra_config=extra_config, env=merged, models_dir=models_dir)

    @property
    def jobs(self) -> Path:
        return self.root / ".state" / "jobs"

    def status(self) -> dict[str, Any]:
        return self.get("/status")[1]

    def wait_lane_warm(self, lane: str = "cpu", timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.tail()}")
            try:
                if self.status()["lanes"][lane]["warm"]:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{lane} lane not warm in {timeout} s\n{self.tail()}")

    def own_processes(self) -> list[int]:
        """Live processes started by this daemon (they inherit its config variable)."""
        marker = f"SIR_CONVERT_A_LOT_CONFIG={self.config}".encode()
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
        return found

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


# -- inputs ----------------------------------------------------------------------------


def _docx_bytes(text: str) -> bytes:
    import io

    import docx
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (40, 30), "teal").save(picture, format="PNG")
    picture.seek(0)
    document = docx.Document()
    document.add_heading(text, level=1)
    document.add_paragraph(f"Body of {text}.")
    document.add_picture(picture)  # to-md publishes it as <stem>.images/figure-001.png
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_inputs(staging: Path, count: int, seed: int) -> dict[str, str]:
    """``count`` small documents under ``staging`` (mirroring inbox paths) → sha256."""
    rng = random.Random(seed)
    made: dict[str, str] = {}
    for i in range(count):
        folder, source, _ = ROUTE_FOLDERS[i % len(ROUTE_FOLDERS)]
        sub = f"batch-{rng.randrange(4)}/" if rng.random() < 0.3 else ""
        relative = f"{folder}/{sub}doc-{i:04d}.{source}"
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"Document {i} {rng.getrandbits(32):08x}"
        if source == "md":
            path.write_text(f"# {title}\n\nSome *text* for {i}.\n\n- one\n- two\n")
        elif source == "html":
            path.write_text(
                f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                f"</head><body><h1>{title}</h1><p>Paragraph {i}.</p></body></html>"
            )
        else:
            path.write_bytes(_docx_bytes(title))
        made[relative] = sha(path)
    return made


# -- phases ----------------------------------------------------------------------------


def _job_phase(root: Path, folder: Path) -> str:
    record_path = folder / "job.json"
    if not record_path.exists():
        return "claim"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return "claim"  # being replaced right now; a later look decides
    phase = record["phase"]
    if phase == "claiming":
        return "claim"
    if phase == "failing":
        return "failing"
    if phase == "claimed":
        if (folder / "sidecar.json").exists():
            return "sidecar_write"
        work = folder / "work"
        return "conversion" if work.is_dir() else "queued"
    # publishing
    work = folder / "work"
    target = root / "outbox" / str(record["output_relative"])
    staged = work.is_dir() and any(work.iterdir())
    if staged or not target.with_name(target.name + ".meta.json").exists():
        return "publish"
    input_dir = folder / "input"
    if input_dir.is_dir() and any(input_dir.iterdir()):
        return "archive"
    return "finish"


def phases(root: Path) -> set[str]:
    """What the jobs under ``.state/jobs`` are doing (a best effort while running)."""
    found: set[str] = set()
    jobs = root / ".state" / "jobs"
    try:
        folders = list(jobs.iterdir())
    except FileNotFoundError:
        return found
    for folder in folders:
        try:
            found.add(_job_phase(root, folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


# -- the audit -------------------------------------------------------------------------


@dataclass
class Audit:
    """The end state: which inputs succeeded, which failed (and how)."""

    succeeded: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # relative → code
    problems: list[str] = field(default_factory=list)

    def codes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for code in self.failed.values():
            counts[code] = counts.get(code, 0) + 1
        return counts


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() or path.is_symlink():
            yield path


def audit(root: Path, originals: dict[str, str]) -> Audit:
    """Check every invariant of a quiet data root; problems are listed, not raised."""
    result = Audit()
    problems = result.problems
    outbox, failed, archive = root / "outbox", root / "failed", root / "archive"
    leftovers = list((root / ".state" / "jobs").iterdir())
    if leftovers:
        problems.append(f"orphan job folders: {[p.name for p in leftovers]}")
    tmp = list((root / ".state" / "tmp").iterdir())
    if tmp:
        problems.append(f"temp files left in .state/tmp: {tmp}")
    inbox_left = [
        str(p.relative_to(root / "inbox"))
        for p in _files(root / "inbox")
        if p.name != ".sir-convert-a-lot.toml"  # options files stay
    ]
    if inbox_left:
        problems.append(f"inputs still in the inbox: {inbox_left}")

    outputs = {str(p.relative_to(outbox)) for p in _files(outbox)}
    for name in sorted(outputs):
        if name.endswith(".tmp") or ".tmp" in Path(name).suffixes or "staging" in name:
            problems.append(f"temporary file in outbox: {name}")
    sidecars = {n for n in outputs if n.endswith(".meta.json")}
    # Companions (pictures, JSON, chunks) count as part of the sidecar that lists them.
    companions: dict[str, dict[str, Any]] = {}
    for name in sidecars:
        for entry in json.loads((outbox / name).read_text())["output"].get("artifacts", [])[1:]:
            companions[entry["path"]] = entry
    for name, entry in sorted(companions.items()):
        if name not in outputs:
            problems.append(f"a sidecar lists {name}, which is not there")
        elif entry["sha256"] != sha(outbox / name):
            problems.append(f"{name}: sha256 differs from its sidecar's")
    results = outputs - sidecars - set(companions)
    for name in sorted(results):
        if f"{name}.meta.json" not in sidecars:
            problems.append(f"output without sidecar: {name}")
    seen: dict[str, list[str]] = {}
    for name in sorted(sidecars):
        output = name[: -len(".meta.json")]
        car = json.loads((outbox / name).read_text())
        rel = car["input"]["relative_path"]
        seen.setdefault(rel, []).append(output)
        if output not in results:
            problems.append(f"sidecar without output: {name}")
            continue
        if car["output"]["path"] != output:
            problems.append(f"{name} names {car['output']['path']}")
        if car["output"]["sha256"] != sha(outbox / output):
            problems.append(f"{name}: output sha256 differs from the file's")
        if car["output"]["size_bytes"] != (outbox / output).stat().st_size:
            problems.append(f"{name}: output size differs from the file's")
        if rel not in originals:
            problems.append(f"{name}: input {rel} was never dropped")
        elif car["input"]["sha256"] != originals[rel]:
            problems.append(f"{name}: input sha256 differs from the original {rel}")
        result.succeeded[rel] = car
    for rel, outs in seen.items():
        if len(outs) > 1:
            problems.append(f"{rel} was published {len(outs)} times: {outs}")

    failed_files = {str(p.relative_to(failed)) for p in _files(failed)}
    for name in sorted(n for n in failed_files if n.endswith(".error.json")):
        car = json.loads((failed / name).read_text())
        rel = car["input"]["relative_path"]
        entry = name[: -len(".error.json")]
        if entry not in failed_files:
            problems.append(f"error sidecar without its input: {name}")
        elif rel in originals and sha(failed / entry) != originals[rel]:
            problems.append(f"failed input {entry} differs from the original {rel}")
        if rel in result.failed or rel in result.succeeded:
            problems.append(f"{rel} ended more than once")
        result.failed[rel] = car["error"]["code"]
    for name in sorted(n for n in failed_files if not n.endswith(".error.json")):
        if f"{name}.error.json" not in failed_files:
            problems.append(f"failed input without error sidecar: {name}")

    missing = sorted(set(originals) - set(result.succeeded) - set(result.failed))
    if missing:
        problems.append(f"{len(missing)} inputs unaccounted for: {missing[:10]}")

    archived = {str(p.relative_to(archive)): p for p in _files(archive)}
    for rel in result.succeeded:
        if rel not in archived:
            problems.append(f"original of {rel} is not archived")
        elif sha(archived[rel]) != originals.get(rel):
            problems.append(f"archived {rel} differs from the original")
    extra = sorted(set(archived) - set(result.succeeded))
    if extra:
        problems.append(f"archive holds extra files: {extra[:10]}")
    return result
