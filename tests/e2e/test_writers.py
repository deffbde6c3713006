"""Every kind of writer, against the real daemon: each file is converted exactly once,
from the bytes its writer finally wrote, never half-read (docs/settling.md).

One daemon (inotify, settle window 0.5 s) serves most tests, each in its own inbox
folder; the polling observer and the start with files already waiting get their own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.writers_support import (
    LONG,
    assert_converted_once,
    big_markdown,
    outputs_for,
    sha,
    sha_bytes,
    sidecars_in,
    slow_write,
    small_markdown,
    started_daemon,
    wait_idle,
)
from tests.fixtures.daemon import Daemon

SHORT_PAUSE = 0.2  # far above inotify's latency, below the settle window
LONG_PAUSE = 1.5  # above the settle window
BIG = (24 if LONG else 3) * 1024 * 1024


@pytest.fixture(scope="module")
def writer_daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path
) -> Iterator[Daemon]:
    yield from started_daemon(tmp_path_factory.mktemp("writers"), tiny_models_dir)


def _folder(daemon: Daemon, name: str) -> Path:
    folder = daemon.inbox / "to-docx" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _in_threads(jobs: dict[str, Callable[[], bytes]]) -> dict[str, bytes]:
    """Run writers at once; returns what each wrote."""
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def run(name: str, job: Callable[[], bytes]) -> None:
        try:
            results[name] = job()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _chunks(tag: str, count: int) -> list[bytes]:
    return [f"# {tag}\n\n".encode()] + [
        f"- {tag} line {i} {'x' * 60}\n".encode() for i in range(1, count)
    ]


def test_slow_writers_held_open_are_never_read_half_written(writer_daemon: Daemon) -> None:
    d = writer_daemon
    folder = _folder(d, "slow")
    held_short = _chunks("held-short", 12)
    held_long = _chunks("held-long", 5)
    append_short = _chunks("append-short", 8)
    written = _in_threads(
        {
            # One descriptor, pauses shorter than the window: no close, no quiet window.
            "held-short": lambda: slow_write(
                folder / "held-short.md", held_short, [SHORT_PAUSE] * 12, "held"
            ),
            # One descriptor, pauses longer than the window: quiet and stable between
            # chunks, but never closed until the end, so it must wait.
            "held-long": lambda: slow_write(
                folder / "held-long.md", held_long, [LONG_PAUSE] * 4 + [0.0], "held"
            ),
            # Reopened in append mode per chunk, pauses shorter than the window: every
            # close is followed by a new write before the window ends.
            "append-short": lambda: slow_write(
                folder / "append-short.md", append_short, [SHORT_PAUSE] * 8, "append"
            ),
        }
    )
    wait_idle(d)
    for name, data in written.items():
        car = assert_converted_once(d, f"to-docx/slow/{name}.docx", sha_bytes(data))
        assert car["input"]["size_bytes"] == len(data)


def test_append_per_chunk_with_pauses_longer_than_the_window_is_split(
    writer_daemon: Daemon,
) -> None:
    """Documented trade-off (docs/settling.md): a writer that closes the file and stays
    away longer than settle_seconds looks finished. Each piece is converted on its own
    (name, name~2, …); no byte is lost or converted twice."""
    d = writer_daemon
    folder = _folder(d, "append-long")
    chunks = _chunks("append-long", 4)
    data = slow_write(folder / "piece.md", chunks, [LONG_PAUSE] * 4, "append")
    wait_idle(d)
    outputs = outputs_for(d, "to-docx/append-long/piece.docx")
    assert len(outputs) >= 2, "pauses longer than the window should split this writer"

    def number(path: Path) -> int:
        found = re.search(r"~(\d+)\.", path.name)
        return int(found.group(1)) if found else 1

    archived = sorted((d.archive / "to-docx" / "append-long").iterdir(), key=number)
    converted = sorted(
        d.sidecar(f"to-docx/append-long/{name}")["input"]["sha256"] for name in outputs
    )
    assert converted == sorted(sha(p) for p in archived), "each piece converted as archived"
    pieces = b"".join(p.read_bytes() for p in archived)
    assert pieces == data


def test_files_written_into_a_new_folder_before_it_is_watched(writer_daemon: Daemon) -> None:
    """mkdir + write + close within microseconds: the close happens before the new
    folder's watch exists (found defect: such files waited for a close forever)."""
    d = writer_daemon
    base = _folder(d, "fresh")
    count = 120 if LONG else 40
    script = (
        "import os, sys\n"
        "for i in range(int(sys.argv[2])):\n"
        "    folder = os.path.join(sys.argv[1], f'f{i:03d}')\n"
        "    os.mkdir(folder)\n"
        "    with open(os.path.join(folder, 'a.md'), 'wb') as fh:\n"
        "        fh.write(f'# fresh {i}\\n'.encode())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(base), str(count)], check=True)
    # cp -r and tar create folders and fill them at once, the same way.
    tree = d.base / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    for rel in ("r.md", "sub/s.md", "sub/deeper/t.md"):
        (tree / rel).write_bytes(small_markdown(rel))
    subprocess.run(["cp", "-r", str(tree), str(base / "copied")], check=True)
    subprocess.run(["tar", "-C", str(d.base), "-cf", str(d.base / "tree.tar"), "tree"], check=True)
    (base / "untarred").mkdir()
    subprocess.run(
        ["tar", "-C", str(base / "untarred"), "-xf", str(d.base / "tree.tar")], check=True
    )
    wait_idle(d)
    for i in range(count):
        assert_converted_once(
            d, f"to-docx/fresh/f{i:03d}/a.docx", sha_bytes(f"# fresh {i}\n".encode())
        )
    for rel in ("r", "sub/s", "sub/deeper/t"):
        expected = sha(tree / f"{rel}.md")
        assert_converted_once(d, f"to-docx/fresh/copied/{rel}.docx", expected)
        assert_converted_once(d, f"to-docx/fresh/untarred/tree/{rel}.docx", expected)


def test_a_writer_holding_open_a_file_made_before_its_folder_was_watched(
    writer_daemon: Daemon,
) -> None:
    """mkdir + open + first write within microseconds, then pauses longer than the
    window with the file held open: no write and no close were seen, and it is
    quiet and stable. Only the kernel knows a writer still holds it (the open-writer
    probe, daemon/open_writers.py); found by CI, where it was read half-written.
    (When the new folder's watch wins the race, a write is seen and the close is
    waited for: either way, one conversion of the whole file.)"""
    d = writer_daemon
    base = _folder(d, "held-new")
    script = (
        "import os, sys, time\n"
        "folders = [os.path.join(sys.argv[1], f'n{i}') for i in range(3)]\n"
        "handles = []\n"
        "for folder in folders:\n"
        "    os.mkdir(folder)\n"
        "    fh = open(os.path.join(folder, 'doc.md'), 'wb')\n"
        "    fh.write(b'# held in a new folder\\n\\n'); fh.flush()\n"
        "    handles.append(fh)\n"
        "for line in range(3):\n"
        "    time.sleep(float(sys.argv[2]))\n"
        "    for fh in handles:\n"
        "        fh.write(f'- line {line} {\"y\" * 50}\\n'.encode()); fh.flush()\n"
        "for fh in handles:\n"
        "    fh.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(base), str(LONG_PAUSE)], check=True)
    expected = b"# held in a new folder\n\n" + b"".join(
        f"- line {line} {'y' * 50}\n".encode() for line in range(3)
    )
    wait_idle(d)
    for i in range(3):
        assert_converted_once(d, f"to-docx/held-new/n{i}/doc.docx", sha_bytes(expected))


def test_cp_and_mv_on_the_same_filesystem(writer_daemon: Daemon) -> None:
    d = writer_daemon
    folder = _folder(d, "cpmv")
    src = d.base / "src-cpmv"
    src.mkdir()
    (src / "big.md").write_bytes(big_markdown(BIG, "big by cp"))
    (src / "small.md").write_bytes(small_markdown("small by cp"))
    (src / "moved.md").write_bytes(small_markdown("moved"))
    expected = {name: sha(src / name) for name in ("big.md", "small.md", "moved.md")}
    subprocess.run(["cp", str(src / "big.md"), str(src / "small.md"), str(folder)], check=True)
    subprocess.run(["mv", str(src / "moved.md"), str(folder)], check=True)  # a rename
    wait_idle(d)
    for name, digest in expected.items():
        assert_converted_once(d, f"to-docx/cpmv/{Path(name).stem}.docx", digest)


def _other_filesystem(inbox: Path) -> Path | None:
    """A writable folder on another filesystem (tmpfs), or None."""
    for candidate in (Path("/dev/shm"), Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"))):
        if (
            candidate.is_dir()
            and os.access(candidate, os.W_OK)
            and os.stat(candidate).st_dev != os.stat(inbox).st_dev
        ):
            return candidate
    return None


def test_mv_across_filesystems_is_a_copy_then_unlink(writer_daemon: Daemon) -> None:
    """mv from a tmpfs cannot rename: it creates the file in the inbox, writes it,
    closes it, then unlinks the source. The daemon sees an in-place write."""
    d = writer_daemon
    other = _other_filesystem(d.inbox)
    if other is None:
        pytest.skip("no writable folder on another filesystem (/dev/shm) to move from")
    staging = other / f"sir-writers-{os.getpid()}"
    staging.mkdir()
    try:
        (staging / "xbig.md").write_bytes(big_markdown(BIG, "moved across filesystems"))
        (staging / "xsmall.md").write_bytes(small_markdown("moved across filesystems"))
        expected = {p.stem: sha(p) for p in staging.iterdir()}
        folder = _folder(d, "xfs")
        subprocess.run(
            ["mv", str(staging / "xbig.md"), str(staging / "xsmall.md"), str(folder)], check=True
        )
        wait_idle(d)
        for stem, digest in expected.items():
            assert_converted_once(d, f"to-docx/xfs/{stem}.docx", digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rsync(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["rsync", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _interrupt_when_written(proc: subprocess.Popen[bytes], folder: Path, pattern: str) -> None:
    """Wait until the file rsync writes (``pattern`` in ``folder``) holds some data, then
    interrupt rsync (SIGINT, as Ctrl-C or a dropped session would)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.is_file() and p.stat().st_size >= 256 * 1024 for p in folder.glob(pattern)):
            break
        assert proc.poll() is None, "rsync finished before it could be interrupted"
        time.sleep(0.05)
    else:
        raise AssertionError(f"rsync never wrote {folder / pattern}")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) != 0


def test_rsync_default_inplace_trees_and_interrupted_transfers_resumed(
    writer_daemon: Daemon,
) -> None:
    d = writer_daemon
    folder = _folder(d, "rsync")
    src = d.base / "src-rsync"
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "plain.md").write_bytes(big_markdown(BIG, "rsync default"))
    (src / "inplace.md").write_bytes(big_markdown(BIG, "rsync inplace"))
    (src / "again.md").write_bytes(big_markdown(2 * 1024 * 1024, "rsync default resumed"))
    (src / "resumed.md").write_bytes(big_markdown(2 * 1024 * 1024, "rsync partial-dir resumed"))
    for rel in ("tree/t.md", "tree/sub/s.md"):
        (src / rel).write_bytes(small_markdown(f"rsync -r {rel}"))
    expected = {str(p.relative_to(src))[:-3]: sha(p) for p in src.rglob("*.md")}

    # Default: a hidden temp file (ignored), then one rename onto the final name.
    assert _rsync(str(src / "plain.md"), f"{folder}/").wait() == 0
    # --inplace: written under the final name, closed, then its times set.
    assert _rsync("--inplace", str(src / "inplace.md"), f"{folder}/").wait() == 0
    # -r into new folders: renames into folders created a moment before.
    assert _rsync("-r", f"{src / 'tree'}", f"{folder}/").wait() == 0

    # Interrupted: the default discards its temp file; --partial-dir parks the
    # partial file in a hidden folder (ignored). Neither is converted.
    again = _rsync("--bwlimit=300", str(src / "again.md"), f"{folder}/")
    resumed = _rsync(
        "--partial-dir=.rsync-partial", "--bwlimit=300", str(src / "resumed.md"), f"{folder}/"
    )
    _interrupt_when_written(again, folder, ".again.md.*")
    _interrupt_when_written(resumed, folder, ".resumed.md.*")
    parked = folder / ".rsync-partial" / "resumed.md"
    assert parked.is_file() and parked.stat().st_size < (src / "resumed.md").stat().st_size
    wait_idle(d)
    assert outputs_for(d, "to-docx/rsync/again.docx") == []
    assert outputs_for(d, "to-docx/rsync/resumed.docx") == [], "a partial file was converted"
    # Later, the same commands finish the job (--partial-dir resumes from the parked part).
    assert _rsync(str(src / "again.md"), f"{folder}/").wait() == 0
    assert _rsync("--partial-dir=.rsync-partial", str(src / "resumed.md"), f"{folder}/").wait() == 0

    wait_idle(d)
    for stem, digest in expected.items():
        assert_converted_once(d, f"to-docx/rsync/{stem}.docx", digest)


def test_rsync_interrupted_with_plain_partial_or_inplace_publishes_the_partial_file(
    writer_daemon: Daemon,
) -> None:
    """Documented limitation (docs/settling.md): interrupted, plain ``--partial`` renames
    the partial file onto the final name (a rename means complete) and ``--inplace``
    leaves it there, closed; either is converted as it is. The resumed transfer then
    arrives as a new file and takes the collision rule, ``name~2``."""
    d = writer_daemon
    folder = _folder(d, "rsync-partial")
    src = d.base / "src-rsync-partial"
    src.mkdir()
    full = {name: big_markdown(2 * 1024 * 1024, f"rsync {name}") for name in ("p", "i")}
    for name, data in full.items():
        (src / f"{name}.md").write_bytes(data)
    partial = _rsync("--partial", "--bwlimit=300", str(src / "p.md"), f"{folder}/")
    inplace = _rsync("--inplace", "--bwlimit=300", str(src / "i.md"), f"{folder}/")
    _interrupt_when_written(partial, folder, ".p.md.*")
    _interrupt_when_written(inplace, folder, "i.md")
    for name, data in full.items():
        first = d.sidecar(f"to-docx/rsync-partial/{name}.docx")
        size = first["input"]["size_bytes"]
        assert 0 < size < len(data)
        assert first["input"]["sha256"] == sha_bytes(data[:size])
    assert _rsync("--partial", str(src / "p.md"), f"{folder}/").wait() == 0
    assert _rsync("--inplace", str(src / "i.md"), f"{folder}/").wait() == 0
    wait_idle(d)
    for name, data in full.items():
        published = outputs_for(d, f"to-docx/rsync-partial/{name}.docx")
        assert published == [f"{name}.docx", f"{name}~2.docx"]
        car = d.sidecar(f"to-docx/rsync-partial/{name}~2.docx")
        assert car["input"]["sha256"] == sha_bytes(data)


def test_a_burst_of_small_files_moved_in_at_once(writer_daemon: Daemon) -> None:
    d = writer_daemon
    count = 2000 if LONG else 300
    staging = d.base / "burst-staging"
    staging.mkdir()
    expected = {}
    for i in range(count):
        data = small_markdown(f"burst {i:04d}")
        (staging / f"b{i:04d}.md").write_bytes(data)
        expected[f"b{i:04d}"] = sha_bytes(data)
    folder = _folder(d, "burst")
    started = time.monotonic()
    names = sorted(str(p) for p in staging.iterdir())
    subprocess.run(["mv", "-t", str(folder), *names], check=True)
    deadline = started + 60 + count
    while time.monotonic() < deadline:
        if len(list((d.outbox / "to-docx" / "burst").glob("*.meta.json"))) >= count:
            break
        time.sleep(0.5)
    print(f"burst: {count} files converted in {time.monotonic() - started:.1f} s")
    wait_idle(d)
    cars = sidecars_in(d, "to-docx/burst")
    assert sorted(c["input"]["name"] for c in cars) == sorted(f"{n}.md" for n in expected)
    for car in cars:
        assert car["status"] == "succeeded"
        assert car["input"]["sha256"] == expected[car["input"]["name"][:-3]]
    published = sorted(p.name for p in (d.outbox / "to-docx" / "burst").glob("*.docx"))
    assert published == sorted(f"{n}.docx" for n in expected), "no loss, no ~2 duplicate"
    assert not list(d.failed.rglob("*.error.json"))


def test_files_dropped_while_down_then_the_polling_observer(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    """Files that arrived while the daemon was down are found by the start-up scan and
    converted once, also one whose writer still holds it open. The same daemon then
    watches by polling: no close events, so the quiet window, a stable size and the
    open-writer probe protect a slow writer."""
    d = Daemon(
        tmp_path,
        models_dir=tiny_models_dir,
        extra_config='observer = "polling"\npolling_interval_seconds = 0.5\n',
    )
    try:
        _drop_while_down_then_poll(d)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


def _wait_for_log(d: Daemon, *words: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = d.log.read_text(errors="replace").splitlines()
        if any(all(w in line for w in words) for line in lines):
            return
        time.sleep(0.1)
    raise AssertionError(f"no log line with {words} in {timeout} s\n{d.tail()}")


def _drop_while_down_then_poll(d: Daemon) -> None:
    d.root.mkdir()
    down = d.inbox / "to-docx" / "down"
    (down / "nested").mkdir(parents=True)
    expected: dict[str, str] = {}
    for i in range(10):
        rel = f"down/d{i}.md" if i % 2 else f"down/nested/d{i}.md"
        data = small_markdown(f"while down {i}")
        (d.inbox / "to-docx" / rel).write_bytes(data)
        expected[rel[:-3]] = sha_bytes(data)
    (d.inbox / "to-docx" / "down" / "big.md").write_bytes(big_markdown(BIG, "down"))
    expected["down/big"] = sha(d.inbox / "to-docx" / "down" / "big.md")
    # A writer that holds its file open across the start: found by the start-up
    # scan (no event), quiet and stable for several windows, still open.
    still_open = _chunks("open across the start", 6)
    opened, release = threading.Event(), threading.Event()

    def write_across_start() -> bytes:
        with (down / "across.md").open("wb") as fh:
            fh.write(still_open[0])
            fh.flush()
            opened.set()
            release.wait(120)
            fh.write(b"".join(still_open[1:]))
        return b"".join(still_open)

    writer = threading.Thread(target=write_across_start)
    writer.start()
    try:
        assert opened.wait(10), "the writer did not start"
        d.start()
        # The start-up scan found it (no event), it went quiet and stable, and the
        # claim found it open: it waits. Only then does the writer finish.
        _wait_for_log(d, "input_held_open", "across.md")
    finally:
        release.set()
        writer.join()
    expected["down/across"] = sha_bytes(b"".join(still_open))
    wait_idle(d)
    for rel, digest in expected.items():
        assert_converted_once(d, f"to-docx/{rel}.docx", digest)

    folder = _folder(d, "polled")
    src = d.base / "src-polled"
    src.mkdir()
    (src / "copied.md").write_bytes(big_markdown(BIG, "polled cp"))
    subprocess.run(["cp", str(src / "copied.md"), str(folder)], check=True)
    held = _chunks("polled-held", 12)
    held_long = _chunks("polled-held-long", 4)
    appended = _chunks("polled-append", 8)
    written = _in_threads(
        {
            "held": lambda: slow_write(folder / "held.md", held, [SHORT_PAUSE] * 12, "held"),
            # Polling sees no closes: only the open-writer probe keeps this one waiting.
            "held-long": lambda: slow_write(
                folder / "held-long.md", held_long, [LONG_PAUSE] * 3 + [0.0], "held"
            ),
            "append": lambda: slow_write(
                folder / "append.md", appended, [SHORT_PAUSE] * 8, "append"
            ),
        }
    )
    wait_idle(d)
    assert_converted_once(d, "to-docx/polled/copied.docx", sha(src / "copied.md"))
    for name, data in written.items():
        assert_converted_once(d, f"to-docx/polled/{name}.docx", sha_bytes(data))
    assert d.stop() == 0
