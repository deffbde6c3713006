"""The in-process baseline: the same converters, warm, called in a plain loop.

``python -m ops.bench_lib.inproc`` is one such process. It reads JSON lines on
stdin: first ``{"source", "target", "models_dir"}`` (it builds and warms the
converter, then answers ``{"ready": true}``), then ``{"files": [...],
"out_dir": ...}`` batches (it converts them one after the other and answers
with the count). ``InProcessPool`` runs as many of them as the daemon's lane
has workers and splits each batch between them: the daemon's parallelism
without its intake, queue, IPC, publishing and sidecars.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from ops.bench_lib.baselines import RunResult, offline_env
from ops.bench_lib.daemon_proc import REPO

__all__ = ["InProcessPool", "main"]


def _serve(proto: IO[str]) -> int:
    from converters.base import ConversionRequest, ConvertOptions, Limits, WorkerContext
    from converters.dropfolder import DropFolder
    from converters.registry import default_registry
    from daemon.sidecar import companion_paths

    hello = json.loads(sys.stdin.readline())
    models = Path(hello["models_dir"]) if hello.get("models_dir") else None
    ctx = WorkerContext(
        gpu_policy="preferred",
        models_dir=models,
        limits=Limits(),
        device="cpu",
        runtime_kind="none",
    )
    converter = default_registry().get(hello["source"], hello["target"])
    converter.warm(ctx)
    proto.write(json.dumps({"ready": True}) + "\n")
    proto.flush()
    options = ConvertOptions()
    for line in sys.stdin:
        batch = json.loads(line)
        out_dir = Path(batch["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        failed = 0
        for name in batch["files"]:
            source = Path(name)
            try:
                with DropFolder.open(source.parent) as drop_folder:
                    output = out_dir / f"{source.stem}.{hello['target']}"
                    request = ConversionRequest(
                        input_path=source,
                        output_path=output,
                        options=options,
                        drop_folder=drop_folder,
                        companions=companion_paths(output),  # as the daemon's worker
                    )
                    converter.convert(request, ctx)
            except Exception:
                failed += 1
        proto.write(json.dumps({"done": len(batch["files"]), "failed": failed}) + "\n")
        proto.flush()
    return 0


def main() -> int:
    # Libraries may print; keep the protocol on a private copy of stdout.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    return _serve(proto)


class InProcessPool:
    """``workers`` warm baseline processes for one route."""

    def __init__(self, source: str, target: str, workers: int, models_dir: Path | None) -> None:
        self.hello = {"source": source, "target": target, "models_dir": str(models_dir or "")}
        self.workers = workers
        self._procs: list[subprocess.Popen[str]] = []
        self.warm_seconds = 0.0

    def start(self) -> InProcessPool:
        env = offline_env()
        env["PYTHONPATH"] = str(REPO)  # the daemon's packages and ops.bench_lib
        env.setdefault("TOKENIZERS_PARALLELISM", "false")  # as daemon.worker sets it
        started = time.monotonic()
        for _ in range(self.workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "ops.bench_lib.inproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            self._send(proc, self.hello)
            self._procs.append(proc)
        for proc in self._procs:
            self._receive(proc)
        self.warm_seconds = time.monotonic() - started
        return self

    @staticmethod
    def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    @staticmethod
    def _receive(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"in-process baseline exited {proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, files: list[Path], out_dir: Path) -> RunResult:
        """Convert ``files``, split evenly between the processes; wall time of the batch."""
        shares = [files[i :: self.workers] for i in range(self.workers)]
        started = time.monotonic()
        for proc, share in zip(self._procs, shares, strict=True):
            self._send(proc, {"files": [str(f) for f in share], "out_dir": str(out_dir)})
        failed = sum(int(self._receive(proc)["failed"]) for proc in self._procs)
        return RunResult(seconds=time.monotonic() - started, files=len(files), failed=failed)

    def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


if __name__ == "__main__":
    sys.exit(main())
