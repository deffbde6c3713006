"""The reuse cache on disk (daemon/reuse_cache.py) and the reuse key (daemon/reuse.py).

Real files in a temporary folder: entries are stored from a work folder, taken
into another, damaged, evicted and re-indexed the way the daemon does it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from converters.base import ConvertOptions
from daemon.reuse import models_facts, options_facts, reuse_key
from daemon.reuse_cache import ENTRY_FILE, Entry, ReuseCache
from daemon.sidecar import ConverterInfo

pytestmark = pytest.mark.unit

KEY_A, KEY_B, KEY_C = (hashlib.sha256(c.encode()).hexdigest() for c in "abc")


def entry(key: str, *, name_bound: bool = False) -> Entry:
    return Entry(
        key=key,
        job_id=f"20261130T000000-{key[:12]}",
        finished_at=datetime(2026, 11, 30, tzinfo=UTC),
        route="pdf->md",
        stem_sha256="0" * 64,
        name_bound=name_bound,
        output="x",
        converter=ConverterInfo(name="docling", versions={"docling": "2.0"}),
        warnings=["partial_conversion"],
        pages=3,
        convert_seconds=4.5,
    )


def work(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


def fresh(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> ReuseCache:
    made = ReuseCache(tmp_path / "reuse", max_bytes=1000)
    made.open()
    return made


def test_an_entry_comes_back_under_the_new_jobs_name_in_a_file_of_its_own(
    cache: ReuseCache, tmp_path: Path
) -> None:
    source = work(tmp_path, "w1", {"paper.md": b"# Paper\n"})
    stored = cache.store(entry(KEY_A), source, source / "paper.md")
    assert stored is not None and stored.output == "paper.md" and not stored.name_bound
    assert [(f.path, f.size_bytes) for f in stored.files] == [("paper.md", 8)]
    target = fresh(tmp_path, "w2")
    taken = cache.take(KEY_A, target, "copy of paper.md")
    assert taken is not None
    assert taken.output == target / "copy of paper.md"
    assert taken.output.read_bytes() == b"# Paper\n"
    assert taken.output.stat().st_ino != (source / "paper.md").stat().st_ino
    assert taken.output.stat().st_nlink == 1
    assert (taken.entry.pages, taken.entry.warnings) == (3, ["partial_conversion"])
    assert cache.total_bytes == 8 and len(cache) == 1


def test_several_files_are_one_entry_and_bound_to_the_inputs_name(
    cache: ReuseCache, tmp_path: Path
) -> None:
    files = {
        "paper.md": b"![fig](paper.images/1.png)\n",
        "paper.images/1.png": b"\x89PNG fake",
        "paper.docling.json": b"{}",
    }
    source = work(tmp_path, "w1", files)
    stored = cache.store(entry(KEY_A), source, source / "paper.md")
    assert stored is not None and stored.name_bound
    assert sorted(f.path for f in stored.files) == sorted(files)
    target = fresh(tmp_path, "w2")
    taken = cache.take(KEY_A, target, "paper.md")
    assert taken is not None and taken.output == target / "paper.md"
    for relative, data in files.items():
        assert (target / relative).read_bytes() == data


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing", "no_entry_json"])
def test_a_damaged_entry_is_discarded_never_handed_out(
    cache: ReuseCache, tmp_path: Path, damage: str
) -> None:
    source = work(tmp_path, "w1", {"a.md": b"right bytes\n", "a.images/1.png": b"png"})
    cache.store(entry(KEY_A), source, source / "a.md")
    place = next((tmp_path / "reuse").glob(f"??/{KEY_A}"))
    cached = place / "files" / "a.md"
    if damage == "corrupt":
        cached.write_bytes(b"wrong bytes\n")
    elif damage == "truncated":
        cached.write_bytes(b"right")
    elif damage == "missing":
        cached.unlink()
    else:
        (place / ENTRY_FILE).unlink()
    target = fresh(tmp_path, "w2")
    assert cache.take(KEY_A, target, "a.md") is None
    assert list(target.iterdir()) == []
    assert not place.exists()
    assert cache.discarded == 1 and len(cache) == 0 and cache.total_bytes == 0
    assert cache.take(KEY_A, target, "a.md") is None  # nothing left to find


def test_least_recently_used_entries_are_evicted_past_the_bound(
    cache: ReuseCache, tmp_path: Path
) -> None:
    cache.store(entry(KEY_A), work(tmp_path, "a", {"o": b"a" * 400}), tmp_path / "a" / "o")
    cache.store(entry(KEY_B), work(tmp_path, "b", {"o": b"b" * 400}), tmp_path / "b" / "o")
    assert cache.take(KEY_A, fresh(tmp_path, "use-a"), "o") is not None  # A is used again
    cache.store(entry(KEY_C), work(tmp_path, "c", {"o": b"c" * 400}), tmp_path / "c" / "o")
    assert cache.peek(KEY_B) is None  # the least recently used went
    assert cache.peek(KEY_A) is not None and cache.peek(KEY_C) is not None
    assert cache.total_bytes == 800
    too_big = work(tmp_path, "big", {"o": b"x" * 1001})
    assert cache.store(entry(KEY_B), too_big, too_big / "o") is None
    assert cache.total_bytes == 800


def test_a_restart_reindexes_and_clears_what_was_half_written(
    cache: ReuseCache, tmp_path: Path
) -> None:
    cache.store(entry(KEY_A), work(tmp_path, "a", {"o": b"a" * 10}), tmp_path / "a" / "o")
    (cache.staging / "half-written").mkdir()
    stray = tmp_path / "reuse" / KEY_B[:2] / KEY_B
    stray.mkdir(parents=True)
    (stray / ENTRY_FILE).write_text("{not json")
    again = ReuseCache(tmp_path / "reuse", max_bytes=1000)
    again.open()
    assert len(again) == 1 and again.total_bytes == 10
    assert list(again.staging.iterdir()) == []
    assert not stray.exists()
    assert again.take(KEY_A, fresh(tmp_path, "t"), "o") is not None


def test_the_key_changes_with_every_fact_the_output_depends_on(tmp_path: Path) -> None:
    base = {"input_sha256": "1" * 64, "route": "md->pdf", "options": {}, "format": 1}
    versions = {"pandoc": "3.8", "weasyprint": "66.0"}
    key = reuse_key(base, "weasyprint", versions, "cpu")
    assert key == reuse_key(dict(reversed(base.items())), "weasyprint", dict(versions), "cpu")
    assert key != reuse_key(base, "weasyprint", {**versions, "weasyprint": "67.0"}, "cpu")
    assert key != reuse_key(base, "weasyprint", versions, "cuda")
    assert key != reuse_key({**base, "input_sha256": "2" * 64}, "weasyprint", versions, "cpu")
    assert key != reuse_key({**base, "options": {"ocr": "off"}}, "weasyprint", versions, "cpu")


def test_options_count_by_the_content_of_the_files_they_name(tmp_path: Path) -> None:
    one, two = tmp_path / "job1" / "stylesheet.css", tmp_path / "job2" / "stylesheet.css"
    for path, text in ((one, "body{}"), (two, "body{}")):
        path.parent.mkdir()
        path.write_text(text)
    facts = options_facts(ConvertOptions(stylesheet=one))
    assert facts == options_facts(ConvertOptions(stylesheet=two))  # other path, same content
    two.write_text("body{color:red}")
    assert facts != options_facts(ConvertOptions(stylesheet=two))
    assert facts != options_facts(ConvertOptions(stylesheet=one, table_mode="accurate"))


def test_pdf_to_md_keys_on_its_model_files(tmp_path: Path) -> None:
    from converters.models import LAYOUT

    layout = tmp_path / LAYOUT.folder
    layout.mkdir(parents=True)
    weights = layout / "model.safetensors"
    weights.write_bytes(b"tiny model")
    before = models_facts(tmp_path, "pdf->md")
    assert [row[0] for row in before] == [f"{LAYOUT.folder}/model.safetensors"]
    assert models_facts(tmp_path, "md->pdf") == [] and models_facts(None, "pdf->md") == []
    weights.write_bytes(b"other model!")  # provisioned again
    assert models_facts(tmp_path, "pdf->md") != before


def test_a_conversion_that_read_a_name_the_wire_would_cut_is_not_kept(tmp_path: Path) -> None:
    """A picture reference of 13,000 characters: its recorded read would be cut on the
    wire and could never be checked again, so the conversion offers nothing to keep."""
    from converters.dropfolder import DropFolder, ResourceUnavailable
    from daemon.worker import _resources

    with DropFolder.open(tmp_path) as folder:
        for name in ("a.png", "b" * 13_000 + ".png"):
            with pytest.raises(ResourceUnavailable):
                folder.read(name, max_bytes=1024)
        assert len(folder.reads) == 2
        assert _resources(folder) is None
    with DropFolder.open(tmp_path) as folder:
        with pytest.raises(ResourceUnavailable):
            folder.read("a.png", max_bytes=1024)
        assert _resources(folder) is not None
