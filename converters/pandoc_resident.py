"""One pandoc per worker, started once and kept: ``pandoc lua pandoc_jobs.lua``.

A pandoc process per job costs ~50 ms of start-up before any work; a resident
one reads job after job from a pipe (the protocol is described in
``pandoc_jobs.lua``). What a per-file pandoc had, this keeps:

* The sandbox: the Lua script parses with ``pandoc.read`` in a sandbox that
  may open no file. The docx writer is not sandboxed, so the script points
  every image at the bytes this side vetted (``ResourcePolicy.picture``, the
  very policy of the PDF routes) or drops it before writing. pandoc runs with
  an empty environment: no ``PATH`` (it can start no helper program), no
  ``HOME`` or ``XDG_*`` (no user data directory, hence no stray
  reference.docx), ``lua -E`` (no ``LUA_INIT``).
* The heap cap (``+RTS -M``): a document that exhausts it kills pandoc, and
  the job ends ``resource_limit_exceeded``.
* A time-out per job (``timeout``): a pandoc that does not answer in time is
  killed and the job ends ``timeout``.
* Crash handling: a pandoc that dies mid-job ends the job ``converter_failed``
  with the tail of its stderr. Whichever way a job failed, the process is
  discarded, and the next job starts a fresh one; one that died while idle is
  replaced before the next job, which never notices.
"""

from __future__ import annotations

import contextlib
import functools
import json
import mimetypes
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from converters import _pandoc
from converters.errors import ConverterFailed, ResourceLimitExceeded, Timeout
from converters.resource_policy import Picture

__all__ = ["ResidentPandoc", "shared_pandoc"]

_STDERR_KEEP = 16 * 1024
_CHUNK = 1 << 16
_HEAP_EXHAUSTED = "Heap exhausted"


class _Died(Exception):
    """pandoc closed its stdout: it exited or was killed."""


class _Hung(Exception):
    """pandoc did not answer before the job's deadline."""


def _script() -> str:
    path = resources.files("converters").joinpath("pandoc_jobs.lua")
    return str(path)


class ResidentPandoc:
    """A ``pandoc lua`` process serving jobs; restarted whenever a job failed."""

    def __init__(
        self,
        *,
        heap_mb: int = _pandoc.PANDOC_HEAP_MB,
        timeout: float = _pandoc.PANDOC_TIMEOUT_SECONDS,
    ) -> None:
        self.heap_mb = heap_mb
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._deadline = 0.0
        self.starts = 0  # how many processes were started (tests, metrics)

    # --- the process ------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> subprocess.Popen[bytes]:
        cmd = [
            _pandoc.pandoc_path(),
            "+RTS",
            f"-M{self.heap_mb}m",
            "-RTS",
            "lua",
            "-E",
            _script(),
        ]
        # Same process group as the worker: killing the worker's group (its
        # time-out, the daemon's death) ends this pandoc too. Its working
        # directory is an empty folder removed once pandoc started: a relative
        # path resolves nowhere.
        with tempfile.TemporaryDirectory(prefix="sir-pandoc-") as nowhere:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=nowhere,
                env={"LANG": "C.UTF-8"},
            )
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
        self._out.clear()
        self._err.clear()
        self.starts += 1
        return proc

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and _dead(self._proc):
            self._discard()  # died while idle: not this job's fault
        if self._proc is None:
            self._proc = self._start()
        return self._proc

    def _discard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def close(self) -> None:
        """Stop the process (closing its stdin ends it; killed if it lingers)."""
        proc = self._proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._discard()

    # --- the pipe ---------------------------------------------------------

    def _pump(self, proc: subprocess.Popen[bytes], data: bytes, need: int, deadline: float) -> None:
        """Write ``data`` to stdin, and read stdout until ``need`` bytes are buffered
        (``need`` < 0: until a newline is); stderr is drained all along."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        pending = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")
            sel.register(proc.stderr, selectors.EVENT_READ, "err")
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
            while pending or not self._have(need):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Hung
                for key, _ in sel.select(left):
                    if key.data == "in":
                        try:
                            written = os.write(proc.stdin.fileno(), pending[:_CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            raise _Died from None
                        pending = pending[written:]
                        if not pending:
                            sel.unregister(proc.stdin)
                        continue
                    try:
                        chunk = os.read(key.fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if key.data == "err":
                        if not chunk:
                            sel.unregister(proc.stderr)
                            continue
                        self._err += chunk
                        del self._err[:-_STDERR_KEEP]
                    elif not chunk:
                        raise _Died
                    else:
                        self._out += chunk

    def _have(self, need: int) -> bool:
        return b"\n" in self._out if need < 0 else len(self._out) >= need

    def _send(self, proc: subprocess.Popen[bytes], header: dict[str, Any], *payload: bytes) -> None:
        data = json.dumps(header).encode() + b"\n" + b"".join(payload)
        self._pump(proc, data, 0, self._deadline)

    def _receive(self, proc: subprocess.Popen[bytes]) -> tuple[dict[str, Any], bytes]:
        self._pump(proc, b"", -1, self._deadline)
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out[:] = rest
        header: dict[str, Any] = json.loads(line)
        size = int(header.get("size", 0))
        body = b""
        if header.get("ok") is not False and size:
            self._pump(proc, b"", size, self._deadline)
            body = bytes(self._out[:size])
            del self._out[:size]
        if header.get("ok") is False:
            raise ConverterFailed(f"pandoc failed: {str(header.get('error'))[:500]}")
        return header, body

    def _job(self, run: Callable[[subprocess.Popen[bytes]], bytes]) -> bytes:
        proc = self._running()
        self._deadline = time.monotonic() + self.timeout
        try:
            return run(proc)
        except _Hung:
            self._discard()
            raise Timeout(f"pandoc did not finish within {self.timeout:.0f} s") from None
        except _Died:
            proc.wait()
            stderr = self._err.decode("utf-8", "replace")
            self._discard()
            if _HEAP_EXHAUSTED in stderr:
                # The same input fails the same way every time, like a worker
                # killed at its memory ceiling.
                raise ResourceLimitExceeded(
                    f"pandoc needed more than its {self.heap_mb} MB heap for this document"
                ) from None
            raise ConverterFailed(
                f"pandoc exited {proc.returncode}: {stderr.strip()[-500:]}",
                stderr=stderr[-2000:],
            ) from None
        except BaseException:
            self._discard()  # the pipe is in an unknown state: never reuse it
            raise

    # --- jobs -------------------------------------------------------------

    def to_docx(
        self,
        text: str,
        reader: str,
        pictures: Callable[[str], Picture | None],
        *,
        reference_doc: Path | None = None,
    ) -> bytes:
        """The .docx of ``text``; ``pictures(src)`` gives each image's vetted bytes
        (None: leave it out, its description stays)."""
        data = text.encode("utf-8")

        def run(proc: subprocess.Popen[bytes]) -> bytes:
            job: dict[str, Any] = {"op": "docx", "reader": reader, "size": len(data)}
            if reference_doc is not None:
                job["reference_doc"] = str(reference_doc)
            self._send(proc, job, data)
            header, body = self._receive(proc)
            if "images" not in header:
                return body  # no image in the document: the answer came at once
            media: list[dict[str, Any]] = []
            bodies: list[bytes] = []
            for src in header["images"]:
                found = pictures(str(src))
                if found is None:
                    media.append({"ok": False})
                    continue
                mime = found.mime.split(";")[0].strip() or "application/octet-stream"
                ext = mimetypes.guess_extension(mime) or ""
                media.append({"ok": True, "size": len(found.body), "mime": mime, "ext": ext})
                bodies.append(found.body)
            self._send(proc, {"media": media}, *bodies)
            return self._receive(proc)[1]

        return self._job(run)

    def to_html(self, text: str, fallback_title: str) -> str:
        """Markdown → standalone HTML5 with a <title> (front matter, first heading,
        else ``fallback_title``) and without pandoc's own CSS."""
        data = text.encode("utf-8")

        def run(proc: subprocess.Popen[bytes]) -> bytes:
            job = {"op": "html", "size": len(data), "fallback_title": fallback_title}
            self._send(proc, job, data)
            return self._receive(proc)[1]

        return self._job(run).decode("utf-8")

    def warm(self) -> None:
        """Start the process and run both writers once, so the first job is fast."""
        self.to_docx("# warm\n\nup\n", "markdown", lambda src: None)
        self.to_html("# warm\n", "warm")


@functools.cache
def shared_pandoc() -> ResidentPandoc:
    """This process's resident pandoc, shared by the pandoc routes (a worker runs
    one job at a time)."""
    return ResidentPandoc()


def _dead(proc: subprocess.Popen[bytes]) -> bool:
    """Exited, or on its way out: a killed process shows as a zombie in /proc a moment
    before ``waitpid`` can reap it (while its other threads are torn down)."""
    if proc.poll() is not None:
        return True
    try:
        with open(f"/proc/{proc.pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")
