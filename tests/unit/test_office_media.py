"""Pictures in Office packages are judged by their headers (converters/office_media.py).

Issue #10: a 50 KB .docx of forty 13,000-pixel pictures held a worker for a
minute while each was decoded to RGB; the sniffer now refuses it from the
headers, before a converter runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.base import Limits
from converters.errors import InputTooLarge
from converters.sniff import check_input
from tests.fixtures.bombs import make_huge_images_docx

pytestmark = pytest.mark.unit


def test_forty_huge_pictures_are_refused_from_their_headers(tmp_path: Path) -> None:
    path = make_huge_images_docx(tmp_path / "images.docx")
    assert path.stat().st_size < 100_000  # small on disk, ~20 GB as RGB
    with pytest.raises(InputTooLarge, match="max_total_pixels"):
        check_input(path, "docx", Limits())


def test_pictures_are_counted_together_up_to_the_limit(tmp_path: Path) -> None:
    path = make_huge_images_docx(tmp_path / "three.docx", images=3, side=1000)
    check_input(path, "docx", Limits(max_total_pixels=3_000_000))
    with pytest.raises(InputTooLarge, match="max_total_pixels"):
        check_input(path, "docx", Limits(max_total_pixels=2_999_999))


def test_one_picture_over_max_pixels_is_refused(tmp_path: Path) -> None:
    path = make_huge_images_docx(tmp_path / "one.docx", images=1, side=1000)
    with pytest.raises(InputTooLarge, match="max_pixels"):
        check_input(path, "docx", Limits(max_pixels=999_999))
    check_input(path, "docx", Limits(max_pixels=1_000_000))
