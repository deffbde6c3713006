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


def test_a_file_still_held_open_for_writing_waits_however_quiet() -> None:
    """Created with data before its folder was watched (no write, no close seen):
    the window alone would settle it, but the kernel says a writer holds it."""
    t, st = SettleTracker(1.0, require_close=True), FakeStat()
    held = {P}
    asked: list[float] = []

    def held_open(path: Path) -> bool:
        asked.append(now)
        return path in held

    t.observe(P, Arrival.CREATED, 0.0)
    for now in (0.1, 1.2, 1.5, 2.0):
        assert t.due(now, st, held_open) == []
    assert asked == [1.2]  # asked once it looked finished, then after a new window
    now = 2.3
    assert t.due(now, st, held_open) == []
    assert asked == [1.2, 2.3]
    held.clear()  # the writer closed (its close event may be lost: no matter)
    now = 3.4
    assert t.due(now, st, held_open) == [P]


def test_a_renamed_file_is_not_asked_about() -> None:
    t = SettleTracker(1.0, require_close=False)
    t.observe(P, Arrival.RENAMED, 0.0)
    assert t.due(0.0, FakeStat(), lambda path: True) == [P]
