"""The asv benchmarks' CUDA check: asked of the driver, without importing CuPy."""

import ctypes
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
from benchmarks import common  # noqa: E402


class Driver:
    """A stand-in for libcuda: ``cuInit`` returns ``status``, ``cuDeviceGetCount`` ``count``."""

    def __init__(self, status, count):
        self.status, self.count = status, count

    def cuInit(self, flags):
        return self.status

    def cuDeviceGetCount(self, count):
        ctypes.cast(count, ctypes.POINTER(ctypes.c_int)).contents.value = self.count
        return 0


def test_cuda_devices_from_the_driver(monkeypatch):
    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(common.ctypes, "CDLL", no_driver)
    assert common.cuda_devices() == 0
    monkeypatch.setattr(common.ctypes, "CDLL", lambda name: Driver(status=100, count=0))
    assert common.cuda_devices() == 0  # CUDA_ERROR_NO_DEVICE
    monkeypatch.setattr(common.ctypes, "CDLL", lambda name: Driver(status=0, count=2))
    assert common.cuda_devices() == 2


def test_cupy_backend_skipped_without_importing_cupy(monkeypatch):
    """Without a device, the cupy backend is skipped before CuPy is imported."""
    monkeypatch.setattr(common, "cuda_devices", lambda: 0)
    monkeypatch.setitem(sys.modules, "cupy", None)  # an import would raise ImportError
    with pytest.raises(NotImplementedError, match="no CUDA device"):
        common.Benchmark().setup_backend("cupy")
