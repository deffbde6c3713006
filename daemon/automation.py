"""The daemon's tasks for automation, beside the supervisor: the webhook senders
(``[notify] url`` and the folders' ``notify_url``) and the retention sweeper
(``[retention]``). They read and write only what the journal and the data root
hold, and never hold up a job."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from daemon.config import ProfileSettings
from daemon.events import Journal
from daemon.layout import DataRoot
from daemon.metrics import Metrics
from daemon.retention import Sweeper

if TYPE_CHECKING:
    from daemon.webhooks import WebhookSender

__all__ = ["AutomationTasks", "open_journal"]

log = structlog.get_logger("sir_convert_a_lot.automation")


def open_journal(settings: ProfileSettings, root: DataRoot, metrics: Metrics) -> Journal:
    """The profile's events journal, counting what it writes."""
    return Journal(
        root.events,
        settings.name,
        max_segment_bytes=int(settings.events.max_segment_mb * 2**20),
        retention_days=settings.events.retention_days,
        on_write=lambda event: metrics.events_written.labels(str(event.kind)).inc(),
    )


class AutomationTasks:
    def __init__(
        self, settings: ProfileSettings, root: DataRoot, journal: Journal, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.root = root
        self.journal = journal
        self.metrics = metrics
        self.senders: list[WebhookSender] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def prepare(self) -> None:
        """Before recovery: the webhook sender reads its cursor (on first use, the
        journal's end, so recovery's events are sent). Refuses an unreadable secret."""
        notify = self.settings.notify
        if notify.enabled:
            from daemon.webhooks import WebhookSender  # aiohttp's client: only when asked for

            if notify.url is not None:
                self.senders.append(WebhookSender(notify, self.root, self.journal, self.metrics))
            if notify.allowed_urls:
                self.senders.append(
                    WebhookSender(notify, self.root, self.journal, self.metrics, target="folder")
                )

    def start(self) -> None:
        for sender in self.senders:
            self._tasks.append(asyncio.create_task(sender.run()))
        if self.settings.retention.enabled:
            self._tasks.append(asyncio.create_task(self._sweep_forever()))

    async def _sweep_forever(self) -> None:
        sweeper = Sweeper(self.settings.retention, self.root, self.journal, self.metrics)
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(sweeper.sweep)
            except Exception:
                log.exception("retention_sweep_failed")
                self.metrics.internal_errors.labels("retention").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.settings.retention.sweep_interval_seconds
                )

    async def stop(self) -> None:
        """The sender resumes from its cursor after the restart; a sweep cut short
        is finished by the next one."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
