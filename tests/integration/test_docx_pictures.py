"""Pictures in Word output (issue #13, part 1): md→docx and html→docx embed the
images of the drop folder under the PDF routes' rules, and nothing else.

As the worker runs it: the document is the job's copy (outside the drop
folder), the drop folder a pinned descriptor. A secret outside the drop folder
is named every way a document can name it (``../``, an absolute path, a
``file:`` URL, a symbolic link, a hard link and a linked subfolder inside the
folder, a picture in the front-matter title); its bytes must never land in the .docx, although
pandoc's docx writer, unlike its reader, would read any path left in the
document.
"""

from __future__ import annotations

import base64
import os
import zipfile
from pathlib import Path

import pytest

from converters.base import (
    ConversionRequest,
    ConversionResult,
    ConvertOptions,
    Limits,
    WorkerContext,
)
from converters.dropfolder import DropFolder
from converters.html_docx import HtmlToDocx
from converters.md_docx import MarkdownToDocx
from tests.fixtures.web_docs import make_png, make_png_header_only

pytestmark = pytest.mark.integration

SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10">'
    b'<rect width="20" height="10" fill="teal"/></svg>'
)


def _ctx(limits: Limits | None = None) -> WorkerContext:
    return WorkerContext(
        gpu_policy="cpu",
        models_dir=None,
        limits=limits or Limits(),
        device="cpu",
        runtime_kind="none",
    )


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path]:
    """(drop folder, job folder): the document goes into the job folder."""
    drop = tmp_path / "drop"
    (drop / "images").mkdir(parents=True)
    state = tmp_path / "job"
    state.mkdir()
    return drop, state


def _convert(
    drop: Path, source: Path, out: Path, *, limits: Limits | None = None
) -> ConversionResult:
    conv = HtmlToDocx() if source.suffix == ".html" else MarkdownToDocx()
    with DropFolder.open(drop) as folder:
        request = ConversionRequest(source, out, ConvertOptions(), folder)
        return conv.convert(request, _ctx(limits))


def _media(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("word/media/"))
        return [zf.read(n) for n in names]


def _all_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return b"".join(zf.read(n) for n in zf.namelist())


def _docx_text(path: Path) -> str:
    import docx

    return "\n".join(p.text for p in docx.Document(str(path)).paragraphs)


@pytest.mark.parametrize("kind", ["md", "html"])
def test_pictures_beside_and_below_are_embedded_and_missing_ones_named(
    job: tuple[Path, Path], kind: str
) -> None:
    drop, state = job
    beside = make_png(drop / "beside.png", (30, 20)).read_bytes()
    below = make_png(drop / "images" / "below.png", (20, 30)).read_bytes()
    if kind == "md":
        source = state / "page.md"
        source.write_text(
            "# Pictures\n\n![a](beside.png)\n\n![b](images/below.png)\n\n"
            "![gone picture](images/gone.png)\n",
            encoding="utf-8",
        )
    else:
        source = state / "page.html"
        source.write_text(
            "<!doctype html><h1>Pictures</h1><p><img src='beside.png' alt='a'>"
            "<img src='images/below.png' alt='b'><img src='images/gone.png' alt='gone picture'>",
            encoding="utf-8",
        )
    out = state / "out.docx"
    result = _convert(drop, source, out)

    assert sorted(_media(out)) == sorted([beside, below])
    assert result.warnings == ["resource_missing"]
    assert "gone picture" in _docx_text(out)  # the description of a picture left out stays


def test_a_secret_outside_the_drop_folder_never_lands_in_the_docx(
    job: tuple[Path, Path], tmp_path: Path
) -> None:
    drop, state = job
    secret = make_png(tmp_path / "secret.png", (13, 7))
    secret_bytes = secret.read_bytes()
    secret_text = tmp_path / "secret.txt"
    secret_text.write_text("TOP-SECRET-MARK\n", encoding="utf-8")
    (drop / "link.png").symlink_to(secret)  # a link inside the folder pointing out
    os.link(secret, drop / "hard.png")  # a second name of the secret inside the folder
    (drop / "sub").symlink_to(tmp_path)  # a folder link on the way
    make_png(drop / "inside.png", (5, 5))
    source = state / "leak.md"
    source.write_text(
        "---\n"
        f"title: 'Leak ![t]({secret})'\n"
        "---\n\n"
        "# Probe\n\n"
        "![up](../secret.png) ![abs]("
        f"{secret}) ![url](file://{secret}) ![text](../secret.txt) "
        f"![abs text]({secret_text})\n\n"
        "![link](link.png) ![hard](hard.png) ![via](sub/secret.png) ![ok](inside.png)\n",
        encoding="utf-8",
    )
    out = state / "out.docx"
    result = _convert(drop, source, out)

    everything = _all_bytes(out)
    assert secret_bytes not in everything
    assert b"TOP-SECRET-MARK" not in everything
    assert _media(out) == [(drop / "inside.png").read_bytes()]  # control: inside is served
    assert result.warnings == ["local_resource_blocked"]
    assert "Probe" in _docx_text(out)


@pytest.mark.parametrize("kind", ["md", "html"])
def test_remote_pictures_are_never_fetched(
    job: tuple[Path, Path], web_server: tuple[str, list[str]], kind: str
) -> None:
    drop, state = job
    base, hits = web_server
    if kind == "md":
        source = state / "remote.md"
        source.write_text(f"# Remote\n\n![chart]({base}/chart.png)\n", encoding="utf-8")
    else:
        source = state / "remote.html"
        source.write_text(f"<h1>Remote</h1><img src='{base}/chart.png'>", encoding="utf-8")
    out = state / "out.docx"
    result = _convert(drop, source, out)

    assert hits == []
    assert _media(out) == []
    assert result.warnings == ["remote_resource_blocked"]
    assert "Remote" in _docx_text(out)


def test_svg_is_embedded_and_a_huge_png_is_refused_by_its_header(job: tuple[Path, Path]) -> None:
    drop, state = job
    (drop / "drawing.svg").write_bytes(SVG)
    # 30000 x 30000 claimed by a file of a few hundred bytes: never decoded
    make_png_header_only(drop / "giant.png", 30_000, 30_000)
    source = state / "mixed.md"
    source.write_text("# Mixed\n\n![svg](drawing.svg)\n\n![giant](giant.png)\n", encoding="utf-8")
    out = state / "out.docx"
    result = _convert(drop, source, out)

    assert _media(out) == [SVG]
    assert result.warnings == ["image_too_large"]


def test_a_picture_over_the_size_cap_is_left_out(job: tuple[Path, Path]) -> None:
    drop, state = job
    big = make_png(drop / "big.png", (200, 200))
    source = state / "big.md"
    source.write_text("# Big\n\n![big](big.png)\n", encoding="utf-8")
    out = state / "out.docx"
    limits = Limits(max_input_bytes=big.stat().st_size - 1)
    result = _convert(drop, source, out, limits=limits)

    assert _media(out) == []
    assert result.warnings == ["resource_too_large"]


def test_data_urls_are_embedded_up_to_their_limit(job: tuple[Path, Path], tmp_path: Path) -> None:
    drop, state = job
    small = make_png(tmp_path / "small.png", (4, 4)).read_bytes()
    big = make_png(tmp_path / "big.png", (300, 300)).read_bytes()

    def data_url(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    assert len(data_url(small)) < 500 < len(data_url(big))
    source = state / "inline.html"
    source.write_text(
        f"<h1>Inline</h1><img src='{data_url(small)}'><img src='{data_url(big)}'>",
        encoding="utf-8",
    )
    out = state / "out.docx"
    result = _convert(drop, source, out, limits=Limits(max_data_url_bytes=500))

    assert _media(out) == [small]
    assert result.warnings == ["data_url_too_large"]


def test_html_frames_and_objects_load_nothing(job: tuple[Path, Path], tmp_path: Path) -> None:
    drop, state = job
    secret = tmp_path / "secret.html"
    secret.write_text("<p>FRAME-SECRET-MARK</p>", encoding="utf-8")
    picture = make_png(tmp_path / "secret.png", (9, 9))
    source = state / "frames.html"
    source.write_text(
        f"<h1>Frames</h1><iframe src='{secret}'></iframe><iframe src='../secret.html'></iframe>"
        f"<object data='{picture}'></object><embed src='{picture}'>"
        f"<video poster='{picture}' src='{picture}'></video><img srcset='{picture} 1x'>",
        encoding="utf-8",
    )
    out = state / "out.docx"
    _convert(drop, source, out)

    everything = _all_bytes(out)
    assert b"FRAME-SECRET-MARK" not in everything
    assert picture.read_bytes() not in everything
    assert "Frames" in _docx_text(out)


@pytest.mark.parametrize("kind", ["md", "html"])
def test_malformed_picture_references_are_left_out_not_fatal(
    job: tuple[Path, Path], kind: str
) -> None:
    """Bad base64 in a data: URL and a URL no parser accepts: the document converts
    without those pictures, as the PDF routes do."""
    drop, state = job
    bad = ["data:image/png;base64,A", "http://[x"]
    source = state / f"bad.{kind}"
    if kind == "md":
        source.write_text(
            "# Still here\n\n" + " ".join(f"![p]({u})" for u in bad) + "\n", encoding="utf-8"
        )
    else:
        source.write_text(
            "<h1>Still here</h1>" + "".join(f"<img src='{u}'>" for u in bad), encoding="utf-8"
        )
    out = state / "out.docx"
    _convert(drop, source, out)
    assert _media(out) == []
    assert "Still here" in _docx_text(out)
