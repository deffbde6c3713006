"""What torch can see, and which device a GPU-lane worker should use.

``probe_torch`` never raises: a missing or broken torch is reported as
``runtime_kind="none"`` with the reason in ``error``. ROCm builds of torch
expose their GPUs through the ``torch.cuda`` API, so both CUDA and ROCm map to
the device string ``"cuda"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from converters.base import Device, GpuPolicy, RuntimeKind
from converters.errors import GpuUnavailable
from converters.warning_codes import WarningCode

__all__ = [
    "RuntimeKind",
    "TorchProbe",
    "probe_torch",
    "select_device",
]


@dataclass(frozen=True)
class TorchProbe:
    runtime_kind: RuntimeKind
    available: bool
    device_count: int
    device_name: str | None
    torch_version: str | None
    cuda_version: str | None
    hip_version: str | None
    error: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def usable(self) -> bool:
        return self.available and self.device_count > 0


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def probe_torch() -> TorchProbe:
    """Ask torch which accelerator runtime it was built for and what it sees."""
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising anything
        return TorchProbe("none", False, 0, None, None, None, None, f"{type(exc).__name__}: {exc}")

    torch_version = _str_or_none(getattr(torch, "__version__", None))
    version_mod = getattr(torch, "version", None)
    cuda_version = _str_or_none(getattr(version_mod, "cuda", None))
    hip_version = _str_or_none(getattr(version_mod, "hip", None))
    kind: RuntimeKind = "rocm" if hip_version else "cuda" if cuda_version else "none"
    available = False
    count = 0
    name: str | None = None
    error: str | None = None
    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
        if available and count > 0:
            name = str(torch.cuda.get_device_name(0))
    except Exception as exc:
        available, count = False, 0
        error = f"{type(exc).__name__}: {exc}"
    return TorchProbe(
        runtime_kind=kind,
        available=available,
        device_count=count,
        device_name=name,
        torch_version=torch_version,
        cuda_version=cuda_version,
        hip_version=hip_version,
        error=error,
    )


def _why_no_gpu(probe: TorchProbe) -> str:
    if probe.torch_version is None:
        return f"torch cannot be imported ({probe.error})"
    if probe.runtime_kind == "none":
        return (
            f"torch {probe.torch_version} is a CPU-only build; install a CUDA or ROCm "
            "build of torch"
        )
    runtime = (
        f"CUDA {probe.cuda_version}"
        if probe.runtime_kind == "cuda"
        else f"ROCm {probe.hip_version}"
    )
    reason = f" ({probe.error})" if probe.error else ""
    return (
        f"torch {probe.torch_version} is built for {runtime} but sees no device{reason}; "
        "check the driver and CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES"
    )


def select_device(policy: GpuPolicy, probe: TorchProbe) -> tuple[Device, list[str]]:
    """The device a GPU-lane worker runs on under ``policy``, plus lane warnings.

    * ``required``: the GPU or :class:`GpuUnavailable`;
    * ``preferred``: the GPU if usable, else the CPU with warning
      ``gpu_unavailable_ran_on_cpu``;
    * ``cpu``: always the CPU.
    """
    if policy == "cpu":
        return "cpu", []
    if probe.usable:
        return "cuda", []
    if policy == "preferred":
        return "cpu", [WarningCode.GPU_UNAVAILABLE_RAN_ON_CPU]
    if policy == "required":
        raise GpuUnavailable(
            f"gpu_policy is 'required' but no GPU is usable: {_why_no_gpu(probe)}",
            runtime_kind=probe.runtime_kind,
            torch_version=probe.torch_version,
            cuda_version=probe.cuda_version,
            hip_version=probe.hip_version,
            device_count=probe.device_count,
            error=probe.error,
        )
    raise ValueError(f"unknown gpu policy {policy!r}")
