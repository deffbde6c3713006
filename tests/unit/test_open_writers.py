"""The open-writer probe asks the real kernel (a read lease) whether any process
holds a file open for writing; daemon/open_writers.py."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.open_writers import WriterProbe


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "sub").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


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
    tmp_path: Path, inbox: int
) -> None:
    probe = WriterProbe()
    target = tmp_path / "sub" / "a.md"
    proc = _writer_holding(target)
    try:
        assert probe.held_for_writing(inbox, ["sub", "a.md"]) is True
        assert probe.held_for_writing(inbox, ["sub", "a.md"]) is True  # the probe let go
    finally:
        proc.communicate("")
    assert probe.held_for_writing(inbox, ["sub", "a.md"]) is False
    assert target.read_bytes() == b"x"  # nothing was changed or read


def test_readers_do_not_count_and_the_probe_does_not_block_a_new_writer(
    tmp_path: Path, inbox: int
) -> None:
    probe = WriterProbe()
    target = tmp_path / "sub" / "b.md"
    target.write_bytes(b"done")
    with target.open("rb"):
        assert probe.held_for_writing(inbox, ["sub", "b.md"]) is False
    assert probe.held_for_writing(inbox, ["sub", "b.md"]) is False
    with target.open("ab") as fh:  # the lease was given back: this open does not wait
        fh.write(b"!")
        assert probe.held_for_writing(inbox, ["sub", "b.md"]) is True
    assert target.read_bytes() == b"done!"


def test_a_write_lease_held_elsewhere_counts_as_held(tmp_path: Path, inbox: int) -> None:
    """Samba with kernel oplocks holds a write lease for a client with the file open:
    the probe's non-blocking open is refused, and that means held."""
    probe = WriterProbe()  # ignores SIGIO, which the lease break sends the holder
    target = tmp_path / "sub" / "leased.md"
    target.write_bytes(b"x")
    holder = os.open(target, os.O_RDONLY)
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        assert probe.held_for_writing(inbox, ["sub", "leased.md"]) is True
    finally:
        os.close(holder)
    assert probe.held_for_writing(inbox, ["sub", "leased.md"]) is False


def test_links_folders_fifos_and_missing_entries_are_not_held(tmp_path: Path, inbox: int) -> None:
    probe = WriterProbe()
    outside = tmp_path / "outside.md"
    with outside.open("wb"):
        (tmp_path / "sub" / "link.md").symlink_to(outside)
        (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)
        (tmp_path / "outside-copy.md").write_bytes(b"x")
        os.mkfifo(tmp_path / "sub" / "pipe.md")
        # A symlink to a file held open is never followed, at the end or on the way.
        assert probe.held_for_writing(inbox, ["sub", "link.md"]) is False
        assert probe.held_for_writing(inbox, ["linked", "link.md"]) is False
        assert probe.held_for_writing(inbox, ["sub", "pipe.md"]) is False  # not blocked
        assert probe.held_for_writing(inbox, ["sub"]) is False
        assert probe.held_for_writing(inbox, ["sub", "gone.md"]) is False
        assert probe.held_for_writing(inbox, ["..", "outside.md"]) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the file to another user")
def test_without_cap_lease_on_a_foreign_file_the_probe_says_so_and_answers_no(
    tmp_path: Path, inbox: int
) -> None:
    """The daemon neither owns the file nor holds CAP_LEASE: the kernel cannot be
    asked, the settle rules alone decide, and the log says why."""
    target = tmp_path / "sub" / "c.md"
    target.write_bytes(b"x")
    os.chown(target, 65534, 65534)  # nobody's file
    script = (
        "import sys\n"
        "from daemon.open_writers import WriterProbe\n"
        "print(WriterProbe().held_for_writing(int(sys.argv[1]), ['sub', 'c.md']))\n"
    )
    with target.open("ab"):  # held for writing
        done = subprocess.run(
            ["setpriv", "--bounding-set=-lease", sys.executable, "-c", script, str(inbox)],
            pass_fds=(inbox,),
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "writer_probe_unavailable" in done.stdout + done.stderr
    assert "CAP_LEASE" in done.stdout + done.stderr
