"""The loopback HTTP listener: /healthz, /readyz, /metrics, /status and the status page (/).

An aiohttp app factory with typed ``web.AppKey`` state. Every handler asks the
Service through its public methods; the app decides nothing. Readiness is
re-evaluated once a second by the Service's own supervisor loop (which pauses
intake and talks to systemd), so the daemon behaves the same without this
listener. Requests are not logged line by line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.status_page import CONTENT_SECURITY_POLICY, render_status_page

if TYPE_CHECKING:
    from daemon.service import Service

__all__ = ["SERVICE", "make_app"]

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
    app.router.add_get("/", status_page)
    return app
