"""The error catalogue: every failure is a type with a stable code.

The code flows unchanged into the error sidecar (``error.code``), into the
``code`` label of ``sir_convert_a_lot_jobs_total`` and, for the CLI, into the
process exit code. Codes are part of the public interface: never rename one.

This module holds the errors a conversion can end with; the errors only the
daemon raises (configuration, crash loops, lost workers, lane limits) live in
``daemon/errors.py``. Both subclass ``SirError``, so ``known_codes`` sees every
code once the daemon's module is imported (``daemon.errors`` re-exports it, and
the daemon uses that).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "ConversionError",
    "ConverterFailed",
    "FailureCause",
    "CorruptInput",
    "DependencyMissing",
    "EncryptedInput",
    "ExitCode",
    "GpuUnavailable",
    "InputTooLarge",
    "ModelsMissing",
    "NotRegularFile",
    "OptionsInvalid",
    "SirError",
    "ResourceLimitExceeded",
    "Timeout",
    "TooManyPages",
    "UnsupportedContent",
    "UnsupportedRoute",
    "error_for_code",
    "known_codes",
]


class ExitCode(enum.IntEnum):
    """Process exit statuses: sysexits.h values, so shells and systemd can tell failures apart."""

    OK = 0
    FAILED = 1
    DATAERR = 65
    UNAVAILABLE = 69
    SOFTWARE = 70
    TEMPFAIL = 75
    CONFIG = 78
    INTERRUPTED = 130


EX_DATAERR = ExitCode.DATAERR
EX_UNAVAILABLE = ExitCode.UNAVAILABLE
EX_SOFTWARE = ExitCode.SOFTWARE
EX_TEMPFAIL = ExitCode.TEMPFAIL


class SirError(Exception):
    """Base of every error this project raises on purpose."""

    code: ClassVar[str] = "internal_error"
    exit_code: ClassVar[ExitCode] = EX_SOFTWARE
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConversionError(SirError):
    """A job failed; the input goes to ``failed/`` with this code."""

    code = "conversion_failed"


class UnsupportedRoute(ConversionError):
    code = "unsupported_route"
    exit_code = EX_DATAERR


class UnsupportedContent(ConversionError):
    code = "unsupported_content"
    exit_code = EX_DATAERR


class CorruptInput(ConversionError):
    code = "corrupt_input"
    exit_code = EX_DATAERR


class EncryptedInput(ConversionError):
    code = "encrypted_input"
    exit_code = EX_DATAERR


class InputTooLarge(ConversionError):
    code = "input_too_large"
    exit_code = EX_DATAERR


class TooManyPages(ConversionError):
    code = "too_many_pages"
    exit_code = EX_DATAERR


class NotRegularFile(ConversionError):
    code = "not_regular_file"
    exit_code = EX_DATAERR


class OptionsInvalid(ConversionError):
    code = "options_invalid"
    exit_code = EX_DATAERR
    retryable = True  # fixing the options file and retrying helps


class ModelsMissing(ConversionError):
    code = "models_missing"
    exit_code = EX_UNAVAILABLE
    retryable = True


class GpuUnavailable(ConversionError):
    code = "gpu_unavailable"
    exit_code = EX_UNAVAILABLE
    retryable = True


class DependencyMissing(ConversionError):
    code = "dependency_missing"
    exit_code = EX_UNAVAILABLE
    retryable = True


class Timeout(ConversionError):
    code = "timeout"
    exit_code = EX_TEMPFAIL


class ResourceLimitExceeded(ConversionError):
    """The job needed more memory than its lane allows.

    Raised in the main process when a worker passes its lane's memory ceiling
    and is killed, in the worker when the hard cap refuses an allocation, and
    by a converter whose tool passed its own cap (pandoc's heap). 65 like
    ``input_too_large``: the input demands more than the profile allows, and
    running it again with the same settings fails the same way, so it is
    neither retried on another worker nor ``retryable``.
    """

    code = "resource_limit_exceeded"
    exit_code = EX_DATAERR


class ConverterFailed(ConversionError):
    code = "converter_failed"
    exit_code = EX_SOFTWARE


class FailureCause(enum.StrEnum):
    """What exactly failed inside a converter: ``details.cause`` of a
    ``converter_failed`` error (with ``details.exception``, the library's
    exception type, and where known ``details.pages``). Stable like the codes."""

    OPEN_FAILED = "open_failed"  # the library could not open the document
    NO_PAGE_CONVERTED = "no_page_converted"  # every page failed, one by one too
    WRITE_FAILED = "write_failed"  # the pages converted, writing the output failed
    NO_OUTPUT = "no_output"  # the library returned without writing the output


def _all_subclasses(cls: type[SirError]) -> list[type[SirError]]:
    found: list[type[SirError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def known_codes() -> dict[str, type[SirError]]:
    """Every stable code, mapped to its type. Codes are unique by construction."""
    table: dict[str, type[SirError]] = {SirError.code: SirError}
    for cls in _all_subclasses(SirError):
        if cls.code in table and table[cls.code] is not cls:
            raise RuntimeError(f"duplicate error code {cls.code!r}")
        table[cls.code] = cls
    return table


def error_for_code(
    code: str, message: str, details: Mapping[str, object] | None = None
) -> SirError:
    """Rebuild a typed error from its code, e.g. one reported by a worker process."""
    cls = known_codes().get(code, ConverterFailed)
    error = cls(message)
    error.details = dict(details or {})
    return error
