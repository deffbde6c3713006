"""Hostile and broken inputs against one real daemon.

Everything is dropped at once when the module's daemon starts (the slow ones
first), then each test checks its own kind: a stable error code in failed/ for
broken files, a timeout for runaway conversions, clean results for awkward
names, refusals for entries that are not regular files (never opened), and no
byte fetched from outside the drop folder or the network. After each kind the
daemon is still ready and a good file dropped right after converts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chaos_support import FaultyDaemon
from tests.fixtures.web_docs import (
    HitRecorder,
    make_billion_laughs_docx,
    make_encrypted_pdf,
    make_invalid_utf8_md,
    make_png_header_only,
    make_png_named_pdf,
    make_truncated_pdf,
    make_zip_bomb_docx,
)

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 15
PASSWD = Path("/etc/passwd")
# A line of /etc/passwd that no converter would write by itself.
PASSWD_MARK = PASSWD.read_text().splitlines()[0].encode()[:24] if PASSWD.exists() else b"root:x:0"

# Broken inputs and the code each must fail with.
BROKEN: dict[str, str] = {
    "to-docx/empty.md": "corrupt_input",
    "to-md/truncated.pdf": "corrupt_input",
    "to-md/corrupt.pdf": "corrupt_input",
    "to-md/encrypted.pdf": "encrypted_input",
    "to-md/png-named.pdf": "unsupported_content",
    "to-md/bomb.docx": "input_too_large",
    "to-md/laughs.docx": "unsupported_content",
    "to-md/five-thousand-pages.pdf": "too_many_pages",
    "to-docx/latin1.md": "unsupported_content",
}
RUNAWAY: dict[str, str] = {
    "to-docx/nested-100k.md": "timeout",
    "to-pdf/floats.html": "timeout",
}
NAMES = [
    "with spaces and  two.md",
    "ünïcødé-名前-😀.md",
    "line\nbreak.md",
    "-rf --help.md",
    "report..final.md",
    "Case.md",
    "case.md",
    "CASE.md",
    "L" * 252 + ".md",  # 255 bytes, the longest name ext4 allows
    "é" * 126 + ".md",  # 255 bytes in UTF-8
]


@dataclass
class Hostile:
    daemon: FaultyDaemon
    recorder: HitRecorder
    secret: Path
    secret_atime: float
    secret_mtime: float
    good: list[str] = field(default_factory=list)

    def drop_good(self, name: str) -> dict[str, object]:
        """A good file dropped now converts, and the daemon says it is ready."""
        src = self.daemon.base / "good" / name
        src.parent.mkdir(exist_ok=True)
        src.write_text(f"# Good {name}\n\nStill working.\n")
        os.replace(src, self.daemon.inbox / "to-docx" / name)
        car = self.daemon.sidecar(f"to-docx/{Path(name).stem}.docx", timeout=180)
        assert car["status"] == "succeeded"
        # Ready again: a worker replaced after a hostile file's time-out may
        # still be warming (workers_not_warm, docs/health.md); it comes back.
        self.daemon.wait_ready(timeout=180)
        return car


def _write_inputs(drop: Path, recorder: HitRecorder) -> None:
    """Every hostile regular file, written under ``drop`` (inbox-shaped)."""
    for folder in ("to-md", "to-pdf", "to-docx"):
        (drop / folder).mkdir(parents=True, exist_ok=True)
    # runaway conversions: a list nested 100,000 levels (pandoc slows down with
    # the square of the depth) and 40,000 floats (WeasyPrint places each
    # against all the others)
    (drop / "to-docx/nested-100k.md").write_text("- " * 100_000 + "deep\n")
    floats = "".join(
        f'<div style="float:left;width:{i % 7 + 1}px;height:{i % 5 + 1}px"></div>'
        for i in range(40_000)
    )
    (drop / "to-pdf/floats.html").write_text(f"<!doctype html><html><body>{floats}</body></html>")

    (drop / "to-docx/empty.md").write_bytes(b"")
    make_truncated_pdf(drop / "to-md/truncated.pdf")
    (drop / "to-md/corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(4096) + b"\n%%EOF\n")
    make_encrypted_pdf(drop / "to-md/encrypted.pdf")
    make_png_named_pdf(drop / "to-md/png-named.pdf")
    make_zip_bomb_docx(drop / "to-md/bomb.docx", member_bytes=64 * 1024 * 1024)
    make_billion_laughs_docx(drop / "to-md/laughs.docx")
    import pypdfium2 as pdfium

    many = pdfium.PdfDocument.new()
    for _ in range(5000):
        many.new_page(20, 20)  # tiny blank pages: 5,000 of them weigh ~600 kB
    many.save(str(drop / "to-md/five-thousand-pages.pdf"))
    many.close()
    make_invalid_utf8_md(drop / "to-docx/latin1.md")

    # a page with an image whose header claims 30000 x 30000 pixels
    (drop / "to-pdf/giant").mkdir()
    make_png_header_only(drop / "to-pdf/giant/huge.png", 30_000, 30_000)
    (drop / "to-pdf/giant/giant-image.html").write_text(
        "<!doctype html><html><body><h1>Giant</h1><img src='huge.png'></body></html>"
    )

    for name in NAMES:
        for folder in ("to-docx", "to-pdf"):
            (drop / folder / "names").mkdir(exist_ok=True)
            (drop / folder / "names" / name).write_text(f"# Named {len(name)}\n\n{name!r}\n")

    _write_reach_out(drop, recorder)


# Documents that try to read /etc/passwd or call the test server, per route.
REACH_ROUTES = {
    "html-pdf": ("to-pdf", "html", "pdf"),
    "md-pdf": ("to-pdf", "md", "pdf"),
    "html-docx": ("to-docx", "html", "docx"),
    "md-docx": ("to-docx", "md", "docx"),
    "html-md": ("to-md", "html", "md"),
}


def _write_reach_out(drop: Path, recorder: HitRecorder) -> None:
    for label, (folder, source, _) in REACH_ROUTES.items():
        path = drop / folder / "reach" / f"{label}.{source}"
        path.parent.mkdir(parents=True, exist_ok=True)
        remote = recorder.url(f"{label}.png")
        if source == "html":
            path.write_text(
                "<!doctype html><html><head><meta charset='utf-8'>"
                f"<link rel='stylesheet' href='{recorder.url(label + '.css')}'>"
                "<link rel='stylesheet' href='file:///etc/passwd'>"
                "<link rel='attachment' href='file:///etc/passwd'>"
                f"<style>body {{ background: url('{recorder.url(label + '-bg.png')}') }}</style>"
                f"</head><body><h1>Reach {label}</h1><img src='{remote}' alt='remote'>"
                "<img src='file:///etc/passwd' alt='local'><img src='/etc/passwd' alt='abs'>"
                "<img src='../../../../../../../../etc/passwd' alt='dots'>"
                "<iframe src='file:///etc/passwd'></iframe>"
                "<object data='file:///etc/passwd'></object>"
                "<a rel='attachment' href='/etc/passwd'>attached</a></body></html>"
            )
        else:
            path.write_text(
                f"# Reach {label}\n\n![remote]({remote})\n\n![abs](/etc/passwd)\n\n"
                "![file](file:///etc/passwd)\n\n![dots](../../../../../../../../etc/passwd)\n\n"
                f'<img src="{recorder.url(label + "-raw.png")}">\n\n'
                '<img src="/etc/passwd">\n\n<iframe src="file:///etc/passwd"></iframe>\n'
            )


def _non_regular_entries(daemon: FaultyDaemon, secret: Path) -> None:
    inbox = daemon.inbox
    (inbox / "to-docx" / "odd").mkdir(parents=True)
    os.symlink(PASSWD, inbox / "to-docx" / "odd" / "passwd-link.md")
    os.link(secret, inbox / "to-docx" / "odd" / "hardlink.md")
    os.mkfifo(inbox / "to-docx" / "odd" / "fifo.md")
    (inbox / "to-docx" / "odd" / "folder.md").mkdir()
    (inbox / "to-docx" / "odd" / "folder.md" / "inside.txt").write_text("x")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Hostile]:
    base = tmp_path_factory.mktemp("hostile")
    secret = base / "outside-secret.txt"
    secret.write_text("top secret, outside the inbox\n")
    st = secret.stat()
    # An access time older than the modification time: any read updates it (relatime).
    os.utime(secret, (st.st_mtime - 3600, st.st_mtime))
    st = secret.stat()
    with HitRecorder() as recorder:
        daemon = FaultyDaemon(
            base,
            models_dir=tiny_models_dir,
            extra_config=f"cpu = {{ workers = 2, job_timeout_seconds = {JOB_TIMEOUT} }}\n",
        )
        drop = base / "drop"
        _write_inputs(drop, recorder)
        daemon.start()
        # slow ones first, so that they hold the workers while the rest arrive
        for rel in RUNAWAY:
            os.replace(drop / rel, daemon.inbox / rel)
        for folder in ("to-md", "to-pdf", "to-docx"):
            for entry in sorted((drop / folder).iterdir()):
                os.replace(entry, daemon.inbox / folder / entry.name)
        _non_regular_entries(daemon, secret)
        yield Hostile(daemon, recorder, secret, st.st_atime, st.st_mtime)
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def test_broken_inputs_fail_with_stable_codes(hostile: Hostile) -> None:
    d = hostile.daemon
    got = {rel: d.error(rel, timeout=180)["error"]["code"] for rel in BROKEN}
    assert got == BROKEN
    for rel in BROKEN:
        assert (d.failed / rel).is_file(), f"{rel} is not kept in failed/"
    hostile.drop_good("after-broken.md")


def test_runaway_conversions_time_out_and_the_lane_recovers(hostile: Hostile) -> None:
    d = hostile.daemon
    for rel, code in RUNAWAY.items():
        err = d.error(rel, timeout=240)
        assert err["error"]["code"] == code, err
        assert err["attempts"] == 1
    assert d.metric("sir_convert_a_lot_worker_restarts_total", reason="timeout") >= len(RUNAWAY)
    # a giant image is left out with a warning, the page still renders
    car = d.sidecar("to-pdf/giant/giant-image.pdf", timeout=180)
    assert "image_too_large" in car["warnings"]
    hostile.drop_good("after-runaway.md")


def _sidecars(folder: Path, pattern: str) -> dict[str, dict[str, Any]]:
    """Sidecars under ``folder`` by their input's name."""
    found: dict[str, dict[str, Any]] = {}
    if folder.exists():
        for path in folder.glob(pattern):
            car = json.loads(path.read_text())
            found[car["input"]["name"]] = car
    return found


def test_awkward_names_convert_once_each(hostile: Hostile) -> None:
    d = hostile.daemon
    for folder, target in (("to-docx", "docx"), ("to-pdf", "pdf")):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = _sidecars(d.outbox / folder / "names", "*.meta.json")
            failed = _sidecars(d.failed / folder / "names", "*.error.json")
            if len(done) + len(failed) >= len(NAMES):
                break
            time.sleep(0.2)
        assert {name: car["error"] for name, car in failed.items()} == {}
        assert sorted(done) == sorted(NAMES)
        for car in done.values():
            output = d.outbox / car["output"]["path"]
            assert output.is_file() and output.stat().st_size > 0
            assert output.suffix == f".{target}"
            assert len(os.fsencode(output.name + ".meta.json")) <= 255
        # case-only differences stay three different results
        stems = {Path(c["output"]["path"]).stem for c in done.values()}
        assert {"Case", "case", "CASE"} <= stems
        # the originals keep their exact names in the archive
        archived = sorted(p.name for p in (d.archive / folder / "names").iterdir())
        assert archived == sorted(NAMES)
    hostile.drop_good("after-names.md")


def test_non_regular_entries_are_refused_unread(hostile: Hostile) -> None:
    d = hostile.daemon
    for name in ("passwd-link.md", "hardlink.md", "fifo.md", "folder.md"):
        err = d.error(f"to-docx/odd/{name}", timeout=120)
        assert err["error"]["code"] == "not_regular_file", err
        assert err["input"]["sha256"] is None, f"{name} was read: {err['input']}"
    assert (d.failed / "to-docx/odd/passwd-link.md").is_symlink()
    assert os.readlink(d.failed / "to-docx/odd/passwd-link.md") == str(PASSWD)
    assert (d.failed / "to-docx/odd/folder.md/inside.txt").read_text() == "x"
    secret = hostile.secret.stat()
    assert hostile.secret.read_bytes() == b"top secret, outside the inbox\n"
    assert secret.st_mtime == hostile.secret_mtime
    assert secret.st_atime == hostile.secret_atime, "the hard-linked file was read"
    hostile.drop_good("after-odd.md")


def _inflated(pdf: bytes) -> bytes:
    """The PDF's bytes plus every zlib stream in it, decompressed."""
    parts = [pdf]
    for match in re.finditer(rb"stream\r?\n", pdf):
        start = match.end()
        end = pdf.find(b"endstream", start)
        try:
            parts.append(zlib.decompressobj().decompress(pdf[start:end]))
        except zlib.error:
            continue
    return b"".join(parts)


def _output_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".docx":
        with zipfile.ZipFile(path) as zf:
            return b"".join(zf.read(name) for name in zf.namelist())
    if path.suffix == ".pdf":
        return _inflated(data)
    return data


def test_documents_cannot_reach_outside_their_folder(hostile: Hostile) -> None:
    d = hostile.daemon
    for label, (folder, _, target) in REACH_ROUTES.items():
        car = d.sidecar(f"{folder}/reach/{label}.{target}", timeout=180)
        assert car["status"] == "succeeded", car
        output = _output_bytes(d.outbox / car["output"]["path"])
        assert PASSWD_MARK not in output, f"{label}: /etc/passwd leaked into the output"
        assert b"leaked" not in output, f"{label}: the test server's reply is in the output"
        if target == "pdf" or target == "docx":
            assert "local_resource_blocked" in car["warnings"], (label, car["warnings"])
            assert "remote_resource_blocked" in car["warnings"], (label, car["warnings"])
    assert hostile.recorder.hits == [], "a document made the daemon call out"
    hostile.drop_good("after-reach.md")


def test_killed_daemon_takes_its_runaway_children_along(hostile: Hostile) -> None:
    """Last: SIGKILL the daemon mid-way through a runaway pandoc; nothing lingers."""
    d = hostile.daemon
    src = d.base / "good" / "runaway-again.md"
    src.parent.mkdir(exist_ok=True)
    src.write_text("- " * 100_000 + "deep\n")
    os.replace(src, d.inbox / "to-docx" / "runaway-again.md")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(j["file"] == "to-docx/runaway-again.md" for j in d.status()["in_flight"]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the runaway job never started")
    time.sleep(1.0)  # pandoc is running now
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while d.own_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.own_processes() == [], "workers or pandoc outlived the killed daemon"
