from __future__ import annotations

import pytest

from converters.errors import GpuUnavailable
from converters.gpu import TorchProbe, probe_torch, select_device

pytestmark = pytest.mark.unit


def _probe(kind: str, available: bool, count: int = 0, **extra: str | None) -> TorchProbe:
    return TorchProbe(
        runtime_kind=kind,  # type: ignore[arg-type]
        available=available,
        device_count=count,
        device_name=extra.get("device_name"),
        torch_version=extra.get("torch_version", "2.14.1"),
        cuda_version=extra.get("cuda_version"),
        hip_version=extra.get("hip_version"),
        error=extra.get("error"),
    )


CUDA_GPU = _probe("cuda", True, 1, device_name="NVIDIA H200", cuda_version="12.8")
ROCM_GPU = _probe("rocm", True, 2, device_name="AMD Instinct MI300X", hip_version="6.3")
CUDA_BUILD_NO_DEVICE = _probe("cuda", False, 0, cuda_version="12.8")
CPU_ONLY = _probe("none", False, 0)


def test_real_probe_on_this_machine_is_consistent() -> None:
    probe = probe_torch()
    assert probe.runtime_kind in ("cuda", "rocm", "none")
    assert probe.torch_version  # torch is installed in the test environment
    if probe.runtime_kind == "rocm":
        assert probe.hip_version
    if probe.runtime_kind == "cuda":
        assert probe.cuda_version
    if not probe.available:
        assert probe.device_count == 0 and probe.device_name is None
    else:
        assert probe.device_count > 0 and probe.device_name
    as_dict = probe.as_dict()
    assert set(as_dict) == {
        "runtime_kind",
        "available",
        "device_count",
        "device_name",
        "torch_version",
        "cuda_version",
        "hip_version",
        "error",
    }


def test_real_probe_drives_the_policies() -> None:
    probe = probe_torch()
    assert select_device("cpu", probe) == ("cpu", [])
    if probe.available:
        assert select_device("required", probe) == ("cuda", [])
        assert select_device("preferred", probe) == ("cuda", [])
    else:
        with pytest.raises(GpuUnavailable) as err:
            select_device("required", probe)
        assert err.value.details["runtime_kind"] == probe.runtime_kind
        assert err.value.details["torch_version"] == probe.torch_version
        assert select_device("preferred", probe) == ("cpu", ["gpu_unavailable_ran_on_cpu"])


@pytest.mark.parametrize("probe", [CUDA_GPU, ROCM_GPU], ids=["cuda", "rocm"])
def test_a_gpu_is_used_when_required_or_preferred(probe: TorchProbe) -> None:
    assert select_device("required", probe) == ("cuda", [])
    assert select_device("preferred", probe) == ("cuda", [])
    assert select_device("cpu", probe) == ("cpu", [])


@pytest.mark.parametrize("probe", [CPU_ONLY, CUDA_BUILD_NO_DEVICE], ids=["cpu-build", "no-device"])
def test_required_without_gpu_raises_with_details(probe: TorchProbe) -> None:
    with pytest.raises(GpuUnavailable) as err:
        select_device("required", probe)
    assert err.value.code == "gpu_unavailable"
    assert err.value.details["runtime_kind"] == probe.runtime_kind
    assert err.value.details["torch_version"] == "2.14.1"
    assert err.value.details["cuda_version"] == probe.cuda_version
    assert "2.14.1" in err.value.message


def test_the_message_says_why() -> None:
    with pytest.raises(GpuUnavailable) as err:
        select_device("required", CPU_ONLY)
    assert "CPU-only build" in err.value.message
    with pytest.raises(GpuUnavailable) as err:
        select_device("required", CUDA_BUILD_NO_DEVICE)
    assert "CUDA 12.8" in err.value.message and "sees no device" in err.value.message
    missing = TorchProbe("none", False, 0, None, None, None, None, "ModuleNotFoundError: torch")
    with pytest.raises(GpuUnavailable) as err:
        select_device("required", missing)
    assert "cannot be imported" in err.value.message


def test_preferred_without_gpu_falls_back_with_a_warning() -> None:
    assert select_device("preferred", CPU_ONLY) == ("cpu", ["gpu_unavailable_ran_on_cpu"])
    assert select_device("preferred", CUDA_BUILD_NO_DEVICE) == (
        "cpu",
        ["gpu_unavailable_ran_on_cpu"],
    )


def test_available_but_zero_devices_is_not_a_gpu() -> None:
    odd = _probe("cuda", True, 0, cuda_version="12.8")
    assert select_device("preferred", odd) == ("cpu", ["gpu_unavailable_ran_on_cpu"])
