"""The status page's HTML (daemon/status_page.py) from a /status report.

Names come from droppers: each one here would be markup if it were not
escaped. The page is parsed back with the standard library's HTML parser and
its elements are counted, so an unescaped name shows up as an element.
"""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser
from typing import Any

import pytest

from daemon.readiness import CheckResult
from daemon.status_page import render_status_page
from tests.fixtures.browser import page_text

pytestmark = pytest.mark.unit

HOSTILE = '<img src=x onerror=alert(1)>"&.pdf'


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen[tag] += 1


def report() -> dict[str, Any]:
    return {
        "profile": "eval<b>",
        "version": "0.1.0",
        "revision": "abc",
        "uptime_seconds": 4000.0,
        "pending_in_inbox": 2,
        "queue": [{"job_id": "j2", "file": f"to-md/queued {HOSTILE}", "age_seconds": 12.5}],
        "in_flight": [
            {
                "job_id": "j1",
                "file": f"to-md/{HOSTILE}",
                "lane": "gpu",
                "worker_pid": 4242,
                "running_seconds": 3.25,
                "age_seconds": 200.0,
            }
        ],
        "lanes": {
            "gpu": {"workers": 1, "warm": True, "queue_depth": 0, "outstanding": 1},
            "cpu": {"workers": 4, "warm": False, "queue_depth": 1, "outstanding": 1},
        },
        "workers": {
            "cpu": [
                {
                    "slot": 0,
                    "express": False,
                    "pid": 11,
                    "warm": True,
                    "busy": False,
                    "jobs_done": 7,
                    "recycles": 2,
                    "replaced": {"recycle": 2, "timeout": 1},
                }
            ]
        },
        "recent_successes": [
            {
                "job_id": "s1",
                "relative_path": f"to-pdf/{HOSTILE}.md",
                "output": "to-pdf/a.pdf",
                "route": "md->pdf",
                "convert_seconds": 0.5,
                "reused": False,
                "at": "2026-11-30T03:00:00.123456+00:00",
            },
            {
                "job_id": "s2",
                "relative_path": "to-pdf/b.md",
                "output": "to-pdf/b.pdf",
                "route": "md->pdf",
                "convert_seconds": 0.0,
                "reused": True,
                "at": "2026-11-30T03:00:01+00:00",
            },
        ],
        "recent_failures": [
            {
                "job_id": "f1",
                "relative_path": "to-md/bell\x1b[31m.weird",
                "code": "unsupported_route",
                "message": f"no route for {HOSTILE}",
                "at": "2026-11-30T03:00:02+00:00",
            }
        ],
        "stuck": [{"job_id": "k1", "file": f"to-md/{HOSTILE}"}],
    }


def test_every_name_is_text_and_every_section_is_there() -> None:
    checks = [
        CheckResult("workers", True, "workers_not_warm"),
        CheckResult("disk", False, "disk_low", "only 3 MB <free>"),
    ]
    page = render_status_page(report(), False, checks)
    tags = Tags()
    tags.feed(page)
    assert tags.seen["img"] == 0 and tags.seen["script"] == 0
    assert tags.seen["b"] == 0 and tags.seen["free"] == 0
    assert tags.seen["a"] == 4  # /metrics, /events, /status, /readyz
    text = page_text(page)
    assert "Sir Convert-a-Lot · profile eval<b>" in text
    assert "Not ready: disk_low" in text
    assert "disk disk_low only 3 MB <free>" in text
    assert f"to-md/{HOSTILE} gpu 3.2 s 3.3 min 4242 j1" in text
    assert f"to-md/queued {HOSTILE} queued" in text
    assert "12.5 s" in text
    assert "cpu 1 1 4 no" in text and "gpu 0 1 1 yes" in text
    assert f"2026-11-30 03:00:00 UTC to-pdf/{HOSTILE}.md to-pdf/a.pdf md->pdf 0.5 s" in text
    assert "to-pdf/b.md to-pdf/b.pdf md->pdf reused" in text
    # A control character is shown as an escape, never sent to the browser.
    assert "to-md/bell\\x1b[31m.weird unsupported_route" in text and "\x1b" not in page
    assert "cpu 0 11 warm 7 2 recycle 2, timeout 1" in text
    assert "Stuck jobs" in text
    assert "up 66.7 min" in text


def test_a_ready_daemon_with_nothing_to_do() -> None:
    empty = {"profile": "prod", "lanes": {}, "workers": {}}
    text = page_text(render_status_page(empty, True, [CheckResult("disk", True, "disk_low")]))
    assert "Ready: every check passes." in text
    assert "no job in flight" in text and "none yet" in text and "none since start" in text
    assert "Stuck jobs" not in text
