"""Uploads through a real Samba server sharing the inbox: what smbd's writes look like
to the daemon (docs/settling.md). smbd runs unprivileged-capable on a loopback high
port with a private configuration, state and guest account under the test's tmp."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.writers_support import (
    LONG,
    assert_converted_once,
    big_markdown,
    outputs_for,
    sha,
    sha_bytes,
    small_markdown,
    started_daemon,
    wait_idle,
)
from tests.fixtures.daemon import Daemon, free_port


class Share:
    """A running smbd sharing one folder as ``//127.0.0.1/inbox``, and a client for it."""

    def __init__(self, base: Path, folder: Path) -> None:
        self.base = base
        self.port = free_port()
        self.config = base / "smb.conf"
        self.log = base / "smbd.out"
        self.proc: subprocess.Popen[bytes] | None = None
        user = pwd.getpwuid(os.getuid()).pw_name
        dirs = {}
        for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "logs"):
            dirs[name] = base / name
            dirs[name].mkdir(parents=True)
        self.config.write_text(
            "[global]\n"
            "  server role = standalone server\n"
            f"  smb ports = {self.port}\n"
            "  bind interfaces only = yes\n"
            "  interfaces = lo\n"
            f"  private dir = {dirs['private']}\n"
            f"  lock directory = {dirs['lock']}\n"
            f"  state directory = {dirs['state']}\n"
            f"  cache directory = {dirs['cache']}\n"
            f"  pid directory = {dirs['pid']}\n"
            f"  ncalrpc dir = {dirs['ncalrpc']}\n"
            f"  log file = {dirs['logs']}/smbd.log\n"
            f"  passdb backend = tdbsam:{dirs['private']}/passdb.tdb\n"
            "  map to guest = Bad User\n"
            f"  guest account = {user}\n"
            "  load printers = no\n"
            "  printing = bsd\n"
            "  printcap name = /dev/null\n"
            "  disable spoolss = yes\n"
            "  server min protocol = SMB2\n"
            "  client min protocol = SMB2\n"
            "[inbox]\n"
            f"  path = {folder}\n"
            "  read only = no\n"
            "  guest ok = yes\n"
            f"  force user = {user}\n"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "smbd",
                "--foreground",
                "--no-process-group",
                f"--configfile={self.config}",
                "--debug-stdout",
                "--debuglevel=1",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its children share our new group: stopped together
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip(f"smbd cannot run here (exit {self.proc.returncode}): {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.skip(f"smbd did not listen on 127.0.0.1:{self.port} in 30 s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def client(self, commands: str) -> str:
        """Run smbclient commands as the guest; fails the test on any NT_STATUS error."""
        done = subprocess.run(
            [
                "smbclient",
                "//127.0.0.1/inbox",
                "-p",
                str(self.port),
                "-N",
                "-s",
                str(self.config),
                "-c",
                commands,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "NT_STATUS" not in out, f"smbclient {commands!r}: {out}"
        return out


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path
) -> Iterator[tuple[Daemon, Share]]:
    """One daemon and one smbd sharing its inbox, for the whole module."""
    for tool, package in (("smbd", "samba"), ("smbclient", "smbclient")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt package {package})")
    base = tmp_path_factory.mktemp("samba")
    for daemon in started_daemon(base, tiny_models_dir):
        share = Share(base / "samba", daemon.inbox)
        share.start()
        try:
            yield daemon, share
        finally:
            share.stop()


def test_uploads_over_smb_convert_once(served: tuple[Daemon, Share]) -> None:
    daemon, share = served
    src = daemon.base / "src"
    src.mkdir()
    big = src / "big.md"
    big.write_bytes(big_markdown((48 if LONG else 12) * 1024 * 1024, "big over smb"))
    many = [src / f"many{i}.md" for i in range(8 if LONG else 5)]
    for i, path in enumerate(many):
        path.write_bytes(big_markdown(512 * 1024, f"concurrent upload {i}"))
    (src / "renamed.md").write_bytes(small_markdown("uploaded as .tmp, then renamed"))
    (src / "in-new-folder.md").write_bytes(small_markdown("folder made over smb"))

    # A large file: smbd creates it, writes it in many pwrite()s, closes it.
    share.client(f"mkdir to-docx\\smb; put {big} to-docx\\smb\\big.md")
    # Several clients at once.
    with ThreadPoolExecutor(len(many)) as pool:
        list(pool.map(lambda p: share.client(f"put {p} to-docx\\smb\\{p.name}"), many))
    # Upload under an ignored name, then rename: the rename makes it complete.
    share.client(f"put {src / 'renamed.md'} to-docx\\smb\\renamed.tmp")
    share.client("rename to-docx\\smb\\renamed.tmp to-docx\\smb\\renamed.md")
    # A folder created over SMB and filled at once (Explorer copying a folder).
    share.client(
        f"mkdir to-docx\\smb\\fresh; put {src / 'in-new-folder.md'} to-docx\\smb\\fresh\\a.md"
    )
    wait_idle(daemon)
    assert_converted_once(daemon, "to-docx/smb/big.docx", sha(big))
    for path in many:
        assert_converted_once(daemon, f"to-docx/smb/{path.stem}.docx", sha(path))
    assert_converted_once(daemon, "to-docx/smb/renamed.docx", sha(src / "renamed.md"))
    assert_converted_once(daemon, "to-docx/smb/fresh/a.docx", sha(src / "in-new-folder.md"))


def test_overwriting_a_converted_name_over_smb_keeps_both(served: tuple[Daemon, Share]) -> None:
    """The second upload of a name already converted (and archived) is a new file: it
    gets the collision rule, ``name~2``, with a warning."""
    daemon, share = served
    first, second = daemon.base / "first.md", daemon.base / "second.md"
    first.write_bytes(small_markdown("first upload"))
    second.write_bytes(small_markdown("second upload, same name"))
    share.client(f"put {first} to-docx\\same.md")
    assert_converted_once(daemon, "to-docx/same.docx", sha(first))
    share.client(f"put {second} to-docx\\same.md")
    again = daemon.sidecar("to-docx/same~2.docx")
    wait_idle(daemon)
    assert outputs_for(daemon, "to-docx/same.docx") == ["same.docx", "same~2.docx"]
    assert again["input"]["sha256"] == sha_bytes(second.read_bytes())
    assert "output_name_collision" in again["warnings"]
