"""Shared fixtures: the backends every op is checked on, and tolerances per dtype."""

import types

import host
import numpy as np
import pytest

from cuproi import _cpu

# Every function of the backends (cuproi._cpu and cuproi._cuda expose the same names).
BACKEND_OPS = tuple(_cpu.__all__)

# (rtol, atol) against the float64 oracle, for features of order 1.
TOLERANCE = {
    np.dtype(np.float16): (4e-3, 4e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-12, 1e-12),
}


def host_backend():
    """The CUDA sources compiled for the host, with the backend signatures of cuproi._cpu."""
    return types.SimpleNamespace(xp=np, **{op: host.bind(op) for op in BACKEND_OPS})


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "host-kernels",
            marks=pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler"),
        ),
    ]
)
def backend(request):
    """A backend module: the NumPy/SciPy one, or the CUDA kernels run on the host."""
    return _cpu if request.param == "cpu" else host_backend()
