"""The open-writer probe asks the real kernel (a read lease) whether any process
holds a file open for writing; daemon/open_writers.py."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import open_writers
from daemon.open_writers import WriterProbe
from tests.fixtures.capabilities import can_hand_out_cap_lease

REPO = Path(__file__).parents[2]


def _leases_work(folder: Path) -> bool:
    probe = folder / ".lease-check"
    probe.write_bytes(b"")
    fd = os.open(probe, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return open_writers._file_system(fd) in open_writers._FAITHFUL
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def sub(tmp_path: Path) -> Iterator[int]:
    """A folder's descriptor, as the claim holds one; skips where leases do not work."""
    if not _leases_work(tmp_path):
        pytest.skip("this file system or kernel grants no leases here")
    (tmp_path / "sub").mkdir()
    fd = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _no_lease_left(path: Path) -> bool:
    """A writer's non-blocking open fails with EAGAIN while any lease remains."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno == errno.EWOULDBLOCK:
            return False
        raise
    return True


def _writer_holding(path: Path) -> subprocess.Popen[str]:
    """Another process that opens ``path`` for writing, writes, and holds it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfh = open(sys.argv[1], 'ab')\nfh.write(b'x'); fh.flush()\n"
            "print('open', flush=True)\nsys.stdin.read()\n",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    return proc


def test_a_file_held_open_by_another_process_is_held_until_it_closes(
    tmp_path: Path, sub: int
) -> None:
    probe = WriterProbe()
    target = tmp_path / "sub" / "a.md"
    proc = _writer_holding(target)
    try:
        assert probe.held_for_writing(sub, "a.md") is True
        assert probe.held_for_writing(sub, "a.md") is True
    finally:
        proc.communicate("")
    assert probe.held_for_writing(sub, "a.md") is False
    assert _no_lease_left(target), "the probe kept its lease"
    assert target.read_bytes() == b"x"  # nothing was changed or read


def test_readers_do_not_count_and_the_lease_is_given_back(tmp_path: Path, sub: int) -> None:
    probe = WriterProbe()
    target = tmp_path / "sub" / "b.md"
    target.write_bytes(b"done")
    with target.open("rb"):
        assert probe.held_for_writing(sub, "b.md") is False
    assert _no_lease_left(target), "the probe kept its lease"
    with target.open("ab") as fh:
        fh.write(b"!")
        assert probe.held_for_writing(sub, "b.md") is True
    assert target.read_bytes() == b"done!"


def test_a_write_lease_held_elsewhere_counts_as_held(tmp_path: Path, sub: int) -> None:
    """Samba with kernel oplocks holds a write lease for a client with the file open:
    the probe's non-blocking open is refused, and that means held."""
    probe = WriterProbe()  # ignores SIGIO, which the lease break sends the holder
    target = tmp_path / "sub" / "leased.md"
    target.write_bytes(b"x")
    holder = os.open(target, os.O_RDONLY)
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        assert probe.held_for_writing(sub, "leased.md") is True
    finally:
        os.close(holder)
    assert probe.held_for_writing(sub, "leased.md") is False


def test_links_folders_fifos_and_missing_entries_are_not_held(tmp_path: Path, sub: int) -> None:
    probe = WriterProbe()
    outside = tmp_path / "outside.md"
    with outside.open("wb"):
        (tmp_path / "sub" / "link.md").symlink_to(outside)
        (tmp_path / "sub" / "folder.md").mkdir()
        (tmp_path / "sub" / "hardlink.md").hardlink_to(outside)
        os.mkfifo(tmp_path / "sub" / "pipe.md")
        # A symlink to a file held open is never followed.
        assert probe.held_for_writing(sub, "link.md") is False
        assert probe.held_for_writing(sub, "pipe.md") is False  # not opened, not blocked
        assert probe.held_for_writing(sub, "folder.md") is False
        # Refused unread by the claim; its other name is none of our business.
        assert probe.held_for_writing(sub, "hardlink.md") is False
        assert probe.held_for_writing(sub, "gone.md") is False


def test_a_file_system_whose_leases_say_nothing_is_not_asked(
    tmp_path: Path, sub: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NFSv4 and SMB clients refuse every lease the server did not delegate, which
    would read as "held" for ever: such file systems are never asked."""
    monkeypatch.setattr(open_writers, "_FAITHFUL", {})
    probe = WriterProbe()
    with (tmp_path / "sub" / "c.md").open("wb"):
        assert probe.held_for_writing(sub, "c.md") is False
        assert probe.held_for_writing(sub, "c.md") is False
    out = capsys.readouterr()
    logged = out.out + out.err
    assert logged.count("writer_probe_unavailable") == 1  # said once
    assert "do not tell who writes" in logged


def _setpriv(*args: str) -> list[str]:
    if not can_hand_out_cap_lease():
        pytest.skip("needs root with CAP_SETPCAP, CAP_LEASE in the bounding set, setpriv(1)")
    return ["setpriv", *args]


def test_without_cap_lease_on_a_foreign_file_the_probe_says_so_and_answers_no(
    tmp_path: Path, sub: int
) -> None:
    """The daemon neither owns the file nor holds CAP_LEASE: the kernel cannot be
    asked, the settle rules alone decide, and the log says why."""
    command = _setpriv("--bounding-set=-lease", "--inh-caps=-lease")
    target = tmp_path / "sub" / "c.md"
    target.write_bytes(b"x")
    try:
        os.chown(target, 65534, 65534)  # nobody's file
    except OSError:
        pytest.skip("cannot hand a file to another user here")
    script = (
        "import sys\n"
        "from daemon.open_writers import WriterProbe\n"
        "print(WriterProbe().held_for_writing(int(sys.argv[1]), 'c.md'))\n"
    )
    with target.open("ab"):  # held for writing
        done = subprocess.run(
            [*command, sys.executable, "-c", script, str(sub)],
            pass_fds=(sub,),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "writer_probe_unavailable" in done.stdout + done.stderr
    assert "CAP_LEASE" in done.stdout + done.stderr


def test_the_programs_the_daemon_starts_do_not_inherit_cap_lease() -> None:
    """The unit grants CAP_LEASE as an ambient capability. The probe keeps it for the
    daemon and empties the ambient set, so its workers (which parse untrusted
    documents) and their children start with no capability at all."""
    command = _setpriv(
        "--securebits=+noroot,+noroot_locked",  # root's exec no longer grants all
        "--inh-caps=+lease",
        "--ambient-caps=+lease",
    )
    script = (
        "import subprocess\n"
        "from daemon.open_writers import keep_lease_to_ourselves\n"
        "def caps(text):\n"
        "    return {k: int(v, 16) for k, v in (l.split(':\\t') for l in text.splitlines())"
        " if k in ('CapEff', 'CapAmb')}\n"
        "print('before', caps(open('/proc/self/status').read()))\n"
        "keep_lease_to_ourselves()\n"
        "print('after', caps(open('/proc/self/status').read()))\n"
        "child = subprocess.run(['cat', '/proc/self/status'], capture_output=True, text=True)\n"
        "print('child', caps(child.stdout))\n"
    )
    done = subprocess.run(
        [*command, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    lease = 1 << 28  # CAP_LEASE
    assert lines["before"] == str({"CapEff": lease, "CapAmb": lease})
    assert lines["after"] == str({"CapEff": lease, "CapAmb": 0})  # the daemon keeps it
    assert lines["child"] == str({"CapEff": 0, "CapAmb": 0})
