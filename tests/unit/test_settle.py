from __future__ import annotations

from pathlib import Path, PurePosixPath

from daemon.config import DEFAULT_ASSET_EXTENSIONS, DEFAULT_IGNORE_DIRS, DEFAULT_IGNORE_PATTERNS
from daemon.durable import unique_name
from daemon.ignore import IgnoreRules
from daemon.layout import DataRoot
from daemon.settle import Arrival, SettleTracker

P = Path("/inbox/a.pdf")


class FakeStat:
    def __init__(self) -> None:
        self.value: tuple[int, int] | None = (10, 1)

    def __call__(self, path: Path) -> tuple[int, int] | None:
        return self.value


def test_rename_is_complete_at_once() -> None:
    t = SettleTracker(2.0, require_close=True)
    t.observe(P, Arrival.RENAMED, 0.0)
    assert t.due(0.0, FakeStat()) == [P]
    assert P not in t


def test_in_place_write_waits_for_close_quiet_window_and_stable_size() -> None:
    t, st = SettleTracker(2.0, require_close=True), FakeStat()
    t.observe(P, Arrival.WRITTEN, 0.0)
    assert t.due(0.1, st) == []  # first stat recorded
    assert t.due(5.0, st) == []  # quiet and stable, but never closed: writer may pause
    t.observe(P, Arrival.CLOSED, 5.0)
    assert t.due(6.0, st) == []  # quiet window not over since the close
    assert t.due(7.1, st) == [P]


def test_growing_file_resets_the_window() -> None:
    t, st = SettleTracker(2.0, require_close=False), FakeStat()
    t.observe(P, Arrival.SCANNED, 0.0)
    t.due(0.0, st)
    st.value = (20, 2)
    assert t.due(2.5, st) == []  # size changed: stable_since restarts
    assert t.due(4.0, st) == []
    assert t.due(4.6, st) == [P]


def test_write_after_close_needs_a_new_close() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.WRITTEN, 0.0)
    t.observe(P, Arrival.CLOSED, 0.1)
    t.observe(P, Arrival.WRITTEN, 0.2)  # reopened and appended
    t.due(0.3, st)
    assert t.due(10.0, st) == []


def test_vanished_file_is_forgotten() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.WRITTEN, 0.0)
    st.value = None
    assert t.due(5.0, st) == []
    assert P not in t


RULES = IgnoreRules(DEFAULT_IGNORE_PATTERNS, DEFAULT_IGNORE_DIRS, DEFAULT_ASSET_EXTENSIONS)


def test_ignore_rules_cover_temp_and_system_files() -> None:
    ignored = [
        ".paper.pdf.XyZ123",  # rsync temp file
        "~$report.docx",
        "movie.part",
        "file.crdownload",
        "x.tmp",
        "._paper.pdf",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "@eaDir/a.pdf",
        "to-md/__MACOSX/a.pdf",
        "to-md/.stfolder/a.pdf",
        ".Trashes/a.pdf",
    ]
    for name in ignored:
        assert RULES.reason(PurePosixPath(name)) is not None, name
    for name in ["paper.pdf", "to-md/course 1/paper.PDF", "notes.md", "a~b.docx"]:
        assert RULES.reason(PurePosixPath(name)) is None, name
    assert RULES.reason(PurePosixPath("to-pdf/img.png")) == "asset"


def test_routes_from_folders_and_defaults(tmp_path: Path) -> None:
    root = DataRoot(tmp_path)
    defaults = {"pdf": "md", "md": "pdf", "docx": "md", "html": "md"}
    r = root.resolve(PurePosixPath("to-md/course-1/paper.pdf"), defaults)
    assert (r.source, r.target, str(r.output_relative)) == ("pdf", "md", "to-md/course-1/paper.md")
    r = root.resolve(PurePosixPath("notes.markdown"), defaults)
    assert (r.source, r.target, str(r.output_relative)) == ("md", "pdf", "notes.pdf")
    r = root.resolve(PurePosixPath("to-docx/page.HTM"), defaults)
    assert (r.source, r.target) == ("html", "docx")


def test_collision_rule_never_overwrites(tmp_path: Path) -> None:
    first = tmp_path / "a.md"
    assert unique_name(first) == first
    first.write_text("x")
    assert unique_name(first) == tmp_path / "a~2.md"
    (tmp_path / "a~2.md.meta.json").write_text("{}")  # a published sidecar also reserves it
    assert unique_name(first) == tmp_path / "a~3.md"


def test_created_with_data_and_no_write_seen_settles_without_a_close() -> None:
    # A file written before its new folder's watch existed: no write, no close.
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.CREATED, 0.0)
    t.due(0.1, st)
    assert t.due(1.2, st) == [P]


def test_created_empty_file_waits_for_its_close() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    st.value = (0, 1)
    t.observe(P, Arrival.CREATED, 0.0)
    t.due(0.1, st)
    assert t.due(5.0, st) == []
    t.observe(P, Arrival.CLOSED, 5.0)
    assert t.due(6.1, st) == [P]


def test_an_empty_file_whose_close_was_missed_settles_eventually() -> None:
    """A file created empty in a folder before its watch existed reports no
    close; it must not wait in the inbox forever (it fails as empty instead)."""
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    st.value = (0, 1)
    t.observe(P, Arrival.CREATED, 0.0)
    assert t.due(1.5, st) == []
    assert t.due(10.0, st) == []
    assert t.due(21.0, st) == [P]


def test_a_file_still_open_for_writing_is_postponed_by_another_window() -> None:
    """Created with data before its folder was watched (no write, no close seen):
    quiet and stable, it is due; the claim finds it open and postpones it."""
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.CREATED, 0.0)
    assert t.due(0.1, st) == []
    assert t.due(1.2, st) == [P]
    assert t.postpone(P, 1.2) is True  # the first time: logged by the caller
    assert P in t and t.held_count() == 1
    assert t.due(2.0, st) == []  # one more quiet, stable window first
    assert t.due(2.3, st) == [P]
    assert t.held_count() == 0  # due again: the caller decides
    assert t.postpone(P, 2.3) is False  # still open: not news
    assert t.due(3.4, st) == [P]  # closed now: claimed
    assert P not in t and t.held_count() == 0


def test_a_renamed_file_still_open_waits_like_a_written_one() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.RENAMED, 0.0)
    assert t.due(0.0, st) == [P]
    t.postpone(P, 0.0)
    assert t.due(0.1, st) == []  # no longer complete at once
    assert t.due(1.2, st) == [P]


def test_an_event_while_the_claim_asked_wins_over_postpone() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.RENAMED, 0.0)
    assert t.due(0.0, st) == [P]
    t.observe(P, Arrival.WRITTEN, 0.1)  # seen while the claim ran
    assert t.postpone(P, 0.2) is False
    assert t.held_count() == 0
    t.observe(P, Arrival.CLOSED, 0.3)
    t.due(0.3, st)
    assert t.due(1.4, st) == [P]


def test_a_held_file_that_vanishes_is_no_longer_counted() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.RENAMED, 0.0)
    t.due(0.0, st)
    t.postpone(P, 0.0)
    st.value = None
    assert t.due(5.0, st) == []
    assert P not in t and t.held_count() == 0


def test_a_file_put_back_for_a_full_lane_keeps_its_age_and_held_state() -> None:
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    t.observe(P, Arrival.CREATED, 0.0)
    t.due(0.1, st)
    assert t.due(1.2, st) == [P]
    t.postpone(P, 1.2)  # still open
    assert t.due(2.3, st) == [P]  # closed now, but its lane is full
    t.put_back(P, 2.3)
    assert t.oldest() == 0.0 and t.held_count() == 1
    assert t.due(2.35, st) == [P]  # due again at once
    assert t.postpone(P, 2.35) is False  # not logged a second time
