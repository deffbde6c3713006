"""The events journal (daemon/events.py): seq across reopen and rotation, ids
written once, torn tails, retention and the gaps a reader is told about; the
readiness and intake events of a real Service; and GET /events as SSE."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_settings
from daemon.event_reader import JournalReader
from daemon.events import FINAL_KINDS, Event, EventKind, Gap, Journal, segment_files
from daemon.http import make_app
from daemon.service import Service

pytestmark = pytest.mark.unit


def lines(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _, path in segment_files(folder):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def test_seq_grows_across_reopen_and_rotation_and_ids_are_written_once(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    journal = Journal(folder, "eval", max_segment_bytes=700)
    for i in range(6):
        journal.append(EventKind.JOB_CLAIMED, f"job-{i}:job_claimed", job_id=f"job-{i}")
    assert journal.append_once(EventKind.JOB_CLAIMED, "job-2:job_claimed") is None
    journal.close()

    again = Journal(folder, "eval", max_segment_bytes=700)  # a restart
    assert again.last_seq == 6
    assert again.append_once(EventKind.JOB_CLAIMED, "job-0:job_claimed") is None
    event = again.append_once(EventKind.JOB_SUCCEEDED, "job-0:job_succeeded", job_id="job-0")
    assert event is not None and event.seq == 7
    again.close()

    written = lines(folder)
    assert [e["seq"] for e in written] == list(range(1, 8))
    assert len({e["event_id"] for e in written}) == 7
    segments = segment_files(folder)
    assert len(segments) >= 3, "700-byte segments rotate every two events or so"
    for first, path in segments:  # each segment is named by its first seq
        assert json.loads(path.read_text().splitlines()[0])["seq"] == first


def test_append_once_finds_an_old_id_on_disk_by_the_jobs_start(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    journal = Journal(folder, "eval")
    journal.append(EventKind.JOB_SUCCEEDED, "old:job_succeeded", job_id="old")
    journal.close()
    again = Journal(folder, "eval")
    again._recent.clear()  # as if it were older than the ids remembered
    again._complete = False
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert again.append_once(EventKind.JOB_SUCCEEDED, "old:job_succeeded", since=since) is None
    assert [e["event_id"] for e in lines(folder)] == ["old:job_succeeded"]


def test_a_torn_last_line_is_cut_and_its_seq_reused(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    journal = Journal(folder, "eval")
    journal.append(EventKind.DAEMON_STARTED, "a")
    journal.append(EventKind.DAEMON_STOPPING, "b")
    journal.close()
    _, path = segment_files(folder)[-1]
    with path.open("ab") as f:
        f.write(b'{"schema_version":1,"seq":3,"event_id":"c","ki')  # power loss mid-line
    again = Journal(folder, "eval")
    assert again.last_seq == 2
    again.append(EventKind.DAEMON_STARTED, "d")
    assert [(e["seq"], e["event_id"]) for e in lines(folder)] == [(1, "a"), (2, "b"), (3, "d")]


def test_a_new_day_starts_a_segment_and_retention_reports_a_gap(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    journal = Journal(folder, "eval", retention_days=1)
    journal.append(EventKind.DAEMON_STARTED, "one")
    journal.append(EventKind.DAEMON_STOPPING, "two")
    first = segment_files(folder)[0][1]
    old = time.time() - 3 * 86400
    os.utime(first, (old, old))
    journal._segment_day = "2001-01-01"  # the day changed since the segment began
    journal.append(EventKind.DAEMON_STARTED, "three")  # rotates, then expires the old one
    assert [p.name for _, p in segment_files(folder)] == ["0000000000000003.jsonl"]

    reader = JournalReader(folder, after=0)
    gap, events = reader.poll()
    assert gap == Gap(after=0, first_available=3)
    assert [e.seq for e in events] == [3]
    gap, _ = JournalReader(folder, after=2).poll()
    assert gap is None, "a reader that saw seq 2 lost nothing"


def test_a_follower_reads_across_rotation_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    journal = Journal(folder, "eval", max_segment_bytes=500)
    reader = JournalReader(folder, after=0)
    seen: list[int] = []
    for i in range(25):
        journal.append(EventKind.JOB_CLAIMED, f"j{i}", job_id=f"j{i}")
        if i % 7 == 0:
            gap, events = reader.poll()
            assert gap is None
            seen += [e.seq for e in events]
    seen += [e.seq for e in reader.poll()[1]]
    assert seen == list(range(1, 26))
    assert len(segment_files(folder)) > 5


def test_every_kind_validates_and_finals_are_the_three_ends() -> None:
    assert {str(k) for k in FINAL_KINDS} == {"job_succeeded", "job_failed", "job_reused"}
    for kind in EventKind:
        event = Event(seq=1, event_id="x", kind=kind, at=datetime.now(UTC), profile="p")
        assert Event.model_validate_json(event.model_dump_json()) == event


# -- a real Service: readiness and intake events, GET /events ---------------------------

Build = Callable[..., Service]


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Build]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    built: list[Service] = []

    def make(extra: str = "") -> Service:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[profiles.prod]\ndata_root = "{tmp_path / "prod-root"}"\n'
            f'[profiles.eval]\ndata_root = "{tmp_path / "eval-root"}"\nhttp_port = 0\n{extra}\n'
        )
        environ = {"HOME": str(tmp_path), "SIR_CONVERT_A_LOT_SERVICE_REVISION": "unit"}
        settings, profile = load_settings(config_path=config, profile="eval", environ=environ)
        service = Service(settings, profile, journal=True)
        service.root.create()
        service.root.adopt("eval")
        built.append(service)
        return service

    yield make
    for service in built:
        if service.journal is not None:
            service.journal.close()


def test_intake_pause_and_resume_and_readiness_changes_are_events(build: Build) -> None:
    service = build()
    service.evaluate(force=True)
    shutil.rmtree(service.root.tmp)
    service.root.tmp.write_text("not a folder")  # the data root refuses writes
    for _ in range(3):  # a check fails for real after two rounds
        service.evaluate(force=True)
    assert service.intake_paused_reason == "data_root_unwritable"
    service.root.tmp.unlink()
    service.root.tmp.mkdir()
    service.evaluate(force=True)
    assert service.intake_paused_reason is None

    assert service.journal is not None
    service.announce.close()  # state events are written by a thread of their own
    kinds = [(e["kind"], e["code"], e["ready"]) for e in lines(service.journal.folder)]
    assert kinds[0] == ("readiness_changed", None, False)  # no workers run here
    assert ("intake_paused", "data_root_unwritable", None) in kinds
    assert kinds.index(("intake_paused", "data_root_unwritable", None)) < kinds.index(
        ("intake_resumed", None, None)
    )
    assert sum(1 for k in kinds if k[0] == "readiness_changed") == 1, "said once per change"


async def test_get_events_streams_sse_from_since_and_last_event_id(
    build: Build, aiohttp_client: Any
) -> None:
    service = build()
    assert service.journal is not None
    for i in range(5):
        service.journal.append(EventKind.JOB_CLAIMED, f"j{i}:job_claimed", job_id=f"j{i}")
    http = await aiohttp_client(make_app(service))

    resp = await http.get("/events", params={"since": "2", "follow": "0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in (await resp.text()).split("\n\n") if f.strip()]
    assert [f.splitlines()[0] for f in frames] == ["id: 3", "id: 4", "id: 5"]
    assert frames[0].splitlines()[1] == "event: job_claimed"
    assert json.loads(frames[0].splitlines()[2].removeprefix("data: "))["job_id"] == "j2"

    resp = await http.get(
        "/events", params={"since": "0", "follow": "0"}, headers={"Last-Event-ID": "4"}
    )
    assert [f.splitlines()[0] for f in (await resp.text()).split("\n\n") if f.strip()] == ["id: 5"]
    assert (await http.get("/events", params={"since": "x"})).status == 400

    # Following: a new event arrives on the open stream.
    resp = await http.get("/events", params={"since": "5"})
    service.journal.append(EventKind.JOB_SUCCEEDED, "j0:job_succeeded", job_id="j0")
    chunk = await resp.content.readuntil(b"\n\n")
    assert chunk.startswith(b"id: 6\nevent: job_succeeded\n")
    resp.close()


def test_the_events_command_prints_json_lines_a_gap_and_escaped_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import _event_line, main

    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\n')
    folder = tmp_path / "root" / "events"
    journal = Journal(folder, "eval", retention_days=1)
    journal.append(EventKind.DAEMON_STARTED, "one")
    journal._segment_day = "2001-01-01"
    old = time.time() - 3 * 86400
    os.utime(segment_files(folder)[0][1], (old, old))
    event = journal.append(
        EventKind.JOB_SUCCEEDED, "j:job_succeeded", job_id="j", path="outbox/\x1b[2Jx.pdf"
    )
    journal.close()
    capsys.readouterr()  # the journal's own log lines

    assert main(["events", "--config", str(config), "--profile", "eval", "--since", "0"]) == 0
    out, err = capsys.readouterr()
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed[0] == {"gap": {"after": 0, "first_available": 2}}
    assert printed[1]["seq"] == 2 and printed[1]["path"] == "outbox/\x1b[2Jx.pdf"
    assert "rotated away" in err
    line = _event_line(event)
    assert "\x1b" not in line and "job_succeeded" in line and "\\x1b[2Jx.pdf" in line


def test_a_failed_write_takes_its_half_line_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    folder = tmp_path / "events"
    journal = Journal(folder, "eval")
    journal.append(EventKind.DAEMON_STARTED, "one")
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        journal.append(EventKind.JOB_CLAIMED, "lost")
    monkeypatch.setattr(os, "fsync", real_fsync)
    journal.append(EventKind.JOB_CLAIMED, "two")
    journal.close()
    assert [(e["seq"], e["event_id"]) for e in lines(folder)] == [(1, "one"), (2, "two")]
    assert oct(folder.stat().st_mode & 0o777) == "0o750"


async def test_get_events_tells_a_reader_of_events_rotated_away(
    build: Build, aiohttp_client: Any
) -> None:
    service = build("[profiles.eval.events]\nretention_days = 1\n")
    journal = service.journal
    assert journal is not None
    journal.append(EventKind.DAEMON_STARTED, "one")
    old = time.time() - 3 * 86400
    os.utime(segment_files(journal.folder)[0][1], (old, old))
    journal._segment_day = "2001-01-01"
    journal.append(EventKind.DAEMON_STOPPING, "two")
    http = await aiohttp_client(make_app(service))
    resp = await http.get("/events", params={"since": "0", "follow": "0"})
    frames = [f.splitlines() for f in (await resp.text()).split("\n\n") if f.strip()]
    assert frames[0] == ["event: gap", 'data: {"after": 0, "first_available": 2}']
    assert frames[1][:2] == ["id: 2", "event: daemon_stopping"]
