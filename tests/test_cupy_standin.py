"""The CuPy stand-in itself refuses what CuPy or a GPU would refuse, or get silently wrong."""

import numpy as np
import pytest
from conftest import STANDIN

pytestmark = pytest.mark.skipif(not STANDIN, reason="tests of the CuPy stand-in")

SOURCE = """
extern "C" __global__ void scale(int n, const float* x, float s, float* y) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    y[i] = x[i] * s;
}
"""


@pytest.fixture
def kernel():
    import cupy

    return cupy.RawModule(code=SOURCE, options=("--std=c++17",)).get_function("scale")


def test_a_launch_runs_and_is_recorded(kernel):
    import cupy

    x = cupy.arange(5, dtype=np.float32)
    y = cupy.empty_like(x)
    with cupy.record() as log:
        kernel((1,), (256,), (np.int32(5), x, np.float32(2), y))
    np.testing.assert_array_equal(y.get(), [0, 2, 4, 6, 8])
    assert [launch[:2] for launch in log.launches] == [("scale", 0)]


@pytest.mark.parametrize(
    ("grid", "block", "args", "error", "match"),
    [
        ((1,), (2048,), None, RuntimeError, "INVALID_VALUE"),
        ((2**31,), (256,), None, RuntimeError, "INVALID_VALUE"),
        ((1, 65536), (256,), None, RuntimeError, "INVALID_VALUE"),
        ((1,), (256,), (5, "x", np.float32(2), "y"), TypeError, "exact NumPy type int32"),
        ((1,), (256,), (np.int32(5), "x", 2.0, "y"), TypeError, "type float"),
        ((1,), (256,), (np.int32(5), "x", np.float64(2), "y"), TypeError, "float64"),
        ((1,), (256,), (np.int32(5), "x64", np.float32(2), "y"), TypeError, "float64"),
        ((1,), (256,), (np.int32(5), "xT", np.float32(2), "y"), ValueError, "C-contiguous"),
        ((1,), (256,), (np.int32(5), "x", np.float32(2)), TypeError, "takes 4 arguments"),
        ((1,), (256,), (np.int32(5), "host", np.float32(2), "y"), TypeError, "device array"),
        ((1,), (256,), (np.int32(5), "x", np.float32(2), "x"), ValueError, "share memory"),
        ((1,), (256,), (np.int32(5), "x", np.float32(2), "x1"), ValueError, "share memory"),
    ],
)
def test_launch_rules(kernel, grid, block, args, error, match):
    import cupy

    x = cupy.zeros((4, 4), np.float32)
    arrays = {
        "x": x,
        "y": cupy.zeros((4, 4), np.float32),
        "x64": x.astype(np.float64),
        "xT": x.T,
        "host": np.zeros(16, np.float32),
        "x1": x.reshape(-1)[1:],  # the elements of x but its first
    }
    args = args or (np.int32(5), x, np.float32(2), arrays["y"])
    args = tuple(arrays[a] if isinstance(a, str) else a for a in args)
    with pytest.raises(error, match=match):
        kernel(grid, block, args)


def test_device_rules(kernel):
    import cupy

    with cupy.cuda.Device(1):
        x = cupy.zeros(4, np.float32)
        stream = cupy.cuda.Stream()
    with pytest.raises(ValueError, match="Peer access is unavailable"):
        x + 1  # on device 0
    with pytest.raises(ValueError, match="Peer access is unavailable"):
        kernel((1,), (256,), (np.int32(4), x, np.float32(2), cupy.empty(4, np.float32)))
    with pytest.raises(RuntimeError, match="does not match with the current device"):
        with stream:
            pass
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with cupy.record() as log, cupy.cuda.Device(1):
        assert float(x.sum()) == 0 and x.tolist() == [0] * 4
    assert [what for what, _ in log.transfers] == ["float(ndarray)", "ndarray.tolist"]


def test_float32_kernels_flush_subnormals_as_cuda_with_ftz(kernel):
    import cupy
    from cupy_standin import _kernels

    if not _kernels.FLUSHES_SUBNORMALS:
        pytest.skip("mirrored on x86-64 only")
    assert kernel.module.options[-1] == "-ftz=true"  # appended as CuPy does
    x = cupy.full(2, 1e-39, np.float32)
    y = cupy.empty_like(x)
    kernel((1,), (256,), (np.int32(2), x, np.float32(1), y))
    np.testing.assert_array_equal(y.get(), 0)
    assert np.all(x.get() * np.float32(1) > 0)  # NumPy keeps them


@pytest.mark.parametrize("make", ["empty", "empty_like", "ndarray"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32, np.int64, np.uint64])
def test_uninitialized_memory_is_neither_zero_nor_alike(make, dtype):
    """An uninitialized array holds what a pool's last user left, as on a GPU: not NumPy's
    zeroed fresh pages, and not what the allocation before got (which two runs compared
    would not tell apart); finite, so that NaN equal to NaN hides nothing."""
    import cupy

    new = {
        "empty": lambda: cupy.empty((3, 5), dtype),
        "empty_like": lambda: cupy.empty_like(cupy.zeros((3, 5), dtype)),
        "ndarray": lambda: cupy.ndarray((3, 5), dtype),
    }[make]
    first, second = new().get(), new().get()
    assert np.all(first != 0) and np.all(np.isfinite(first))
    assert np.all(first != second)
