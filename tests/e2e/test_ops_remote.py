"""ops/remote against a real sshd on a loopback port.

The test starts OpenSSH's sshd as the current user with a throw-away host key
and client key, and points ops/remote at it through
SIR_CONVERT_A_LOT_REMOTE_SSH_OPTS. Nothing in ~/.ssh is read or written.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.daemon_harness import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REMOTE = REPO / "ops" / "remote"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class Sshd:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.base, self.port, self.proc = base, port, proc

    @property
    def env(self) -> dict[str, str]:
        key = self.base / "client_key"
        opts = (
            f"-F /dev/null -p {self.port} -i {key} -o IdentitiesOnly=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o LogLevel=ERROR -o ConnectTimeout=10"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIR_CONVERT_A_LOT_")}
        env.update(
            SIR_CONVERT_A_LOT_REMOTE_HOST=f"{getpass.getuser()}@127.0.0.1",
            SIR_CONVERT_A_LOT_REMOTE_SSH_OPTS=opts,
        )
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def log(self) -> str:
        path = self.base / "sshd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server and client are needed (apt-get install openssh-server)")
    base = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True
        )
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"HostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\n"
        f"PidFile {base / 'sshd.pid'}\n"
        "ListenAddress 127.0.0.1\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
    )
    if os.geteuid() == 0:
        # sshd started as root insists on its privilege separation directory,
        # which the package's own service unit would otherwise create.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (base / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config), "-p", str(port)], stdout=log, stderr=log
    )
    server = Sshd(base, port, proc)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited {proc.returncode}: {server.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"sshd did not listen on {port}: {server.log()}")
            time.sleep(0.1)
    yield server
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "canonical checkout"  # a space, to catch quoting mistakes
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "marker.txt").write_text("canonical\n")
    return repo


def remote(
    sshd: Sshd, root: Path | str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**sshd.env, "SIR_CONVERT_A_LOT_REMOTE_ROOT": str(root)}
    return subprocess.run(
        ["bash", str(REMOTE), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_argv_mode_runs_in_the_checkout_with_arguments_intact(sshd: Sshd, checkout: Path) -> None:
    done = remote(sshd, checkout, "--", "printf", "<%s>\\n", "a b", "$HOME", "*", "it's", "")
    assert done.returncode == 0, done.stderr + sshd.log()
    assert done.stdout == "<a b>\n<$HOME>\n<*>\n<it's>\n<>\n"
    where = remote(sshd, checkout, "cat", "marker.txt")
    assert where.returncode == 0 and where.stdout == "canonical\n"


def test_argv_mode_passes_the_exit_status_through(sshd: Sshd, checkout: Path) -> None:
    done = remote(sshd, checkout, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert done.stdout == "out\n" and "err" in done.stderr


def test_shell_mode_runs_the_script_from_stdin(sshd: Sshd, checkout: Path) -> None:
    script = (
        'echo "cwd=$(pwd -P)"\n'
        'echo "stdin=[$(cat)]"\n'  # the rest of the script must not leak into stdin
        "shopt -q login_shell && echo login || echo not-login\n"
        '[ -z "$(alias)" ] && echo no-aliases\n'
        'f() { echo "function $1"; }\n'
        "f works\n"
        "exit 5\n"
        "echo never\n"
    )
    done = remote(sshd, checkout, "--shell", stdin=script)
    assert done.returncode == 5, done.stderr + sshd.log()
    assert done.stdout.splitlines() == [
        f"cwd={checkout.resolve()}",
        "stdin=[]",
        "not-login",
        "no-aliases",
        "function works",
    ]


def test_missing_root_exits_66(sshd: Sshd, tmp_path: Path) -> None:
    done = remote(sshd, tmp_path / "nowhere", "true")
    assert done.returncode == 66
    assert "does not exist" in done.stderr


def test_root_that_is_not_a_checkout_exits_67(sshd: Sshd, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    done = remote(sshd, plain, "--shell", stdin="echo should-not-run\n")
    assert done.returncode == 67
    assert "is not a git checkout" in done.stderr
    assert "should-not-run" not in done.stdout


def test_root_inside_another_checkout_exits_68(sshd: Sshd, checkout: Path) -> None:
    sub = checkout / "sub"
    sub.mkdir()
    done = remote(sshd, sub, "touch", "ran")
    assert done.returncode == 68
    assert "not the top of its checkout" in done.stderr
    assert not (sub / "ran").exists()


def test_a_symlink_to_the_checkout_is_the_checkout(sshd: Sshd, checkout: Path) -> None:
    link = checkout.parent / "link"
    link.symlink_to(checkout)
    done = remote(sshd, link, "cat", "marker.txt")
    assert done.returncode == 0 and done.stdout == "canonical\n"


def test_unreachable_host_is_sshs_255(sshd: Sshd, checkout: Path) -> None:
    env = {
        **sshd.env,
        "SIR_CONVERT_A_LOT_REMOTE_ROOT": str(checkout),
        "SIR_CONVERT_A_LOT_REMOTE_SSH_OPTS": f"-F /dev/null -p {free_port()} -o ConnectTimeout=5",
    }
    done = subprocess.run(
        ["bash", str(REMOTE), "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 255
