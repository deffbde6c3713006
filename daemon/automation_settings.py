"""The settings of the automation around the conversions, one table each in a
profile: ``[events]`` (the journal), ``[notify]`` (webhooks) and ``[retention]``
(pruning). Part of the one settings model (``daemon/config.py`` imports them
into ``ProfileSettings``); documented in docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["EventsSettings", "NotifySettings", "RetentionSettings", "is_http_url"]

_HTTP_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL without spaces, no dot segments in its path (so
    that a prefix in ``allowed_urls`` cannot be left by ``/../``)."""
    if not _HTTP_URL.match(value) or "\\" in value:
        return False
    path = value.split("://", 1)[1].partition("/")[2].split("?", 1)[0].split("#", 1)[0]
    segments = path.lower().replace("%2e", ".").split("/")
    return not any(segment in (".", "..") for segment in segments)


class EventsSettings(BaseModel):
    """``[profiles.NAME.events]``: the events journal in ``<data root>/events/``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_segment_mb: float = Field(default=16.0, gt=0)
    retention_days: float | None = Field(default=30.0, gt=0)


class NotifySettings(BaseModel):
    """``[profiles.NAME.notify]``: webhooks. Off (no outbound HTTP) unless ``url``
    or ``allowed_urls`` is set. ``allowed_urls`` are the URLs a folder's options
    file may name as its ``notify_url``: an entry ending in ``/`` allows every URL
    that starts with it, any other entry only itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    allowed_urls: tuple[str, ...] = ()
    secret_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError("notify.url must be an http:// or https:// URL")
        return value

    @field_validator("allowed_urls")
    @classmethod
    def _http_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not is_http_url(url):
                raise ValueError(f"notify.allowed_urls: {url!r} is not an http:// or https:// URL")
        return value

    @property
    def enabled(self) -> bool:
        return self.url is not None or bool(self.allowed_urls)

    def allows(self, url: str) -> bool:
        """May a folder's options send its final events to ``url``?"""
        if not is_http_url(url):
            return False
        return any(url == a or (a.endswith("/") and url.startswith(a)) for a in self.allowed_urls)

    @field_validator("secret_file")
    @classmethod
    def _absolute_secret(cls, value: Path | None) -> Path | None:
        return value.absolute() if value is not None else None


class RetentionSettings(BaseModel):
    """``[profiles.NAME.retention]``: prune archive/, failed/, outbox/ (off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    archive_days: float | None = Field(default=None, gt=0)
    failed_days: float | None = Field(default=None, gt=0)
    outbox_days: float | None = Field(default=None, gt=0)
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)

    @property
    def enabled(self) -> bool:
        return any(d is not None for d in (self.archive_days, self.failed_days, self.outbox_days))
