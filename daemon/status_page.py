"""The status page (``GET /``): the /status report and readiness, as HTML for people.

One small page, no external assets and no JavaScript: the style is inline, a
``<meta http-equiv="refresh">`` reloads it, and the response's
Content-Security-Policy lets it load nothing at all. Every value that reaches
the page is escaped (``html.escape``), file names first made printable (control
and bidi characters shown as escapes, ``names.printable``): a dropper chooses
them, and a name like ``<img src=x onerror=…>.pdf`` must stay text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from daemon.names import printable
from daemon.readiness import CheckResult

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH_SECONDS", "render_status_page"]

REFRESH_SECONDS = 5
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"
_DASH = "&#8211;"  # shown for a value that is not there
_RECENT = 15  # successes and failures shown; /status has 50 of each

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em .2em 0; text-align: left; }
th { border-bottom: 1px solid #999; } .ok { color: #176f2c; } .bad { color: #b00020; }
.muted { color: #666; } code { font-size: .95em; }
"""


def _e(value: object) -> str:
    """Any value as escaped text (None as a dash)."""
    return _DASH if value is None else html.escape(str(value), quote=True)


def _name(value: object) -> str:
    """A file name from a dropper: printable, then escaped."""
    return _DASH if value is None else html.escape(printable(str(value)), quote=True)


def _when(value: object) -> str:
    """An ISO-8601 UTC time as ``2026-11-30 03:35:05 UTC`` (escaped as given otherwise)."""
    text = str(value) if value is not None else ""
    if len(text) >= 19 and text[10] == "T" and text.endswith("+00:00"):
        return _e(f"{text[:10]} {text[11:19]} UTC")
    return _e(value)


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return _DASH
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """Rows of cells that are already escaped HTML."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>\n" for row in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _readiness(ready: bool, results: Sequence[CheckResult]) -> str:
    failing = [r for r in results if not r.ok]
    state = (
        '<p class="ok"><strong>Ready</strong>: every check passes.</p>'
        if ready
        else '<p class="bad"><strong>Not ready</strong>: '
        + _e(", ".join(r.code for r in failing) or "checks pending")
        + "</p>"
    )
    rows = [
        (
            _e(r.name),
            '<span class="ok">ok</span>' if r.ok else f'<span class="bad">{_e(r.code)}</span>',
            _e(r.message),
        )
        for r in results
    ]
    return state + _table(("check", "state", "why"), rows, "no checks ran yet")


def _lanes(status: Mapping[str, Any]) -> str:
    lanes: Mapping[str, Mapping[str, Any]] = status.get("lanes", {})
    rows = [
        (
            _e(lane),
            _e(info.get("queue_depth")),
            _e(info.get("outstanding")),
            _e(info.get("workers")),
            _e("yes" if info.get("warm") else "no"),
        )
        for lane, info in sorted(lanes.items())
    ]
    pending = f"<p>Files waiting in the inbox: {_e(status.get('pending_in_inbox', 0))}</p>"
    return pending + _table(
        ("lane", "queued", "taken (queued + converting)", "workers", "warm"), rows, "no lanes"
    )


def _in_flight(status: Mapping[str, Any]) -> str:
    rows = [
        (
            _name(item.get("file")),
            _e(item.get("lane")),
            _seconds(item.get("running_seconds")),
            _seconds(item.get("age_seconds")),
            _e(item.get("worker_pid")),
            f"<code>{_e(item.get('job_id'))}</code>",
        )
        for item in status.get("in_flight", [])
    ]
    rows += [
        (
            _name(item.get("file")),
            "queued",
            _DASH,
            _seconds(item.get("age_seconds")),
            _DASH,
            f"<code>{_e(item.get('job_id'))}</code>",
        )
        for item in status.get("queue", [])
    ]
    return _table(
        ("file", "lane", "converting for", "age (since detected)", "worker", "job"),
        rows,
        "no job in flight",
    )


def _successes(status: Mapping[str, Any]) -> str:
    rows = [
        (
            _when(item.get("at")),
            _name(item.get("relative_path")),
            _name(item.get("output")),
            _e(item.get("route")),
            "reused" if item.get("reused") else _seconds(item.get("convert_seconds")),
        )
        for item in list(status.get("recent_successes", []))[:_RECENT]
    ]
    return _table(("finished", "input", "output", "route", "converted in"), rows, "none yet")


def _failures(status: Mapping[str, Any]) -> str:
    rows = [
        (
            _when(item.get("at")),
            _name(item.get("relative_path")),
            f'<span class="bad">{_e(item.get("code"))}</span>',
            _name(item.get("message")),
        )
        for item in list(status.get("recent_failures", []))[:_RECENT]
    ]
    return _table(("failed", "input", "code", "message"), rows, "none since start")


def _replaced(counts: Mapping[str, int] | None) -> str:
    text = ", ".join(f"{k} {v}" for k, v in (counts or {}).items())
    return _e(text) if text else _DASH


def _workers(status: Mapping[str, Any]) -> str:
    rows = [
        (
            _e(lane),
            _e(item.get("slot")) + (" (express)" if item.get("express") else ""),
            _e(item.get("pid")),
            _e("busy" if item.get("busy") else "warm" if item.get("warm") else "starting"),
            _e(item.get("jobs_done")),
            _e(item.get("recycles")),
            _replaced(item.get("replaced")),
        )
        for lane, items in sorted(dict(status.get("workers", {})).items())
        for item in items
    ]
    return _table(
        ("lane", "slot", "pid", "state", "jobs (this worker)", "recycles", "replaced"),
        rows,
        "no workers",
    )


def render_status_page(
    status: Mapping[str, Any], ready: bool, results: Sequence[CheckResult]
) -> str:
    """The page, from ``Service.status()`` and a readiness evaluation."""
    profile = _e(status.get("profile"))
    stuck = status.get("stuck", [])
    stuck_html = (
        "<h2>Stuck jobs</h2>"
        + _table(("job", "file"), ((_e(s.get("job_id")), _name(s.get("file"))) for s in stuck), "")
        if stuck
        else ""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sir Convert-a-Lot · {profile}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Sir Convert-a-Lot · profile {profile}</h1>
<p class="muted">version {_e(status.get("version"))}, revision {_e(status.get("revision"))},
up {_seconds(status.get("uptime_seconds"))}; this page reloads every {REFRESH_SECONDS} s.
Machine-readable: <a href="/metrics">/metrics</a> · <a href="/events">/events</a> ·
<a href="/status">/status</a> · <a href="/readyz">/readyz</a></p>
<h2>Readiness</h2>
{_readiness(ready, results)}
<h2>Queue per lane</h2>
{_lanes(status)}
<h2>Jobs in flight</h2>
{_in_flight(status)}
<h2>Last successes</h2>
{_successes(status)}
<h2>Last failures</h2>
{_failures(status)}
<h2>Workers</h2>
{_workers(status)}
{stuck_html}
</body>
</html>
"""
