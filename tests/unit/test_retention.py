"""Retention (daemon/retention.py) on a real data root: what is older goes, an
output with its sidecar, a pruned event per file; a job in flight and anything
younger stays.

A file's age counts from when it got there (the later of mtime and ctime), and
a test cannot set a ctime into the past: so the sweeps below run with the clock
set into the future instead (``sweep(now=...)``), which ages every file alike;
mtimes set into the past show that an old mtime alone prunes nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config import RetentionSettings
from daemon.events import Journal, segment_files
from daemon.jobs import JobRecord
from daemon.layout import DataRoot
from daemon.retention import Sweeper

pytestmark = pytest.mark.unit

DAY = 86400.0


def put(path: Path, text: str = "x", mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def events(journal: Journal) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _, path in segment_files(journal.folder):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    data = DataRoot(tmp_path / "root")
    data.create()
    return data


def test_old_results_go_in_pairs_and_a_job_in_flight_stays(root: DataRoot) -> None:
    long_ago = time.time() - 10 * 365 * DAY
    out, failed, archive = root.outbox, root.failed, root.archive
    put(out / "to-pdf/a.pdf", mtime=long_ago)
    put(out / "to-pdf/a.pdf.meta.json", "{}")
    put(out / "to-md/deep/b.md")
    put(out / "to-md/deep/b.md.meta.json", "{}")
    put(out / "to-md/orphan.md")  # a sweep cut short left it without its sidecar
    put(out / "to-docx/busy.docx")  # being published right now: named by its job
    put(out / "to-docx/busy.docx.meta.json", "{}")
    put(failed / "to-md/bad.xyz", mtime=long_ago)
    put(failed / "to-md/bad.xyz.error.json", "{}")
    (failed / "to-md/folder-entry").mkdir()  # a folder dropped, failed as an entry
    put(failed / "to-md/folder-entry/inside.txt")
    put(failed / "to-md/folder-entry.error.json", "{}")
    put(archive / "to-pdf/a.md", mtime=long_ago)  # rsync -t kept a 10-year-old mtime
    record = JobRecord(
        job_id="20260101T000000-0123456789ab",
        profile="eval",
        relative_path="to-docx/busy.md",
        phase="publishing",
        detected_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        output_relative="to-docx/busy.docx",
    )
    put(root.jobs / record.job_id / "job.json", record.model_dump_json())

    journal = Journal(root.events, "eval")
    settings = RetentionSettings(archive_days=30, failed_days=30, outbox_days=30)
    sweeper = Sweeper(settings, root, journal)

    assert sweeper.sweep() == [], "an old mtime alone prunes nothing: it arrived today"
    assert sweeper.sweep(now=time.time() + 20 * DAY) == []

    removed = sweeper.sweep(now=time.time() + 40 * DAY)
    assert sorted(removed) == [
        "archive/to-pdf/a.md",
        "failed/to-md/bad.xyz",
        "failed/to-md/folder-entry",
        "outbox/to-md/deep/b.md",
        "outbox/to-md/orphan.md",
        "outbox/to-pdf/a.pdf",
    ]
    left = sorted(str(p.relative_to(root.root)) for p in root.root.rglob("*") if p.is_file())
    assert [p for p in left if not p.startswith((".state", "events"))] == [
        "outbox/to-docx/busy.docx",
        "outbox/to-docx/busy.docx.meta.json",
    ]
    assert (out / "to-md/deep").is_dir(), "folders stay: a publish may be creating files there"

    pruned = {e["path"]: e for e in events(journal)}
    assert set(pruned) == set(removed)
    assert pruned["outbox/to-pdf/a.pdf"]["sidecar"] == "outbox/to-pdf/a.pdf.meta.json"
    assert pruned["failed/to-md/bad.xyz"]["sidecar"] == "failed/to-md/bad.xyz.error.json"
    assert pruned["outbox/to-md/orphan.md"]["sidecar"] is None
    assert {e["kind"] for e in pruned.values()} == {"pruned"}
    assert pruned["archive/to-pdf/a.md"]["code"] == "archive"

    assert sweeper.sweep(now=time.time() + 40 * DAY) == []
    assert len(events(journal)) == len(removed), "a second sweep writes nothing"
    journal.close()


def test_each_folder_has_its_own_setting_and_none_is_off(root: DataRoot) -> None:
    put(root.outbox / "a.pdf")
    put(root.outbox / "a.pdf.meta.json", "{}")
    put(root.archive / "a.md")
    put(root.failed / "b.xyz")
    put(root.failed / "b.xyz.error.json", "{}")
    assert not RetentionSettings().enabled
    sweeper = Sweeper(RetentionSettings(archive_days=1), root, None)
    assert sweeper.sweep(now=time.time() + 400 * DAY) == ["archive/a.md"]
    assert (root.outbox / "a.pdf").exists() and (root.failed / "b.xyz.error.json").exists()


def test_a_sidecar_whose_output_was_removed_by_hand_goes_too(root: DataRoot) -> None:
    put(root.outbox / "gone.pdf.meta.json", "{}")
    put(root.outbox / "kept.pdf.meta.json", "{}")
    put(root.outbox / "kept.pdf")
    sweeper = Sweeper(RetentionSettings(outbox_days=1), root, None)
    assert sweeper.sweep() == []
    assert sorted(sweeper.sweep(now=time.time() + 2 * DAY)) == [
        "outbox/gone.pdf.meta.json",
        "outbox/kept.pdf",
    ]


class Crash(Exception):
    """The daemon dies between removing a sidecar and its entry."""


def test_a_sweep_repeated_after_a_crash_writes_no_second_pruned_event(
    root: DataRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(root.outbox / "to-pdf/a.pdf")
    put(root.outbox / "to-pdf/a.pdf.meta.json", "{}")
    put(root.failed / "to-md/folder-entry/inside.txt")  # a folder entry: rmtree'd
    put(root.failed / "to-md/folder-entry/other.txt")
    put(root.failed / "to-md/folder-entry.error.json", "{}")
    settings = RetentionSettings(outbox_days=1, failed_days=1)
    later = time.time() + 2 * DAY
    real_remove = Sweeper._remove

    def crash_midway(entry: Path) -> None:
        if entry.is_dir():  # rmtree got one file far: the folder's mtime changed
            (entry / "inside.txt").unlink()
        raise Crash

    journal = Journal(root.events, "eval")
    monkeypatch.setattr(Sweeper, "_remove", staticmethod(crash_midway))
    with pytest.raises(Crash):
        Sweeper(RetentionSettings(outbox_days=1), root, journal).sweep(now=later)
    with pytest.raises(Crash):  # the same crash on the folder entry
        Sweeper(RetentionSettings(failed_days=1), root, journal).sweep(now=later)
    journal.close()
    assert not (root.outbox / "to-pdf/a.pdf.meta.json").exists()
    assert not (root.failed / "to-md/folder-entry.error.json").exists()
    assert (root.outbox / "to-pdf/a.pdf").exists(), "the crash left the output"
    assert (root.outbox / "to-pdf/.a.pdf.meta.json.pruning").exists(), "and a tombstone"

    monkeypatch.setattr(Sweeper, "_remove", staticmethod(real_remove))
    restarted = Journal(root.events, "eval")  # a restart: ids read back from disk
    assert sorted(Sweeper(settings, root, restarted).sweep(now=later)) == [
        "failed/to-md/folder-entry",
        "outbox/to-pdf/a.pdf",
    ]
    assert os.listdir(root.outbox / "to-pdf") == [], "tombstones go too"
    assert os.listdir(root.failed / "to-md") == []
    pruned = [e for e in events(restarted) if e["kind"] == "pruned"]
    assert [(e["path"], e["sidecar"]) for e in pruned] == [
        ("outbox/to-pdf/a.pdf", "outbox/to-pdf/a.pdf.meta.json"),
        ("failed/to-md/folder-entry", "failed/to-md/folder-entry.error.json"),
    ], "one event each, the first (naming the sidecar) kept"
    restarted.close()
