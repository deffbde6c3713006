"""The errors only the daemon raises: configuration, lost workers, lane limits, crash loops.

They are ``SirError`` subclasses like the conversion errors of
``converters/errors.py``, with the same stable codes, exit statuses and
``retryable`` flags; they live here because no converter raises them
(``ResourceLimitExceeded``, which pandoc's heap cap raises too, lives there and
is re-exported here). Daemon
code takes ``known_codes`` and ``error_for_code`` from this module: importing
it is what puts these codes into the one registry (``known_codes`` walks the
subclasses of ``SirError``), so a worker's ``worker_crashed`` is never read
back as ``converter_failed``.
"""

from __future__ import annotations

from converters.errors import (
    ConversionError,
    ExitCode,
    ResourceLimitExceeded,
    SirError,
    error_for_code,
    known_codes,
)

__all__ = [
    "ConfigError",
    "CrashLoop",
    "DataRootOverlap",
    "EngineUnavailable",
    "InputTooLargeForEngine",
    "InputStillChanging",
    "ResourceLimitExceeded",
    "WorkerCrashed",
    "error_for_code",
    "known_codes",
]


class ConfigError(SirError):
    code = "config_invalid"
    exit_code = ExitCode.CONFIG


class DataRootOverlap(ConfigError):
    code = "data_root_overlap"


class WorkerCrashed(ConversionError):
    code = "worker_crashed"
    exit_code = ExitCode.TEMPFAIL
    retryable = True


class CrashLoop(ConversionError):
    """The daemon died this many times while the job was in flight."""

    code = "crash_loop"
    exit_code = ExitCode.TEMPFAIL
    retryable = True  # the daemon may have been killed for reasons of its own


class InputStillChanging(ConversionError):
    """A writer kept changing the file after it settled, even across retries."""

    code = "input_still_changing"
    exit_code = ExitCode.TEMPFAIL
    retryable = True


class InputTooLargeForEngine(ConversionError):
    """The input (with its drop-folder snapshot) is over ``engine_max_input_bytes``:
    the engine carries bytes through PostgreSQL, and this is its cap."""

    code = "input_too_large_for_engine"
    exit_code = ExitCode.DATAERR


class EngineUnavailable(SirError):
    """PostgreSQL (the shared job engine) cannot be reached, or its schema is not there."""

    code = "engine_unavailable"
    exit_code = ExitCode.TEMPFAIL
    retryable = True
