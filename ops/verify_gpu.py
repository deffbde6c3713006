"""ops/verify-gpu: prove, on the GPU host, that PDF conversion really runs on the GPU.

Four checks, all of which must hold for exit status 0:

1. smi       rocm-smi or nvidia-smi lists at least one GPU;
2. torch     converters.gpu.probe_torch() in the service's Python says the
             runtime is rocm or cuda and a device is available;
3. job       a private daemon (gpu_policy=required, temporary data root and
             port) converts a generated PDF to Markdown, and the sidecar says
             acceleration.device == "cuda" with no gpu_unavailable_ran_on_cpu;
4. gpu_busy  the GPU's utilisation, sampled while that job ran, rose above 0%.

Writes report.md and report.json (and the private daemon's log) to --report-dir.
Standard library only: the checks run the service's own interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ops.daemon_harness import DaemonProcess, free_port
from ops.daemon_harness import daemon_env as harness_env
from ops.hotfolder import answer_paths, check_output, drop, poll_answer, readyz
from ops.sample_docs import make_pdf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Python 3.9+: these scripts may run under the host's python3, not the venv's.
UTC = timezone.utc  # noqa: UP017
EX_FAILED = 1
RAN_ON_CPU = "gpu_unavailable_ran_on_cpu"
SETTLE_GRACE_S = 15.0
PROBE = (
    "import json\n"
    "from converters.gpu import probe_torch\n"
    "print(json.dumps(probe_torch().as_dict()))\n"
)
# Variables of ours that the private daemon may inherit; the rest it is given.
INHERITED = {"SIR_CONVERT_A_LOT_CONFIG", "SIR_CONVERT_A_LOT_MODELS_DIR"}
SYSTEM_CONFIG = Path("/etc/sir-convert-a-lot/config.toml")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    started_at: str
    host: str
    python: str
    checks: list[Check] = field(default_factory=list)
    smi: dict[str, Any] = field(default_factory=dict)
    torch: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None

    @property
    def ok(self) -> bool:
        names = {c.name for c in self.checks if c.ok}
        return names >= {"smi", "torch", "job", "gpu_busy"}

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return ok


def default_python() -> str:
    for candidate in (REPO / ".venv/bin/python", Path("/opt/sir-convert-a-lot/.venv/bin/python")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return sys.executable


def default_config() -> str | None:
    from_env = os.environ.get("SIR_CONVERT_A_LOT_CONFIG")
    if from_env:
        return from_env
    return str(SYSTEM_CONFIG) if SYSTEM_CONFIG.is_file() else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ops/verify-gpu",
        description=(
            "On the GPU host: check that rocm-smi/nvidia-smi sees a GPU, that torch "
            "can use it, and that a live pdf->md job under gpu_policy=required runs on "
            "it (sidecar acceleration.device == cuda, the GPU busy meanwhile). Writes "
            "report.md and report.json. Exit 0 only if every check holds."
        ),
        epilog="Exit status: 0 every check passed; 1 a check failed; 2 usage error.",
    )
    parser.add_argument(
        "--python",
        default=default_python(),
        help="the service's interpreter, with torch and this project "
        "(default: .venv/bin/python here, else /opt/sir-convert-a-lot/.venv/bin/python, "
        "else this one)",
    )
    parser.add_argument(
        "--config",
        default=default_config(),
        help="config file for the private daemon (default: $SIR_CONVERT_A_LOT_CONFIG, else "
        f"{SYSTEM_CONFIG} if it exists, else the embedded default)",
    )
    parser.add_argument(
        "--profile",
        default="eval",
        help="profile whose settings the private daemon borrows (default eval); its "
        "data root and port are replaced by temporary ones",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("verify-gpu-report"),
        help="where report.md, report.json and daemon.log go (default ./verify-gpu-report)",
    )
    parser.add_argument("--pages", type=int, default=16, help="pages in the test PDF (16)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds for the private daemon to warm up (600)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for the job to finish (600)"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.2, help="utilisation sampling period (0.2 s)"
    )
    parser.add_argument(
        "--always-run-job",
        action="store_true",
        help="run the live job even when no GPU was found (to see how it fails)",
    )
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    return args


# ---- 1. smi --------------------------------------------------------------------------


def run_quiet(argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, f"{type(exc).__name__}: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


def list_nvidia() -> list[dict[str, str]]:
    query = "index,name,driver_version,memory.total,utilization.gpu"
    code, out = run_quiet(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"])
    if code != 0:
        raise RuntimeError(f"nvidia-smi failed ({code}): {out[-400:]}")
    keys = query.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(","))))  # noqa: B905 (3.9)
        for line in out.splitlines()
        if line.strip()
    ]


def list_rocm() -> list[dict[str, str]]:
    code, out = run_quiet(["rocm-smi", "--showproductname", "--json"])
    if code != 0:
        raise RuntimeError(f"rocm-smi failed ({code}): {out[-400:]}")
    try:
        cards = json.loads(out[out.index("{") :])
    except ValueError as exc:
        raise RuntimeError(f"rocm-smi printed no JSON: {out[-400:]}") from exc
    return [
        {"card": name, **{k: str(v) for k, v in info.items()}}
        for name, info in cards.items()
        if name.lower().startswith("card") and isinstance(info, dict)
    ]


def check_smi(report: Report) -> str | None:
    """The tool that sees the GPU ('nvidia-smi' or 'rocm-smi'), or None."""
    tools = [t for t in ("rocm-smi", "nvidia-smi") if shutil.which(t)]
    if not tools:
        report.add("smi", False, "neither rocm-smi nor nvidia-smi is installed on this host")
        return None
    problems = []
    for tool in tools:
        try:
            gpus = list_rocm() if tool == "rocm-smi" else list_nvidia()
        except RuntimeError as exc:
            problems.append(str(exc))
            continue
        report.smi = {"tool": tool, "gpus": gpus}
        if gpus:
            report.add("smi", True, f"{tool} lists {len(gpus)} GPU(s)")
            return tool
        problems.append(f"{tool} lists no GPU")
    report.add("smi", False, "; ".join(problems))
    return None


# ---- 2. torch ------------------------------------------------------------------------


def check_torch(report: Report, python: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [python, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return report.add("torch", False, f"cannot run {python}: {exc}")
    lines = done.stdout.strip().splitlines()
    try:
        probe = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        probe = None
    if not isinstance(probe, dict):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return report.add("torch", False, f"the probe failed ({done.returncode}): {' '.join(tail)}")
    report.torch = probe
    kind, available = probe.get("runtime_kind"), probe.get("available")
    version = probe.get("hip_version") or probe.get("cuda_version")
    summary = (
        f"torch {probe.get('torch_version')}, runtime {kind} {version or ''}, "
        f"available={available}, devices={probe.get('device_count')}"
        f"{', ' + str(probe.get('device_name')) if probe.get('device_name') else ''}"
    )
    if kind in ("rocm", "cuda") and available and int(probe.get("device_count") or 0) > 0:
        return report.add("torch", True, summary)
    why = f" ({probe.get('error')})" if probe.get("error") else ""
    return report.add("torch", False, summary + why)


# ---- 3 and 4. the live job, with utilisation sampled while it runs --------------------


class Sampler:
    """Samples every GPU's utilisation (%) in a thread until stopped."""

    def __init__(self, tool: str | None, interval: float) -> None:
        self.tool, self.interval = tool, interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> Sampler:
        if self.tool:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _read(self) -> list[float]:
        if self.tool == "nvidia-smi":
            code, out = run_quiet(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"], 10
            )
            return [float(v) for v in out.split() if code == 0 and v.replace(".", "").isdigit()]
        code, out = run_quiet(["rocm-smi", "--showuse", "--json"], 10)
        if code != 0 or "{" not in out:
            return []
        cards = json.loads(out[out.index("{") :])
        values = []
        for info in cards.values():
            for key, value in info.items() if isinstance(info, dict) else []:
                if "use" in key.lower() and "%" in key:
                    try:
                        values.append(float(str(value).strip("%")))
                    except ValueError:
                        continue
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = self._read()
            except ValueError:
                values = []
            t = round(time.monotonic() - self._t0, 2)
            self.samples.append({"t": t, "utilisation": values})
            self._stop.wait(self.interval)

    @property
    def peak(self) -> float | None:
        values = [v for s in self.samples for v in s["utilisation"]]
        return max(values) if values else None


def daemon_env(args: argparse.Namespace, data_root: Path, port: int) -> dict[str, str]:
    extra = {
        "SIR_CONVERT_A_LOT_PROFILE": args.profile,
        "SIR_CONVERT_A_LOT_DATA_ROOT": str(data_root),
        "SIR_CONVERT_A_LOT_HTTP_HOST": "127.0.0.1",
        "SIR_CONVERT_A_LOT_HTTP_PORT": str(port),
        "SIR_CONVERT_A_LOT_GPU_POLICY": "required",
    }
    if args.config:
        extra["SIR_CONVERT_A_LOT_CONFIG"] = str(Path(args.config).resolve())
    if "GIT_CONFIG_COUNT" not in os.environ:
        # The daemon reads its revision with git; a checkout owned by another
        # user (root, on the GPU host) must be trusted explicitly.
        extra.update(
            GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="safe.directory", GIT_CONFIG_VALUE_0=str(REPO)
        )
    return harness_env(extra, inherit=sorted(INHERITED))


def check_job(report: Report, args: argparse.Namespace, tool: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="sir-verify-gpu-"))
    data_root, port = work / "data", free_port()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.report_dir / "daemon.log"
    log_path.write_bytes(b"")
    daemon = DaemonProcess(
        work,
        port,
        daemon_env(args, data_root, port),
        log=log_path,
        python=args.python,
        args=("run", "--profile", args.profile),
    )
    report.job = {"command": daemon.command, "data_root": str(data_root), "port": port}
    daemon.start()
    assert daemon.proc is not None
    try:
        run_job(
            report,
            args,
            tool=tool,
            proc=daemon.proc,
            data_root=data_root,
            base_url=daemon.base_url,
        )
    finally:
        report.job["daemon_exit"] = daemon.stop(timeout=120)
        shutil.rmtree(work, ignore_errors=True)


def run_job(
    report: Report,
    args: argparse.Namespace,
    *,
    tool: str | None,
    proc: subprocess.Popen[bytes],
    data_root: Path,
    base_url: str,
) -> None:
    deadline = time.monotonic() + args.ready_timeout
    settled_since: float | None = None
    readiness = readyz(base_url)
    while not readiness.ready and proc.poll() is None and time.monotonic() < deadline:
        # Once the workers are warm, what is still wrong will stay wrong
        # (no GPU, missing models, ...): give up after a grace period.
        warming = not readiness.codes or "workers_not_warm" in readiness.codes
        settled_since = None if warming else settled_since or time.monotonic()
        if settled_since is not None and time.monotonic() - settled_since > SETTLE_GRACE_S:
            break
        time.sleep(1)
        readiness = readyz(base_url)
    report.job["revision"] = readiness.revision
    if not readiness.ready:
        exited = f"the daemon exited {proc.returncode}; " if proc.poll() is not None else ""
        why = "; ".join(readiness.reasons()) or "no answer"
        report.add("job", False, f"{exited}not ready under gpu_policy=required: {why}")
        report.add("gpu_busy", False, "no job ran")
        return

    marker = "GPU" + os.urandom(5).hex().upper()
    relative = PurePosixPath("to-md", "verify-gpu.pdf")
    meta, error = answer_paths(data_root, relative, "md")
    with Sampler(tool, args.sample_interval) as sampler:
        time.sleep(min(1.0, 5 * args.sample_interval))  # a baseline before the drop
        started = time.monotonic()
        drop(data_root, relative, make_pdf(marker, args.pages))
        answer = None
        while answer is None and time.monotonic() - started < args.timeout:
            if proc.poll() is not None:
                break
            answer = poll_answer(meta, error)
            time.sleep(0.1)
        wall = round(time.monotonic() - started, 2)
    report.samples = sampler.samples
    report.job["wall_seconds"] = wall
    report.job["pages"] = args.pages

    if answer is None:
        why = f"the daemon exited {proc.returncode}" if proc.poll() is not None else "timeout"
        report.add("job", False, f"no sidecar after {wall} s ({why})")
    else:
        sidecar = answer.sidecar
        report.job["sidecar"] = {
            k: sidecar.get(k)
            for k in ("status", "route", "acceleration", "timings", "warnings", "error")
        }
        report.add("job", *judge_sidecar(data_root, sidecar, marker, wall))

    peak = sampler.peak
    report.job["peak_utilisation"] = peak
    if tool is None:
        report.add("gpu_busy", False, "no rocm-smi/nvidia-smi to sample the GPU with")
    elif peak is None:
        report.add("gpu_busy", False, f"{tool} gave no utilisation readings")
    else:
        report.add(
            "gpu_busy",
            peak > 0,
            f"peak utilisation {peak:.0f}% over {len(sampler.samples)} samples from {tool}",
        )


def judge_sidecar(
    data_root: Path, sidecar: dict[str, Any], marker: str, wall: float
) -> tuple[bool, str]:
    if sidecar.get("status") != "succeeded":
        err = sidecar.get("error") or {}
        return False, f"pdf->md failed: {err.get('code')}: {err.get('message')}"
    acceleration = sidecar.get("acceleration") or {}
    warnings = sidecar.get("warnings") or []
    problems = []
    if acceleration.get("device") != "cuda":
        problems.append(f"acceleration.device is {acceleration.get('device')!r}, not 'cuda'")
    if acceleration.get("policy") != "required":
        problems.append(f"acceleration.policy is {acceleration.get('policy')!r}")
    if RAN_ON_CPU in warnings:
        problems.append(f"warning {RAN_ON_CPU}")
    output, output_problems = check_output(data_root, sidecar)
    problems += output_problems
    if output is not None and not output_problems and marker not in output.read_text("utf-8"):
        problems.append("the Markdown lacks the PDF's text")
    if problems:
        return False, "; ".join(problems)
    timings = sidecar.get("timings") or {}
    return True, (
        f"pdf->md on {acceleration.get('runtime_kind')} {acceleration.get('device_name') or ''}"
        f" in {timings.get('convert_seconds')} s convert, {wall} s end to end"
    )


# ---- the report ----------------------------------------------------------------------


def write_report(report: Report, report_dir: Path) -> None:
    report.finished_at = datetime.now(UTC).isoformat()
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {"ok": report.ok, **asdict(report)}
    (report_dir / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# GPU verification: {'PASSED' if report.ok else 'FAILED'}",
        "",
        f"- host: {report.host}",
        f"- python: {report.python}",
        f"- from {report.started_at} to {report.finished_at}",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {c.name} | {'pass' if c.ok else 'FAIL'} | {c.detail} |" for c in report.checks),
        "",
    ]
    if report.smi:
        lines += ["## GPUs", "", "```", json.dumps(report.smi, indent=2), "```", ""]
    if report.torch:
        lines += ["## torch probe", "", "```", json.dumps(report.torch, indent=2), "```", ""]
    if report.job:
        lines += ["## Live job", "", "```", json.dumps(report.job, indent=2), "```", ""]
    if not report.ok:
        lines += ["See docs/runbook.md, 'GPU verification', for what each failure means.", ""]
    (report_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = Report(
        started_at=datetime.now(UTC).isoformat(), host=socket.gethostname(), python=args.python
    )
    tool = check_smi(report)
    torch_ok = check_torch(report, args.python)
    if (tool and torch_ok) or args.always_run_job:
        check_job(report, args, tool)
    else:
        report.add("job", False, "skipped: no usable GPU (see smi and torch)")
        report.add("gpu_busy", False, "skipped: no job ran")
    write_report(report, args.report_dir)
    verdict = "PASSED" if report.ok else "FAILED"
    print(f"ops/verify-gpu: {verdict}; report in {args.report_dir}/report.md", flush=True)
    return 0 if report.ok else EX_FAILED


if __name__ == "__main__":
    sys.exit(main())
