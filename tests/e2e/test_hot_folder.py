"""The real daemon, real writers (cp, mv, rsync), real md→docx through pandoc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docx

from tests.fixtures.daemon import Daemon, sha

MD = "# Title\n\nSome *text* here.\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


def write_source(base: Path, name: str, text: str = MD) -> Path:
    path = base / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wait_until_empty(folder: Path, timeout: float = 10.0) -> list[Path]:
    """Archiving and clean-up follow the sidecar by a moment: give them that moment."""
    deadline = time.monotonic() + timeout
    while (left := list(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def docx_text(path: Path) -> str:
    return "\n".join(p.text for p in docx.Document(str(path)).paragraphs)


def test_cp_mv_and_rsync_drops_convert_once_with_full_sidecars(daemon: Daemon) -> None:
    daemon.start()
    base = daemon.base
    a = write_source(base, "by-cp.md")
    b = write_source(base, "by-mv.md", MD.replace("Title", "Moved"))
    c = write_source(base, "by-rsync.md", MD.replace("Title", "Synced"))
    subprocess.run(["cp", str(a), str(daemon.inbox / "to-docx" / "by-cp.md")], check=True)
    subprocess.run(["mv", str(b), str(daemon.inbox / "to-docx" / "by-mv.md")], check=True)
    (daemon.inbox / "to-docx" / "course-1").mkdir()
    subprocess.run(["rsync", str(c), str(daemon.inbox / "to-docx" / "course-1/")], check=True)

    car = daemon.sidecar("to-docx/by-cp.docx")
    assert car["status"] == "succeeded"
    assert car["profile"] == "eval"
    assert car["route"] == {"source": "md", "target": "docx"}
    assert car["input"]["name"] == "by-cp.md"
    assert car["input"]["relative_path"] == "to-docx/by-cp.md"
    assert car["input"]["sha256"] == sha(a)
    assert car["input"]["size_bytes"] == a.stat().st_size
    out = daemon.outbox / "to-docx" / "by-cp.docx"
    main = {
        "path": "to-docx/by-cp.docx",
        "path_b64": None,  # only set for names that are not UTF-8
        "sha256": sha(out),
        "size_bytes": out.stat().st_size,
    }
    assert car["output"] == {
        **main,
        "artifacts": [{"kind": "main", **main}],  # the one file of this job
        "pages": None,
        "pdf_variant": None,
        "pdf_variant_validated": None,
    }
    assert car["converter"]["name"] == "pandoc" and car["converter"]["versions"]["pandoc"]
    assert car["acceleration"]["device"] == "cpu"
    assert car["service"]["revision"]
    assert car["timings"]["convert_seconds"] > 0
    assert "Title" in docx_text(out)

    moved = daemon.sidecar("to-docx/by-mv.docx")
    assert "Moved" in docx_text(daemon.outbox / "to-docx/by-mv.docx")
    assert moved["input"]["sha256"] == sha(daemon.archive / "to-docx/by-mv.md")
    synced = daemon.sidecar("to-docx/course-1/by-rsync.docx")
    assert synced["input"]["sha256"] == sha(c)
    assert "Synced" in docx_text(daemon.outbox / "to-docx/course-1/by-rsync.docx")

    # Originals are archived under the mirrored path; nothing is left behind.
    assert sha(daemon.archive / "to-docx/by-cp.md") == sha(a)
    assert sorted(p.name for p in (daemon.inbox / "to-docx").rglob("*") if p.is_file()) == []
    assert wait_until_empty(daemon.root / ".state" / "jobs") == []
    assert daemon.stop() == 0


def test_missing_route_and_non_regular_entries_fail_clearly(daemon: Daemon) -> None:
    daemon.start()
    secret = daemon.base / "secret.txt"
    secret.write_text("do not read")
    before = secret.stat()
    os.symlink(secret, daemon.inbox / "to-md" / "link.md")
    os.mkfifo(daemon.inbox / "to-docx" / "pipe.md")
    (daemon.inbox / "thing.pdf").mkdir()
    write_source(daemon.base, "x.docx").rename(daemon.inbox / "to-pdf" / "x.docx")
    write_source(daemon.base, "y.xyz").rename(daemon.inbox / "y.xyz")

    assert daemon.error("to-md/link.md")["error"]["code"] == "not_regular_file"
    assert daemon.error("to-docx/pipe.md")["error"]["code"] == "not_regular_file"
    assert daemon.error("thing.pdf")["error"]["code"] == "not_regular_file"
    err = daemon.error("to-pdf/x.docx")
    assert err["status"] == "failed"
    assert err["error"]["code"] == "unsupported_route"
    assert err["route"] is None or err["route"]["target"] == "pdf"
    assert daemon.error("y.xyz")["error"]["code"] == "unsupported_route"
    # The symlink itself went to failed/, its target was never touched.
    assert (daemon.failed / "to-md" / "link.md").is_symlink()
    assert secret.read_text() == "do not read" and secret.stat().st_mtime == before.st_mtime
    status, body = daemon.get("/readyz")
    assert status == 200 and body["ready"] is True


def test_slow_writer_is_never_read_half_written(daemon: Daemon) -> None:
    daemon.start()
    target = daemon.inbox / "to-docx" / "slow.md"
    lines = [f"- item {i} {'x' * 50}\n" for i in range(40)]
    with target.open("w") as fh:
        fh.write("# Slow\n\n")
        for i, line in enumerate(lines):
            fh.write(line)
            fh.flush()
            # pauses longer than inotify's latency and, twice, longer than the window
            time.sleep(0.9 if i in (10, 25) else 0.12)
    full = sha(target)
    car = daemon.sidecar("to-docx/slow.docx")
    assert car["input"]["sha256"] == full
    text = docx_text(daemon.outbox / "to-docx" / "slow.docx")
    assert "item 39" in text
    assert not (daemon.outbox / "to-docx" / "slow~2.docx").exists()


def test_collisions_keep_both_results(daemon: Daemon) -> None:
    daemon.start()
    write_source(daemon.base, "same.md", "# First\n").rename(daemon.inbox / "to-docx/same.md")
    daemon.sidecar("to-docx/same.docx")
    write_source(daemon.base, "same.md", "# Second\n").rename(daemon.inbox / "to-docx/same.md")
    second = daemon.sidecar("to-docx/same~2.docx")
    assert "output_name_collision" in second["warnings"]
    assert "First" in docx_text(daemon.outbox / "to-docx/same.docx")
    assert "Second" in docx_text(daemon.outbox / "to-docx/same~2.docx")
    assert (daemon.archive / "to-docx/same.md").exists()
    assert (daemon.archive / "to-docx/same~2.md").exists()


def test_sigkill_mid_conversion_then_restart_accounts_for_every_input(daemon: Daemon) -> None:
    daemon.start()
    names = [f"doc-{i:03d}.md" for i in range(40)]
    staging = daemon.base / "staging"
    staging.mkdir()
    for name in names:
        (staging / name).write_text(MD.replace("Title", name))
    originals = {name: sha(staging / name) for name in names}
    for name in names:
        shutil.copy(staging / name, daemon.root / ".state" / "tmp" / name)
        os.replace(daemon.root / ".state" / "tmp" / name, daemon.inbox / "to-docx" / name)
    daemon.wait_for(daemon.outbox / "to-docx" / "doc-000.docx.meta.json", 60)
    assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        done = list((daemon.outbox / "to-docx").glob("*.meta.json"))
        failed = list(daemon.failed.rglob("*.error.json"))
        if len(done) + len(failed) >= len(names):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    sidecars = [json.loads(p.read_text()) for p in (daemon.outbox / "to-docx").glob("*.meta.json")]
    seen = sorted(s["input"]["name"] for s in sidecars)
    assert seen == sorted(names), "every input exactly once"
    for s in sidecars:
        assert s["input"]["sha256"] == originals[s["input"]["name"]]
        out = daemon.outbox / s["output"]["path"]
        assert sha(out) == s["output"]["sha256"]
    outputs = [p for p in (daemon.outbox / "to-docx").iterdir() if not p.name.endswith(".json")]
    assert len(outputs) == len(names), "no output without sidecar, no duplicates"
    assert wait_until_empty(daemon.root / ".state" / "jobs") == []
    assert list((daemon.root / ".state" / "tmp").iterdir()) == []
    assert sorted(p.name for p in (daemon.archive / "to-docx").iterdir()) == sorted(names)


def test_bad_options_file_fails_only_its_folder(daemon: Daemon) -> None:
    daemon.start()
    bad = daemon.inbox / "to-docx" / "bad"
    bad.mkdir()
    (bad / ".sir-convert-a-lot.toml").write_text("[options]\nocr = 'sometimes'\n")
    write_source(daemon.base, "a.md").rename(bad / "a.md")
    write_source(daemon.base, "b.md").rename(daemon.inbox / "to-docx" / "b.md")
    err = daemon.error("to-docx/bad/a.md")
    assert err["error"]["code"] == "options_invalid"
    assert err["error"]["retryable"] is True
    assert daemon.sidecar("to-docx/b.docx")["status"] == "succeeded"
    assert daemon.get("/healthz")[0] == 200
