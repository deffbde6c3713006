"""ops/bench in its smallest mode: the harness runs and its JSON keeps its shape.

The smoke mode builds the whole corpus and measures the daemon's own inbox scan
on a small idle tree, without starting a daemon. No timing is asserted: the
numbers are only checked to be numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_help_names_the_modes() -> None:
    done = subprocess.run(
        ["bash", str(BENCH), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ops/bench")
    for word in ("--quick", "--full", "--json", "--smoke"):
        assert word in done.stdout


def test_smoke_mode_writes_the_report_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    markdown = tmp_path / "bench.md"
    done = subprocess.run(
        ["bash", str(BENCH), "--smoke", "--json", str(out), "--markdown", str(markdown)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    assert report["schema"] == "sir-convert-a-lot-bench/1"
    assert report["mode"] == "smoke"
    assert report["errors"] == []
    machine = report["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] and machine["ram_gib"] > 0
    # Every corpus kind was generated, and none is empty.
    assert set(report["corpus"]) >= {
        "md_small", "md_medium", "html_small", "html_medium", "docx_small",
        "docx_medium", "pdf_text_small", "pdf_text_medium", "pdf_scanned",
    }  # fmt: skip
    assert all(size > 0 for size in report["corpus"].values())

    scan = report["results"]["scan"]
    assert scan["idle_files"] == report["plan"]["scan_files"] > 0
    assert scan["scan_inbox_entries"] == scan["idle_files"]  # the walk saw every idle file
    for key in (
        "scan_inbox_seconds",
        "service_rescan_first_seconds",
        "service_rescan_seconds",
        "service_rescan_in_event_loop_seconds",
        "service_rescan_100k_seconds_estimate",
    ):
        assert _number(scan[key]), key

    assert report["targets"], "every report states its targets"
    for target in report["targets"]:
        assert set(target) == {"name", "target", "measured", "met", "note"}
        assert _number(target["measured"]) and isinstance(target["met"], bool)
    assert any("rescan" in t["name"] for t in report["targets"])

    # The same report, as the tables printed and the Markdown for docs/performance.md.
    assert "Targets" in done.stdout and "rescan" in done.stdout
    assert markdown.read_text().count("|---") >= 2
    # Nothing is left behind in the temporary folder but our own outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]
