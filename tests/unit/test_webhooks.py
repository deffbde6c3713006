"""The webhook sender (daemon/webhooks.py) against a real aiohttp server on
loopback: only final events, in order, signed; the cursor is durable, starts at
the journal's end on first use, and a receiver that refuses is retried."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.config import NotifySettings
from daemon.events import EventKind, Journal
from daemon.layout import DataRoot
from daemon.metrics import Metrics
from daemon.webhooks import SIGNATURE_HEADER, WebhookSender, sign

pytestmark = pytest.mark.unit


class Hook:
    def __init__(self, refuse_first: int = 0) -> None:
        self.refuse = refuse_first
        self.got: list[tuple[dict[str, Any], str, str]] = []  # body, signature, event id

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=500)
        self.got.append(
            (
                json.loads(body),
                request.headers.get(SIGNATURE_HEADER, ""),
                request.headers.get("X-Sir-Convert-A-Lot-Event-Id", ""),
            )
        )
        return web.Response(status=204)


def cursor(root: DataRoot, name: str = "webhook-cursor.json") -> int | None:
    try:
        return int(json.loads((root.state / name).read_text())["delivered_seq"])
    except FileNotFoundError:
        return None


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_final_events_are_posted_signed_in_order_and_the_cursor_survives(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    hook = Hook(refuse_first=1)
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    secret = tmp_path / "secret"
    secret.write_text("k3y\n")
    root = DataRoot(tmp_path / "root")
    root.create()
    journal = Journal(root.events, "eval")
    journal.append(EventKind.JOB_SUCCEEDED, "history:job_succeeded", job_id="history")
    settings = NotifySettings(
        url=str(server.make_url("/hook")), secret_file=secret, backoff_max_seconds=0.2
    )
    metrics = Metrics("eval", routes=["md->pdf"])

    sender = WebhookSender(settings, root, journal, metrics)
    assert sender.delivered == 1, "first use: history is not pushed"
    journal.append(EventKind.JOB_CLAIMED, "a:job_claimed", job_id="a")
    journal.append(EventKind.JOB_SUCCEEDED, "a:job_succeeded", job_id="a", path="outbox/a.pdf")
    journal.append(EventKind.JOB_FAILED, "b:job_failed", job_id="b", code="corrupt_input")
    task = asyncio.create_task(sender.run())
    try:
        # The cursor moves after the answer: wait for it too, not only the POST.
        await wait_for(lambda: len(hook.got) == 2 and cursor(root) == 4)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(b["seq"], b["kind"], i) for b, _, i in hook.got] == [
        (3, "job_succeeded", "a:job_succeeded"),
        (4, "job_failed", "b:job_failed"),
    ]
    for body, signature, _ in hook.got:
        raw = json.dumps(body, separators=(",", ":")).encode()
        assert signature == sign(b"k3y", raw)
        assert signature == "sha256=" + hmac.new(b"k3y", raw, hashlib.sha256).hexdigest()
    assert cursor(root) == 4
    assert metrics.webhook_deliveries.labels("failed")._value.get() == 1

    # A restart resumes after the cursor: nothing is posted twice.
    journal.append(EventKind.JOB_SUCCEEDED, "c:job_succeeded", job_id="c")
    again = WebhookSender(settings, root, journal, metrics)
    task = asyncio.create_task(again.run())
    try:
        await wait_for(lambda: len(hook.got) == 3)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [i for _, _, i in hook.got] == ["a:job_succeeded", "b:job_failed", "c:job_succeeded"]
    journal.close()


def test_an_unreadable_secret_refuses_to_start(tmp_path: Path) -> None:
    from daemon.errors import ConfigError

    root = DataRoot(tmp_path / "root")
    root.create()
    journal = Journal(root.events, "eval")
    settings = NotifySettings(url="http://127.0.0.1:9/x", secret_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match="secret_file"):
        WebhookSender(settings, root, journal, Metrics("eval", routes=[]))
    with pytest.raises(ValueError, match="http"):
        NotifySettings(url="ftp://example.invalid/")
    journal.close()


async def test_a_folder_url_gets_its_jobs_final_events_beside_the_profile_url(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    """Two receivers, two cursors: the folder's receiver refuses for a while and
    the profile's gets everything meanwhile; each gets each event once, signed."""
    profile_hook, folder_hook = Hook(), Hook(refuse_first=3)
    app = web.Application()
    app.router.add_post("/profile", profile_hook.handle)
    app.router.add_post("/hooks/team-a", folder_hook.handle)
    server = await aiohttp_server(app)
    secret = tmp_path / "secret"
    secret.write_text("k3y")
    root = DataRoot(tmp_path / "root")
    root.create()
    journal = Journal(root.events, "eval")
    folder_url = str(server.make_url("/hooks/team-a"))
    settings = NotifySettings(
        url=str(server.make_url("/profile")),
        allowed_urls=(str(server.make_url("/hooks/")),),
        secret_file=secret,
        backoff_max_seconds=0.2,
    )
    metrics = Metrics("eval", routes=["md->pdf"])
    senders = [
        WebhookSender(settings, root, journal, metrics),
        WebhookSender(settings, root, journal, metrics, target="folder"),
    ]
    journal.append(EventKind.JOB_SUCCEEDED, "a:job_succeeded", job_id="a", notify_url=folder_url)
    journal.append(EventKind.JOB_SUCCEEDED, "b:job_succeeded", job_id="b")
    journal.append(EventKind.JOB_FAILED, "c:job_failed", job_id="c", notify_url=folder_url)
    # No longer allowed (the profile changed): skipped, never posted.
    journal.append(
        EventKind.JOB_FAILED, "d:job_failed", job_id="d", notify_url="http://127.0.0.1:9/x"
    )
    tasks = [asyncio.create_task(s.run()) for s in senders]
    try:
        await wait_for(lambda: len(profile_hook.got) == 4)
        assert folder_hook.got == [], "the folder's receiver still refuses"
        await wait_for(lambda: len(folder_hook.got) == 2)
        await wait_for(
            lambda: cursor(root) == 4 and cursor(root, "webhook-folder-cursor.json") == 4
        )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [i for _, _, i in profile_hook.got] == [
        "a:job_succeeded",
        "b:job_succeeded",
        "c:job_failed",
        "d:job_failed",
    ]
    assert [i for _, _, i in folder_hook.got] == ["a:job_succeeded", "c:job_failed"]
    for body, signature, _ in folder_hook.got:
        assert body["notify_url"] == folder_url
        raw = json.dumps(body, separators=(",", ":")).encode()
        assert signature == sign(b"k3y", raw)
    assert metrics.webhook_deliveries.labels("skipped")._value.get() == 1
    assert metrics.webhook_deliveries.labels("failed")._value.get() == 3
    journal.close()
