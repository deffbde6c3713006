"""DropFolder: reads strictly beneath a pinned folder, with a warning code per refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from converters.dropfolder import DropFolder, ResourceUnavailable
from converters.warning_codes import WarningCode

SECRET = b"TOP-SECRET-5521"


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    (folder / "images").mkdir(parents=True)
    (folder / "fig.png").write_bytes(b"beside")
    (folder / "images" / "fig.png").write_bytes(b"below")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return folder


def _refusal(folder: DropFolder, relative: str, max_bytes: int = 1 << 20) -> WarningCode:
    with pytest.raises(ResourceUnavailable) as caught:
        folder.read(relative, max_bytes=max_bytes)
    assert SECRET.decode() not in str(caught.value)
    return caught.value.code


def test_reads_files_beside_and_below(drop: Path) -> None:
    with DropFolder.open(drop) as folder:
        assert folder.read("fig.png", max_bytes=100) == b"beside"
        assert folder.read("images/fig.png", max_bytes=100) == b"below"
        assert folder.read(["images", "fig.png"], max_bytes=100) == b"below"


def test_symlinked_file_and_folder_are_blocked(drop: Path) -> None:
    outside = drop.parent / "outside"
    (drop / "link.txt").symlink_to(outside / "secret.txt")
    (drop / "sub").symlink_to(outside)
    (drop / "root").symlink_to("/")
    with DropFolder.open(drop) as folder:
        assert _refusal(folder, "link.txt") == WarningCode.LOCAL_RESOURCE_BLOCKED
        assert _refusal(folder, "sub/secret.txt") == WarningCode.LOCAL_RESOURCE_BLOCKED
        assert _refusal(folder, "root/etc/passwd") == WarningCode.LOCAL_RESOURCE_BLOCKED


def test_hard_link_fifo_and_folder_are_blocked(drop: Path) -> None:
    os.link(drop.parent / "outside" / "secret.txt", drop / "hard.css")
    os.mkfifo(drop / "pipe.css")
    with DropFolder.open(drop) as folder:
        assert _refusal(folder, "hard.css") == WarningCode.LOCAL_RESOURCE_BLOCKED
        assert _refusal(folder, "pipe.css") == WarningCode.LOCAL_RESOURCE_BLOCKED  # no hang
        assert _refusal(folder, "images") == WarningCode.LOCAL_RESOURCE_BLOCKED


@pytest.mark.parametrize(
    "relative",
    ["../outside/secret.txt", "images/../../outside/secret.txt", "/etc/passwd", "", "a//b"],
)
def test_escapes_are_refused_before_opening(drop: Path, relative: str) -> None:
    with DropFolder.open(drop) as folder:
        assert _refusal(folder, relative) == WarningCode.LOCAL_RESOURCE_BLOCKED


def test_missing_and_too_large(drop: Path) -> None:
    with DropFolder.open(drop) as folder:
        assert _refusal(folder, "nope.png") == WarningCode.RESOURCE_MISSING
        assert _refusal(folder, "nope/fig.png") == WarningCode.RESOURCE_MISSING
        assert _refusal(folder, "fig.png/x") == WarningCode.RESOURCE_MISSING
        assert _refusal(folder, "fig.png", max_bytes=3) == WarningCode.RESOURCE_TOO_LARGE


def test_a_swapped_folder_still_reads_from_the_pinned_one(drop: Path) -> None:
    """The race of finding 1: the folder is renamed and a symlink put in its place."""
    outside = drop.parent / "outside"
    (outside / "fig.png").write_bytes(SECRET)
    with DropFolder.open(drop) as folder:
        drop.rename(drop.parent / "moved")
        drop.symlink_to(outside)
        assert folder.read("fig.png", max_bytes=100) == b"beside"
        assert _refusal(folder, "secret.txt") == WarningCode.RESOURCE_MISSING


def test_a_removed_and_replaced_folder_reads_nothing(tmp_path: Path) -> None:
    """``rmdir x.tmp && ln -s / x.tmp``: the pinned folder is empty and gone."""
    drop = tmp_path / "x.tmp"
    drop.mkdir()
    with DropFolder.open(drop) as folder:
        drop.rmdir()
        drop.symlink_to("/")
        assert _refusal(folder, "etc/passwd") == WarningCode.RESOURCE_MISSING


def test_owns_and_closes_its_descriptor(drop: Path) -> None:
    fd = os.open(drop, os.O_RDONLY | os.O_DIRECTORY)
    folder = DropFolder(fd)
    assert folder.fileno() == fd
    folder.close()
    folder.close()  # idempotent
    assert folder.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        folder.read("fig.png", max_bytes=10)
    file_fd = os.open(drop / "fig.png", os.O_RDONLY)
    try:
        with pytest.raises(NotADirectoryError):
            DropFolder(file_fd)
    finally:
        os.close(file_fd)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///sir-convert-a-lot-drop/%2e%2e/outside/secret.txt", "local_resource_blocked"),
        ("file:///sir-convert-a-lot-drop/images%2F..%2F..%2Foutside/x", "local_resource_blocked"),
        ("file:///sir-convert-a-lot-drop/fig.png%00.css", "local_resource_blocked"),
        ("file:///etc/passwd", "local_resource_blocked"),
        ("file:///sir-convert-a-lot-drop-evil/fig.png", "local_resource_blocked"),
        ("file://otherhost/sir-convert-a-lot-drop/fig.png", "remote_resource_blocked"),
        ("file:///sir-convert-a-lot-drop/gone.png", "resource_missing"),
    ],
)
def test_policy_maps_only_urls_under_the_base_into_the_folder(
    drop: Path, url: str, code: str
) -> None:
    from converters._weasy import ResourcePolicy, ResourceRefused
    from converters.base import Limits

    with DropFolder.open(drop) as folder:
        policy = ResourcePolicy(folder, Limits())
        with pytest.raises(ResourceRefused):
            policy.load(url)
        assert policy.warnings == [code]
        body, _, _ = policy.load("file:///sir-convert-a-lot-drop/images/fig%2Epng#frag")
        assert body == b"below"


def test_every_read_is_remembered_with_what_it_gave(drop: Path) -> None:
    import hashlib

    with DropFolder.open(drop) as folder:
        folder.read("fig.png", max_bytes=100)
        _refusal(folder, "missing.png")
        _refusal(folder, "../outside/secret.txt")
        assert folder.reads == {
            "fig.png": "sha256:" + hashlib.sha256(b"beside").hexdigest(),
            "missing.png": WarningCode.RESOURCE_MISSING,
            "../outside/secret.txt": WarningCode.LOCAL_RESOURCE_BLOCKED,
        }
        before = folder.reads["fig.png"]
        (drop / "fig.png").write_bytes(b"changed")
        assert folder.outcome("fig.png", max_bytes=100) != before
        assert folder.outcome("missing.png", max_bytes=100) == "resource_missing"
