"""The loopback HTTP listener: /healthz, /readyz, /metrics, /status, /events and
the status page (/).

An aiohttp app factory with typed ``web.AppKey`` state. Every handler asks the
Service through its public methods; the app decides nothing. Readiness is
re-evaluated once a second by the Service's own supervisor loop (which pauses
intake and talks to systemd), so the daemon behaves the same without this
listener. Requests are not logged line by line.

``GET /events?since=SEQ`` streams the events journal as Server-Sent Events
(``id:`` is the seq, ``event:`` the kind, ``data:`` the event's JSON; a
reconnecting client's ``Last-Event-ID`` wins over ``since``). Events rotated
away are announced by one ``event: gap`` with ``{"after", "first_available"}``.
``follow=0`` ends the stream after the events there are now.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.status_page import CONTENT_SECURITY_POLICY, render_status_page

if TYPE_CHECKING:
    from daemon.service import Service

__all__ = ["SERVICE", "make_app"]

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0

SERVICE: web.AppKey[Service] = web.AppKey("service")


async def healthz(request: web.Request) -> web.Response:
    alive, body = request.app[SERVICE].health()
    return web.json_response(body, status=200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ready, results = service.evaluate()
    body = {
        "ready": ready,
        "reasons": [
            {"code": r.code, "message": r.message, "details": r.details}
            for r in results
            if not r.ok
        ],
        "checks": [r.as_dict() for r in results],
        **service.identity(),
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.evaluate()  # the readiness gauges are current in every scrape
    payload = generate_latest(service.metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].status())


def _since(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("since") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="since (or Last-Event-ID) must be a seq number") from None
    if value < 0:
        raise web.HTTPBadRequest(text="since must not be negative")
    return value


async def events(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    reader = service.events_reader(_since(request))
    if reader is None:
        raise web.HTTPNotFound(text="this process keeps no events journal")
    follow = request.query.get("follow", "1") not in ("0", "false", "no")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    beat = time.monotonic()
    while True:
        gap, found = await asyncio.to_thread(reader.poll)
        if gap is not None:
            await response.write(f"event: gap\ndata: {json.dumps(gap.as_dict())}\n\n".encode())
        for event in found:
            frame = f"id: {event.seq}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"
            await response.write(frame.encode())
        if not follow or service.stopping.is_set():
            break
        if found or gap is not None:
            beat = time.monotonic()
        elif time.monotonic() - beat >= KEEPALIVE_SECONDS:
            await response.write(b": keep-alive\n\n")
            beat = time.monotonic()
        if not found:
            await asyncio.sleep(POLL_SECONDS)
    await response.write_eof()
    return response


async def status_page(request: web.Request) -> web.Response:
    """The status page for people (daemon/status_page.py): HTML, no script, no assets."""
    service = request.app[SERVICE]
    ready, results = service.evaluate()
    page = render_status_page(service.status(), ready, results)
    return web.Response(
        text=page,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/events", events)
    app.router.add_get("/", status_page)
    return app
