"""Push: POST each final event of the journal to the profile's ``[notify] url``
and, for a job whose folder names one, to its ``notify_url``.

The journal is the outbox. One asyncio task reads it after a durable cursor
(``.state/webhook-cursor.json``, the last seq handled), POSTs every final event
(``job_succeeded``, ``job_failed``, ``job_reused``) in ``seq`` order, and moves
the cursor on only after a 2xx answer. A receiver that is down or slow is
retried with exponential back-off (1 s doubling up to ``backoff_max_seconds``)
until it answers: delivery is at least once, a duplicate always carries the same
``event_id``, and conversion never waits for it (the sender only reads the
journal). Off unless ``url`` is set: without it the daemon makes no outbound
connection.

Two senders, each with its own cursor, so one receiver that is down never holds
back the other: ``profile`` posts every final event to ``[notify] url``
(``webhook-cursor.json``); ``folder`` posts the final events that carry a
``notify_url`` (decided at the claim, kept in the job's record) to that URL
(``webhook-folder-cursor.json``), if ``[notify] allowed_urls`` still allows it.

Headers: ``X-Sir-Convert-A-Lot-Event`` (kind), ``X-Sir-Convert-A-Lot-Event-Id``
and, with a ``secret_file``, ``X-Sir-Convert-A-Lot-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body under the file's content (trailing whitespace
stripped).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from pathlib import Path
from typing import Literal

import aiohttp
import structlog

from daemon.automation_settings import NotifySettings
from daemon.durable import atomic_write
from daemon.errors import ConfigError
from daemon.event_reader import JournalReader
from daemon.events import FINAL_KINDS, Event, Journal
from daemon.layout import DataRoot
from daemon.metrics import Metrics

__all__ = ["SIGNATURE_HEADER", "Target", "WebhookSender", "sign"]

log = structlog.get_logger("sir_convert_a_lot.webhooks")

SIGNATURE_HEADER = "X-Sir-Convert-A-Lot-Signature"
EVENT_HEADER = "X-Sir-Convert-A-Lot-Event"
EVENT_ID_HEADER = "X-Sir-Convert-A-Lot-Event-Id"
POLL_SECONDS = 0.25
Target = Literal["profile", "folder"]
_CURSORS: dict[Target, str] = {
    "profile": "webhook-cursor.json",
    "folder": "webhook-folder-cursor.json",
}


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"notify.secret_file {path} cannot be read: {exc}") from None
    if not secret:
        raise ConfigError(f"notify.secret_file {path} is empty")
    return secret


class WebhookSender:
    def __init__(
        self,
        settings: NotifySettings,
        root: DataRoot,
        journal: Journal,
        metrics: Metrics,
        *,
        target: Target = "profile",
    ) -> None:
        assert target == "folder" or settings.url is not None
        self.target: Target = target
        self.settings = settings
        self.root = root
        self.journal = journal
        self.metrics = metrics
        self.secret = _read_secret(settings.secret_file) if settings.secret_file else None
        self.cursor_path = root.state / _CURSORS[target]
        self.delivered = self._load_cursor()

    def _url(self, event: Event) -> str | None:
        """Where this sender posts ``event``; None: not this sender's."""
        if event.kind not in FINAL_KINDS:
            return None
        if self.target == "profile":
            return self.settings.url
        url = event.notify_url
        if url is not None and not self.settings.allows(url):
            log.warning("webhook_url_not_allowed", seq=event.seq, event_id=event.event_id)
            self.metrics.webhook_deliveries.labels("skipped").inc()
            return None
        return url

    def _load_cursor(self) -> int:
        """The last seq handled; on first use, the journal's end (history is not pushed)."""
        try:
            return int(json.loads(self.cursor_path.read_bytes())["delivered_seq"])
        except FileNotFoundError:
            self._save_cursor(self.journal.last_seq)
            return self.journal.last_seq
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.cursor_path} is unreadable ({exc}); remove it") from None

    def _save_cursor(self, seq: int) -> None:
        body = json.dumps({"delivered_seq": seq, "target": self.target}).encode()
        atomic_write(self.cursor_path, body, tmp_dir=self.root.tmp)

    async def run(self) -> None:
        """Until cancelled (the daemon's shutdown): deliver, in order, forever."""
        reader = JournalReader(self.root.events, after=self.delivered)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                gap, events = await asyncio.to_thread(reader.poll)
                if gap is not None:
                    lost = gap.first_available - gap.after - 1
                    log.error("webhook_events_rotated_away", **gap.as_dict(), lost=lost)
                    self.metrics.webhook_deliveries.labels("skipped").inc(lost)
                moved = False
                for event in events:
                    if (url := self._url(event)) is not None:
                        if moved:
                            await asyncio.to_thread(self._save_cursor, self.delivered)
                        await self._deliver(session, url, event)
                        self.delivered = event.seq
                        await asyncio.to_thread(self._save_cursor, self.delivered)
                        moved = False
                    else:
                        self.delivered, moved = event.seq, True
                    self._backlog()
                if moved:
                    await asyncio.to_thread(self._save_cursor, self.delivered)
                self._backlog()
                if not events:
                    await asyncio.sleep(POLL_SECONDS)

    def _backlog(self) -> None:
        if self.target == "profile":  # the gauge is the profile URL's
            self.metrics.webhook_backlog.set(self.journal.last_seq - self.delivered)

    async def _deliver(self, session: aiohttp.ClientSession, url: str, event: Event) -> None:
        body = event.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: str(event.kind),
            EVENT_ID_HEADER: event.event_id,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        failures = 0
        while True:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.metrics.webhook_deliveries.labels("delivered").inc()
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            failures += 1
            self.metrics.webhook_deliveries.labels("failed").inc()
            wait = min(self.settings.backoff_max_seconds, 2.0 ** (failures - 1))
            wait *= random.uniform(0.8, 1.0)  # noqa: S311 (jitter, not a secret)
            log.warning(
                "webhook_delivery_failed",
                target=self.target,
                seq=event.seq,
                event_id=event.event_id,
                problem=problem[:300],
                attempt=failures,
                retry_in=round(wait, 2),
            )
            await asyncio.sleep(wait)
