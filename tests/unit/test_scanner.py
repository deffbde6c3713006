"""Rescans out of the main process: the helper's deltas, its process, and the Service's use."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import ProfileSettings, Settings
from daemon.scanner import InboxScan, ScannerProcess
from daemon.service import Service
from daemon.wire import ScanSetup


def setup_for(inbox: Path) -> ScanSetup:
    return ScanSetup(
        inbox=str(inbox),
        ignore_patterns=["*.tmp", ".*"],
        ignore_dirs=["_skip"],
        asset_extensions=["png"],
        entry_dir_extensions=["pdf", "md"],
    )


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_rescan_reports_candidates_always_and_ignored_entries_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    doc = touch(inbox / "to-pdf" / "a.md")
    image = touch(inbox / "pics" / "b.png")
    temp = touch(inbox / "c.tmp")
    touch(inbox / "_skip" / "d.md")  # never entered
    touch(inbox / ".hidden" / "e.md")  # never entered
    folder_doc = inbox / "f.pdf"
    folder_doc.mkdir()  # a folder named like a document is an entry
    scan = InboxScan(setup_for(inbox))

    first = scan.scan()
    assert sorted(first.candidates) == sorted([str(doc), str(folder_doc)])
    assert sorted(first.ignored) == sorted([(str(image), "asset"), (str(temp), "pattern")])
    assert first.vanished == []

    second = scan.scan()  # nothing changed: the same candidates, no ignored news
    assert sorted(second.candidates) == sorted(first.candidates)
    assert second.ignored == []
    assert second.vanished == []

    temp.unlink()
    new_image = touch(inbox / "pics" / "g.png")
    third = scan.scan()
    assert third.ignored == [(str(new_image), "asset")]
    assert third.vanished == [str(temp)]


async def test_the_helper_process_answers_scans_and_keeps_odd_names(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    odd = os.fsdecode(b"caf\xe9.md")  # not UTF-8: a lone surrogate after fsdecode
    touch(inbox / odd)
    touch(inbox / "x.png")
    helper = ScannerProcess(setup_for(inbox))
    try:
        reply, fresh = await helper.scan(30)
        assert fresh
        assert reply.candidates == [str(inbox / odd)]
        assert Path(reply.candidates[0]).exists()
        assert reply.ignored == [(str(inbox / "x.png"), "asset")]
        first_pid = helper.pid
        reply, fresh = await helper.scan(30)
        assert not fresh and helper.pid == first_pid
        assert reply.ignored == []
        assert helper.proc is not None
        helper.proc.kill()  # a helper that died is replaced on the next scan
        await helper.proc.wait()
        reply, fresh = await helper.scan(30)
        assert fresh and helper.pid != first_pid
        assert reply.ignored == [(str(inbox / "x.png"), "asset")]
    finally:
        await helper.stop()
    assert helper.proc is None


def ignored_count(service: Service, reason: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "sir_convert_a_lot_files_ignored_total", {"reason": reason}
    )
    return value or 0.0


async def test_the_service_counts_each_ignored_entry_once_and_forgets_gone_ones(
    tmp_path: Path,
) -> None:
    profile = ProfileSettings(name="eval", data_root=tmp_path / "root", service_revision="t")
    service = Service(Settings(profiles={"eval": profile}), profile)
    service.root.create()
    inbox = service.root.inbox
    images = [touch(inbox / f"img-{i}.png") for i in range(3)]
    doc = touch(inbox / "to-md" / "a.html")
    service.intake.start_scanner()
    try:
        await service.intake.rescan()
        assert doc in service.tracker
        assert ignored_count(service, "asset") == 3
        await service.intake.rescan()
        assert ignored_count(service, "asset") == 3  # no double counting
        # An event for an image already counted changes nothing either.
        from daemon.settle import Arrival

        service.intake.on_event(Arrival.CLOSED, images[0])
        assert ignored_count(service, "asset") == 3
        images[1].unlink()
        await service.intake.rescan()
        assert not service.intake.is_ignored(images[1])
        assert service.intake.is_ignored(images[0])
        # A new image seen by an event first, then by the helper: counted once.
        late = touch(inbox / "late.png")
        service.intake.on_event(Arrival.CLOSED, late)
        await service.intake.rescan()
        assert ignored_count(service, "asset") == 4
        # An image seen by an event and gone before the next scan is forgotten too.
        brief = touch(inbox / "brief.png")
        service.intake.on_event(Arrival.CLOSED, brief)
        brief.unlink()
        await service.intake.rescan()
        assert not service.intake.is_ignored(brief)
    finally:
        await service.intake.stop_scanner()
