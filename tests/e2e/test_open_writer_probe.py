"""The real daemon given CAP_LEASE the way the systemd unit gives it (an ambient
capability, nothing else): a file another user owns and still holds open waits,
and the programs the daemon starts hold no capability (docs/settling.md,
"Still open?"; docs/security.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.writers_support import assert_converted_once, sha_bytes, small_markdown, wait_idle
from tests.fixtures.capabilities import can_hand_out_cap_lease
from tests.fixtures.daemon import Daemon

LEASE = 1 << 28  # CAP_LEASE

pytestmark = pytest.mark.skipif(
    not can_hand_out_cap_lease(),
    reason="needs root with CAP_SETPCAP, CAP_LEASE in the bounding set, setpriv(1)",
)


@pytest.fixture
def leased_daemon(tmp_path: Path, tiny_models_dir: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, models_dir=tiny_models_dir)
    # uid 0 without root's powers: exec grants only the ambient set, as for the
    # unit's unprivileged user.
    d.command = [
        "setpriv",
        "--securebits=+noroot,+noroot_locked",
        "--inh-caps=-all,+lease",
        "--ambient-caps=+lease",
        *d.command,
    ]
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill()


def _caps(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return {key: int(fields[key], 16) for key in ("CapEff", "CapPrm", "CapAmb")}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_foreign_file_held_open_waits_and_workers_hold_no_capability(
    leased_daemon: Daemon,
) -> None:
    d = leased_daemon
    folder = d.inbox / "to-docx"
    folder.mkdir(parents=True)
    first, rest = small_markdown("held by someone else"), b"\n- the last line\n"
    target = folder / "foreign.md"
    with target.open("wb") as fh:
        os.fchown(fh.fileno(), 65534, 65534)  # nobody's file: only CAP_LEASE may ask
        os.fchmod(fh.fileno(), 0o644)  # readable by the daemon whatever the umask
        fh.write(first)
        fh.flush()
        # Found by the start-up scan (no event: no close to wait for), quiet and
        # stable: only the kernel's answer keeps it from being claimed half-written.
        d.start()
        assert _caps(d.pid) == {"CapEff": LEASE, "CapPrm": LEASE, "CapAmb": 0}
        deadline = time.monotonic() + 60
        while "input_held_open" not in d.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, d.tail()
            time.sleep(0.1)
        assert target.exists(), "claimed while still open"
        fh.write(rest)
    wait_idle(d)
    car = assert_converted_once(d, "to-docx/foreign.docx", sha_bytes(first + rest))
    assert car["status"] == "succeeded"
    assert "writer_probe_unavailable" not in d.log.read_text(errors="replace")
    workers = _descendants(d.pid)
    assert workers, "no worker process found"
    for pid in workers:
        try:
            caps = _caps(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        assert caps == {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}, (pid, caps)
    assert d.stop() == 0
