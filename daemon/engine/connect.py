"""Connecting to the engine: the URL, the password file, our pool and procrastinate's app.

The password never travels in ``engine_url`` (config refuses it): it is read
from ``engine_password_file`` (a file holding only the password, e.g. a
systemd credential), or libpq finds it in its password file (``~/.pgpass`` or
``PGPASSFILE``). TLS is libpq's: ``sslmode=verify-full`` and ``sslrootcert=`` in
the URL (docs/security.md).
"""

from __future__ import annotations

from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from converters.base import Lane
from daemon.config import ProfileSettings
from daemon.errors import ConfigError

__all__ = [
    "TASK_NAME",
    "connection_kwargs",
    "describe",
    "make_app",
    "make_pool",
    "queue_name",
]

TASK_NAME = "sir_convert_a_lot.convert"
# Seconds a statement waits for a pooled connection before the caller sees the outage.
POOL_TIMEOUT = 5.0


def queue_name(lane: Lane) -> str:
    """The procrastinate queue of a lane: pdf→md jobs only reach GPU-lane workers."""
    return f"sir_convert_a_lot_{lane.value}"


def connection_kwargs(profile: ProfileSettings) -> dict[str, Any]:
    """libpq keyword arguments beside the URL: the password, when a file holds it."""
    kwargs: dict[str, Any] = {"application_name": f"sir-convert-a-lot/{profile.name}"}
    if profile.engine_password_file is not None:
        try:
            password = profile.engine_password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"engine_password_file {profile.engine_password_file} cannot be read: {exc}"
            ) from None
        kwargs["password"] = password
    return kwargs


def _url(profile: ProfileSettings) -> str:
    if profile.engine_url is None:
        raise ConfigError("engine_url is not set for this profile")
    return profile.engine_url


def make_pool(profile: ProfileSettings, max_size: int = 4) -> AsyncConnectionPool[Any]:
    """Our connection pool (not opened). Connections are checked when taken, so
    a restarted PostgreSQL costs one failed statement, not a stuck pool."""
    return AsyncConnectionPool(
        _url(profile),
        kwargs=connection_kwargs(profile),
        min_size=1,
        max_size=max_size,
        timeout=POOL_TIMEOUT,
        open=False,
        check=AsyncConnectionPool.check_connection,
    )


def make_app(profile: ProfileSettings) -> procrastinate.App:
    """procrastinate's app on the same database (not opened)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=_url(profile),
        kwargs=connection_kwargs(profile),
        min_size=1,
        max_size=4,
        timeout=POOL_TIMEOUT,
    )  # procrastinate checks its pooled connections itself
    return procrastinate.App(connector=connector)


def describe(exc: BaseException, limit: int = 500) -> str:
    """An engine error in one line: procrastinate's "Database error." says nothing
    without the database's own message, which it keeps as the cause."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    cause = exc.__cause__
    if cause is not None:
        text += f" ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return text[:limit]
