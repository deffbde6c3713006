"""A randomized hostile dropper: a few hundred nasty entries at once, then an audit.

Seeded (``SIR_CONVERT_A_LOT_FUZZ_SEED`` replays a run), so a failure can be
replayed. The entries: names of arbitrary bytes, control characters and 255-byte
multibyte names, deep trees, folders swapped for files or for symlinks to a
canary folder while their files settle, FIFOs, symlinks and hard links to canary
files, sparse giants, empty and garbage files, hostile options files.

The audit, once the inbox is quiet:

* every regular file dropped with a route ends exactly once: in archive/ (its
  output and sidecar in outbox/, the sidecar's sha256 equal to the file's) or in
  failed/ with an ``.error.json``; the non-regular entries end in failed/;
* the only entries left in the inbox are ones the documented rules leave alone;
* the canary folder outside the data root was not read (atime), changed or
  added to;
* the daemon is healthy, counted no internal error, has nothing stuck, and a
  good file dropped afterwards converts at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chaos_support import FaultyDaemon, long_mode

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("SIR_CONVERT_A_LOT_FUZZ_SEED", "0") or 0) or 20261130
ENTRIES = 1000 if long_mode() else 220
CANARY_TEXT = b"canary: nobody may read or move this\n"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Plan:
    """What was dropped, and where each regular file is now (after swaps)."""

    files: dict[bytes, str] = field(default_factory=dict)  # inbox-relative bytes -> sha256
    odd: set[bytes] = field(default_factory=set)  # symlinks, FIFOs, hard links: refused
    left_alone: set[bytes] = field(default_factory=set)  # left in the inbox by rule


class Dropper:
    def __init__(self, inbox: Path, canary: Path, rng: random.Random) -> None:
        self.inbox = os.fsencode(inbox)
        self.canary = canary
        self.rng = rng
        self.plan = Plan()
        self.count = 0

    # -- names --------------------------------------------------------------------

    def _name(self, ext: bytes) -> bytes:
        """A hostile but pickable name: any bytes but '/' and NUL, not hidden,
        not an ignored pattern; unique by a counter."""
        self.count += 1
        kind = self.rng.randrange(5)
        tag = b"%d-" % self.count
        if kind == 0:  # arbitrary bytes
            body = bytes(
                self.rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(12)
            )
        elif kind == 1:  # control characters and terminal escapes
            body = b"ctl\x1b[2J\x07\n\t\r\x7f\x9b"
        elif kind == 2:  # as long as ext4 allows, in multibyte UTF-8
            room = 255 - len(tag) - len(ext)
            body = ("é" * (room // 2)).encode()
        elif kind == 3:  # Latin-1, as rsync from an old machine writes
            body = "café-Straße-ñ".encode("latin-1")
        else:
            body = "ünïcødé-😀-名前".encode()
        name = tag + body + ext
        return name[: 255 - len(ext)] + ext if len(name) > 255 else name

    def _folder(self, depth: int) -> bytes:
        target = self.rng.choice([b"to-docx", b"to-md", b"to-pdf"])
        parts = [target] + [b"d%d" % self.rng.randrange(3) for _ in range(depth)]
        folder = b"/".join(parts)
        os.makedirs(self.inbox + b"/" + folder, exist_ok=True)
        return folder

    def _write(self, relative: bytes, data: bytes) -> None:
        with open(self.inbox + b"/" + relative, "wb") as fh:
            fh.write(data)
        if relative.rsplit(b".", 1)[-1] in (b"md", b"html", b"pdf", b"docx"):
            self.plan.files[relative] = _digest(data)

    # -- entries ------------------------------------------------------------------

    def regular(self) -> None:
        folder = self._folder(self.rng.randrange(3))
        choice = self.rng.randrange(6)
        if choice <= 2:
            data = f"# Fuzz {self.count}\n\nBody {self.rng.random()}.\n".encode()
            self._write(folder + b"/" + self._name(b".md"), data)
        elif choice == 3:  # empty, white space, garbage
            data = self.rng.choice([b"", b"   \n\t\n", os.urandom(2048)])
            self._write(folder + b"/" + self._name(b".md"), data)
        elif choice == 4:
            self._write(folder + b"/" + self._name(b".pdf"), b"%PDF-1.7\n" + os.urandom(512))
        else:
            self._write(folder + b"/" + self._name(b".docx"), b"PK\x03\x04" + os.urandom(300))

    def deep(self) -> None:
        folder = self._folder(0) + b"/" + b"/".join(b"deep%d" % i for i in range(40))
        os.makedirs(self.inbox + b"/" + folder, exist_ok=True)
        self._write(folder + b"/" + self._name(b".md"), b"# Deep\n")

    def swapped_for_file(self) -> None:
        folder = self._folder(1) + b"/sw%d" % self.count
        os.makedirs(self.inbox + b"/" + folder)
        name = self._name(b".md")
        self._write(folder + b"/" + name, b"# Swapped\n")
        moved = folder + b"-moved"
        os.rename(self.inbox + b"/" + folder, self.inbox + b"/" + moved)
        self.plan.files[moved + b"/" + name] = self.plan.files.pop(folder + b"/" + name)
        with open(self.inbox + b"/" + folder, "wb") as fh:  # no extension: unsupported
            fh.write(b"a file where a folder was")
        self.plan.odd.add(folder)

    def swapped_for_symlink(self) -> None:
        folder = self._folder(1) + b"/sl%d.tmp" % self.count  # *.tmp: the link is ignored
        os.makedirs(self.inbox + b"/" + folder)
        name = b"secret.md"  # the canary's name: through the link, it would be found
        self._write(folder + b"/" + name, b"# harmless\n")
        moved = folder[: -len(b".tmp")] + b"-moved"
        os.rename(self.inbox + b"/" + folder, self.inbox + b"/" + moved)
        self.plan.files[moved + b"/" + name] = self.plan.files.pop(folder + b"/" + name)
        os.symlink(self.canary, self.inbox + b"/" + folder)
        self.plan.left_alone.add(folder)

    def special(self) -> None:
        folder = self._folder(self.rng.randrange(2))
        relative = folder + b"/" + self._name(b".md")
        path = self.inbox + b"/" + relative
        kind = self.rng.randrange(4)
        if kind == 0:
            os.mkfifo(path)
        elif kind == 1:
            os.symlink(self.canary / "secret.md", path)
        elif kind == 2:
            os.link(self.canary / "secret.md", path)
        else:
            with open(path, "wb") as fh:  # a sparse giant: 4 GiB, nothing on disk
                fh.truncate(4 * 1024**3)
            self.plan.files[relative] = "sparse"
            return
        self.plan.odd.add(relative)

    def options(self) -> None:
        folder = self._folder(1)
        path = self.inbox + b"/" + folder + b"/.sir-convert-a-lot.toml"
        if os.path.lexists(path):
            return
        body = self.rng.choice(
            [
                b"[options]\nocr = " + b"[" * 2000 + b"]" * 2000 + b"\n",
                b'[options]\nstylesheet = "../../../../../etc/passwd"\n',
                b"\xff\xfe not toml",
                b"",
            ]
        )
        if self.rng.random() < 0.3:
            os.symlink(self.canary / "secret.md", path)
        else:
            with open(path, "wb") as fh:
                fh.write(body)

    def drop(self, count: int) -> Plan:
        actions = [self.regular] * 10 + [
            self.deep,
            self.swapped_for_file,
            self.swapped_for_symlink,
            self.special,
            self.special,
            self.options,
        ]
        for _ in range(count):
            self.rng.choice(actions)()
        return self.plan


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "canary"
    folder.mkdir()
    (folder / "secret.md").write_bytes(CANARY_TEXT)
    st = (folder / "secret.md").stat()
    # an access time older than the modification time: any read updates it (relatime)
    os.utime(folder / "secret.md", (st.st_mtime - 3600, st.st_mtime))
    yield folder


def _wait_quiet(d: FaultyDaemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        status = d.status()
        busy = status["pending_in_inbox"] or status["in_flight"] or status["queue"]
        busy = busy or status["finishing"] or list(d.jobs.iterdir())
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 5:  # two rescans found nothing new
            return
        time.sleep(0.5)
    raise AssertionError(f"the inbox never went quiet: {d.status()}")


def _input_key(car: dict[str, Any]) -> bytes:
    """The exact bytes of a sidecar's inbox-relative input path."""
    raw = car["input"]["relative_path_b64"]
    return base64.b64decode(raw) if raw else str(car["input"]["relative_path"]).encode()


def _failed_by_input(d: FaultyDaemon) -> dict[bytes, str]:
    """Inbox-relative input (exact bytes) -> error code, for everything in failed/.

    Each error sidecar must sit next to its input (names near 255 bytes are
    shortened in failed/ to leave room for ``.error.json``)."""
    found: dict[bytes, str] = {}
    for folder, _, names in os.walk(os.fsencode(d.failed)):
        for name in names:
            if name.endswith(b".error.json"):
                sidecar = os.path.join(folder, name)
                assert os.path.lexists(sidecar[: -len(b".error.json")]), sidecar
                car = json.loads(Path(os.fsdecode(sidecar)).read_text())
                key = _input_key(car)
                assert key not in found, f"failed twice: {key!r}"
                found[key] = car["error"]["code"]
    return found


def _sidecars_by_input(d: FaultyDaemon) -> dict[bytes, dict[str, Any]]:
    """Success sidecars by the exact bytes of their input's inbox-relative path."""
    found: dict[bytes, dict[str, Any]] = {}
    for folder, _, names in os.walk(os.fsencode(d.outbox)):
        for name in names:
            if name.endswith(b".meta.json"):
                car = json.loads(Path(os.fsdecode(os.path.join(folder, name))).read_text())
                key = _input_key(car)
                assert key not in found, f"two outputs for {key!r}"
                found[key] = car
    return found


def test_hundreds_of_hostile_entries_are_all_accounted_for(
    tmp_path: Path, tiny_models_dir: Path, canary: Path
) -> None:
    d = FaultyDaemon(
        tmp_path,
        models_dir=tiny_models_dir,
        extra_config="cpu = { workers = 2, job_timeout_seconds = 60 }\n",
    )
    d.start()
    try:
        secret = canary / "secret.md"
        before = secret.stat()
        rng = random.Random(SEED)
        plan = Dropper(d.inbox, canary, rng).drop(ENTRIES)
        _wait_quiet(d, timeout=120 + ENTRIES)

        # every regular file ends once: converted (output, sidecar, archived) or failed
        archived = {
            os.path.relpath(os.path.join(f, n), os.fsencode(d.archive))
            for f, _, names in os.walk(os.fsencode(d.archive))
            for n in names
        }
        failed = _failed_by_input(d)
        succeeded = _sidecars_by_input(d)
        for relative, digest in plan.files.items():
            where = (relative in succeeded) + (relative in failed)
            assert where == 1, (relative, where, SEED)
            if relative in succeeded:
                assert relative in archived, (relative, SEED)
                assert succeeded[relative]["input"]["sha256"] == digest, (relative, SEED)
        for relative in plan.odd:
            assert relative in failed, (relative, SEED)
        sparse = [r for r, digest in plan.files.items() if digest == "sparse"]
        assert sparse and all(failed[r] == "input_too_large" for r in sparse), SEED

        # the inbox keeps only what the rules leave alone (folders, ignored entries)
        for folder, dirs, files in os.walk(os.fsencode(d.inbox)):
            for name in files + dirs:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.fsencode(d.inbox))
                if os.path.isdir(path) and not os.path.islink(path):
                    continue
                assert relative in plan.left_alone or name == b".sir-convert-a-lot.toml", (
                    relative,
                    SEED,
                )

        # nothing outside the data root was read, moved or written
        after = secret.stat()
        assert secret.read_bytes() == CANARY_TEXT
        assert (after.st_atime, after.st_mtime) == (before.st_atime, before.st_mtime)
        assert sorted(p.name for p in canary.iterdir()) == ["secret.md"]

        # and the daemon is fine
        assert d.get("/healthz")[0] == 200
        assert d.get("/readyz")[0] == 200
        assert d.metric("sir_convert_a_lot_internal_errors_total") == 0.0
        assert d.status()["stuck"] == []
        good = tmp_path / "good.md"
        good.write_text("# Good\n")
        started = time.monotonic()
        os.replace(good, d.inbox / "to-docx" / "good.md")
        assert d.sidecar("to-docx/good.docx", timeout=30)["status"] == "succeeded"
        assert time.monotonic() - started < 15
    finally:
        d.stop()
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
