"""Result reuse and the status page, through the real daemon (docs/automation.md).

One daemon serves this module's short tests (a start costs half a minute on two
cores); the long mode adds a restart with an upgraded converter and a profile
with ``reuse = false``.

Result reuse:

100 copies of one HTML page dropped at once into ``to-pdf/`` give one
conversion and 99 reuses (html->pdf: WeasyPrint, which also reads an image
beside the page); a changed option, a changed stylesheet's content, a
changed image beside the document, a changed input, a corrupt or missing cache
file each give a conversion again. A changed converter version is made real:
the restarted daemon's workers find a newer ``weasyprint`` distribution's
metadata first on their path (what an upgrade of the library does to the
version the route reports), and convert again.

The status page: headless Chromium loads ``/`` of the running daemon after a
success and a failure of a file whose name is HTML; the test reads the page's
text (readiness, lanes, workers, the failure's code, the name shown as text and
never as an element) and keeps a screenshot.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.reuse_cache import ENTRY_FILE
from tests.fixtures.browser import load
from tests.fixtures.daemon import Daemon, sha
from tests.fixtures.web_docs import make_text_pdf

pytestmark = pytest.mark.e2e

MD = "# Reuse\n\nThe same words, dropped again and again.\n\n![logo](logo.svg)\n"
HTML = (
    b"<!doctype html><html><head><title>Reuse</title></head><body><h1>Reuse</h1>"
    b'<p>The same words, dropped again and again.</p><img src="logo.svg"></body></html>'
)
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20">'
    '<rect width="20" height="{w}"/></svg>'
)
COPIES = 100
LONG = os.environ.get("SIR_CONVERT_A_LOT_TEST_LONG") == "1"


def drop_all(daemon: Daemon, files: dict[str, bytes]) -> None:
    """Write each file outside the inbox, then rename it in (atomic arrivals)."""
    staging = daemon.base / "staging"
    staging.mkdir(exist_ok=True)
    for relative, data in files.items():
        temp = staging / relative.replace("/", "_")
        temp.write_bytes(data)
        target = daemon.inbox / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)


def metric(daemon: Daemon, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    found = pattern.search(daemon.metrics())
    return float(found.group(1)) if found else 0.0


def entries(daemon: Daemon) -> list[Path]:
    return sorted(daemon.root.glob(f".state/reuse/??/*/{ENTRY_FILE}"))


def one(daemon: Daemon, relative_input: str, data: bytes, folder: str = "to-pdf") -> dict[str, Any]:
    drop_all(daemon, {f"{folder}/{relative_input}": data})
    return daemon.sidecar(f"{folder}/{Path(relative_input).with_suffix('.pdf')}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[Daemon]:
    """One daemon for this module's short tests (a start costs half a minute on 2 cores)."""
    daemon = Daemon(tmp_path_factory.mktemp("reuse"), models_dir=tiny_models_dir)
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def test_one_conversion_for_100_copies_and_every_change_converts_again(running: Daemon) -> None:
    daemon = running
    logo = {"to-pdf/logo.svg": SVG.format(w=10).encode()}
    drop_all(daemon, logo)
    copies = {f"to-pdf/copy-{i:03}.html": HTML for i in range(COPIES)}
    started = time.monotonic()
    drop_all(daemon, copies)
    sidecars = [daemon.sidecar(f"to-pdf/copy-{i:03}.pdf", timeout=240) for i in range(COPIES)]
    elapsed = time.monotonic() - started
    converted = [s for s in sidecars if s["reused_from"] is None]
    assert len(converted) == 1, [s["reused_from"] for s in sidecars]
    first = converted[0]
    reused = [s for s in sidecars if s["reused_from"] is not None]
    assert {s["reused_from"]["job_id"] for s in reused} == {first["job_id"]}
    assert {s["reused_from"]["finished_at"] for s in reused} == {first["timings"]["finished_at"]}
    assert {s["timings"]["convert_seconds"] for s in reused} == {0}
    assert {s["converter"]["versions"]["weasyprint"] for s in sidecars} == {
        first["converter"]["versions"]["weasyprint"]
    }
    # Every output is the one conversion's bytes, each in a file of its own.
    outputs = [daemon.outbox / s["output"]["path"] for s in sidecars]
    assert {sha(p) for p in outputs} == {first["output"]["sha256"]}
    assert len({p.stat().st_ino for p in outputs}) == COPIES
    assert metric(daemon, "sir_convert_a_lot_jobs_reused_total", '{route="html->pdf"}') == 99
    # The events journal ends each copy once: one job_succeeded, 99 job_reused.
    ids = {s["job_id"] for s in sidecars}
    finals: dict[str, dict[str, Any]] = {}
    for path in sorted((daemon.root / "events").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["job_id"] in ids and event["kind"] in ("job_succeeded", "job_reused"):
                assert event["job_id"] not in finals, event
                finals[event["job_id"]] = event
    assert finals[first["job_id"]]["kind"] == "job_succeeded"
    assert sorted(e["kind"] for e in finals.values()) == ["job_reused"] * 99 + ["job_succeeded"]
    assert {e["reused_from"] for e in finals.values() if e["kind"] == "job_reused"} == {
        first["job_id"]
    }
    saved = metric(daemon, "sir_convert_a_lot_reuse_seconds_saved_total")
    assert saved == pytest.approx(99 * first["timings"]["convert_seconds"], rel=1e-3)
    print(
        f"\nreuse: {COPIES} copies in {elapsed:.1f} s, 1 conversion of "
        f"{first['timings']['convert_seconds']:.3f} s, {len(reused)} reused, "
        f"{saved:.1f} conversion seconds saved"
    )
    assert len(entries(daemon)) == 1

    # md->pdf names the PDF after the file when it has no title: reused only for
    # the same name (here in another folder), converted for another name.
    drop_all(daemon, {"to-pdf/x/notes.md": b"Plain words.\n"})
    notes = daemon.sidecar("to-pdf/x/notes.pdf")
    drop_all(
        daemon, {"to-pdf/y/notes.md": b"Plain words.\n", "to-pdf/y/other.md": b"Plain words.\n"}
    )
    assert daemon.sidecar("to-pdf/y/notes.pdf")["reused_from"]["job_id"] == notes["job_id"]
    assert daemon.sidecar("to-pdf/y/other.pdf")["reused_from"] is None
    # The same bytes again: reused.
    assert one(daemon, "again.html", HTML)["reused_from"] is not None
    # A changed input converts.
    assert one(daemon, "changed.html", HTML + b"<p>One more line.</p>")["reused_from"] is None
    # A changed image beside the document converts; the same image again reuses.
    drop_all(daemon, {"to-pdf/logo.svg": SVG.format(w=15).encode()})
    new_logo = one(daemon, "new-logo.html", HTML)
    assert new_logo["reused_from"] is None
    assert one(daemon, "new-logo-2.html", HTML)["reused_from"] is not None
    # A changed option (a stylesheet in the folder's options) converts, and so does
    # the same stylesheet name with other content.
    styled = {
        "to-pdf/styled/logo.svg": SVG.format(w=15).encode(),
        "to-pdf/styled/print.css": b"body { color: #333; }\n",
        "to-pdf/styled/.sir-convert-a-lot.toml": b'[options]\nstylesheet = "print.css"\n',
    }
    drop_all(daemon, styled)
    assert one(daemon, "styled/a.html", HTML)["reused_from"] is None
    assert one(daemon, "styled/b.html", HTML)["reused_from"] is not None
    drop_all(daemon, {"to-pdf/styled/print.css": b"body { color: #900; }\n"})
    assert one(daemon, "styled/c.html", HTML)["reused_from"] is None

    # A corrupt cache file, then a missing one: converted again, never a wrong output.
    entry_json = next(p for p in entries(daemon) if _entry_job(p) == new_logo["job_id"])
    cached = next(p for p in (entry_json.parent / "files").iterdir())
    cached.write_bytes(cached.read_bytes()[:-10] + b"corrupted!")
    corrupt = one(daemon, "after-corruption.html", HTML)
    assert corrupt["reused_from"] is None
    assert corrupt["output"]["sha256"] == sha(daemon.outbox / corrupt["output"]["path"])
    assert metric(daemon, "sir_convert_a_lot_reuse_discarded_total") == 1
    reused_again = one(daemon, "after-corruption-2.html", HTML)
    assert reused_again["reused_from"]["job_id"] == corrupt["job_id"]
    for path in entries(daemon):
        for file in (path.parent / "files").iterdir():
            file.unlink()
    missing = one(daemon, "after-loss.html", HTML)
    assert missing["reused_from"] is None
    assert metric(daemon, "sir_convert_a_lot_reuse_discarded_total") == 2


def test_pdf_to_md_is_reused(running: Daemon) -> None:
    pdf = make_text_pdf(running.base / "paper.pdf")
    data = pdf.read_bytes()
    drop_all(running, {"to-md/paper.pdf": data})
    first = running.sidecar("to-md/paper.md", timeout=240)
    drop_all(running, {"to-md/copy of paper.pdf": data})
    second = running.sidecar("to-md/copy of paper.md", timeout=240)
    assert first["reused_from"] is None
    assert second["reused_from"] == {
        "job_id": first["job_id"],
        "finished_at": first["timings"]["finished_at"],
    }
    assert second["timings"]["convert_seconds"] == 0
    assert second["output"]["sha256"] == first["output"]["sha256"]
    assert second["input"]["pages"] == first["input"]["pages"] == 1
    assert second["converter"] == first["converter"]
    print(f"\npdf->md: converted in {first['timings']['convert_seconds']:.2f} s, then reused")


HOSTILE = "<img src=x onerror=alert(1)>.weird"


def test_the_status_page_in_a_browser(running: Daemon, tmp_path: Path) -> None:
    drop_all(running, {"to-docx/status-page.md": MD.encode(), f"to-md/{HOSTILE}": b"x"})
    assert running.sidecar("to-docx/status-page.docx")["status"] == "succeeded"
    assert running.error(f"to-md/{HOSTILE}")["error"]["code"] == "unsupported_route"
    shot = tmp_path / "status-page.png"
    page = load(running.base_url + "/", screenshot=shot)
    text = page.text
    assert "Sir Convert-a-Lot · profile eval" in text
    assert "Ready: every check passes." in text
    for heading in ("Queue per lane", "Jobs in flight", "Last successes", "Last failures"):
        assert heading in text
    assert "no job in flight" in text
    assert "to-docx/status-page.md to-docx/status-page.docx md->docx" in text
    # The name is text on the page, never markup: Chromium built no <img> from it.
    assert f"to-md/{HOSTILE} unsupported_route" in text
    assert "<img" not in page.dom and "&lt;img src=x onerror=alert(1)&gt;.weird" in page.dom
    assert "<script" not in page.dom
    # Workers with their recycle counts, and the links to the machine-readable views.
    assert "recycles" in text and "cpu 0 " in text and "gpu 0 " in text
    assert 'href="/metrics"' in page.dom and 'href="/events"' in page.dom
    assert '<meta http-equiv="refresh" content="5">' in page.dom
    print(f"\nstatus page screenshot: {shot}")


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long mode only (SIR_CONVERT_A_LOT_TEST_LONG=1)")
def test_a_changed_converter_version_converts_again(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    first = one(daemon, "page.html", HTML)
    assert one(daemon, "page-2.html", HTML)["reused_from"]["job_id"] == first["job_id"]
    # An upgraded weasyprint: its distribution's metadata ahead on the workers' path,
    # which is where the version a route reports comes from.
    daemon.stop()
    upgrade = tmp_path / "upgraded"
    meta = upgrade / "weasyprint-999.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: weasyprint\nVersion: 999.0\n")
    daemon.extra_env["PYTHONPATH"] = f"{upgrade}{os.pathsep}{daemon.env()['PYTHONPATH']}"
    daemon.start()
    upgraded = one(daemon, "upgraded.html", HTML)
    assert upgraded["converter"]["versions"]["weasyprint"] == "999.0"
    assert upgraded["reused_from"] is None
    assert one(daemon, "upgraded-2.html", HTML)["reused_from"]["job_id"] == upgraded["job_id"]


def _entry_job(path: Path) -> str:
    return str(json.loads(path.read_text())["job_id"])


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long mode only (SIR_CONVERT_A_LOT_TEST_LONG=1)")
def test_reuse_false_converts_every_copy(tmp_path: Path, tiny_models_dir: Path) -> None:
    daemon = Daemon(tmp_path, extra_config="reuse = false\n", models_dir=tiny_models_dir)
    try:
        daemon.start()
        drop_all(daemon, {f"to-docx/copy-{i}.md": MD.encode() for i in range(3)})
        sidecars = [daemon.sidecar(f"to-docx/copy-{i}.docx") for i in range(3)]
        assert [s["reused_from"] for s in sidecars] == [None, None, None]
        assert all(s["timings"]["convert_seconds"] > 0 for s in sidecars)
        assert not (daemon.root / ".state" / "reuse").exists()
    finally:
        daemon.stop()
