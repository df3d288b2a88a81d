"""Shared fixtures: the backends every op is checked on, tolerances per dtype, the CuPy the
tests see (real CuPy with a GPU, the stand-in of tests/cupy_standin without one), and the
settings of the hypothesis tests."""

import functools
import os
import sys
import threading
import types

import host
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import cuproi
from cuproi import _cpu, _dispatch


def examples(count):
    """hypothesis settings of ``count`` examples, seeded, with no deadline and no database.

    ``CUPROI_HYPOTHESIS_SCALE=N`` runs N times as many examples, unseeded: a longer hunt than
    CI's (docs/testing.md).
    """
    scale = int(os.environ.get("CUPROI_HYPOTHESIS_SCALE", "1"))
    return settings(
        max_examples=count * scale,
        derandomize=scale == 1,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _cupy_for_the_tests():
    """Real CuPy where it sees a GPU; elsewhere the stand-in, installed as ``cupy``.

    CUPROI_CUPY=standin asks for the stand-in even where a GPU is present.
    """
    if os.environ.get("CUPROI_CUPY") != "standin":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # no CuPy, or no driver or device
            pass
        try:  # CuPy's NVRTC bindings (tests/test_kernels.py) load with the real CuPy in place
            from cupy_backends.cuda.libs import nvrtc

            nvrtc.getVersion()
        except Exception:
            pass
        for name in [n for n in sys.modules if n.split(".")[0] in ("cupy", "cupyx")]:
            del sys.modules[name]
    import cupy_standin

    return cupy_standin.install()


CUPY = _cupy_for_the_tests()
STANDIN = CUPY.__name__ == "cupy_standin"
DEVICES = CUPY.cuda.runtime.getDeviceCount()

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


class On:
    """One backend behind the public functions: ``put`` gives an input array of it (NumPy, or
    CuPy for ``cuda``), ``get`` brings a result back as NumPy."""

    def __init__(self, name):
        self.name = name

    def put(self, array):
        return CUPY.asarray(array) if self.name == "cuda" and array is not None else array

    def get(self, array):
        return CUPY.asnumpy(array) if isinstance(array, CUPY.ndarray) else array


@functools.cache
def _host_kernels():
    return host_backend()


_HOST = pytest.param(
    "host", marks=pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
)
_CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(
            STANDIN and host.COMPILER is None, reason="the stand-in needs a C++ compiler"
        ),
    ],
)


def _on(request, monkeypatch):
    if request.param == "host":
        monkeypatch.setattr(cuproi, "_cpu", _host_kernels())
    return On(request.param)


@pytest.fixture(params=["cpu", _HOST, _CUDA])
def on(request, monkeypatch):
    """The backend the public functions run on: ``cpu`` (NumPy arrays, cuproi._cpu), ``host``
    (NumPy arrays routed to the CUDA kernels compiled for the host) or ``cuda`` (CuPy arrays:
    cuproi._cuda on a GPU or on the stand-in)."""
    return _on(request, monkeypatch)


@pytest.fixture(params=[_HOST, _CUDA])
def kernels_on(request, monkeypatch):
    """The backends of ``on`` that run the CUDA kernels: ``host`` and ``cuda``."""
    return _on(request, monkeypatch)


@pytest.fixture(params=[_CUDA])
def cuda_on(request, monkeypatch):
    """The ``cuda`` backend of ``on`` alone."""
    return _on(request, monkeypatch)


def pytest_generate_tests(metafunc):
    """A test class that declares its grids (tests/roi_op_tester.py) parametrises its checks."""
    generate = getattr(metafunc.cls, "generate_tests", None)
    if generate is not None:
        generate(metafunc)


_outermost = threading.local()


def _from_device_zero(function, cupy):
    """``function`` called with device 0 current; its CuPy results stay on its inputs' device."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        if getattr(_outermost, "inside", False):  # cuproi calling itself: untouched
            return function(*args, **kwargs)
        _outermost.inside = True
        try:
            with cupy.cuda.Device(0):
                result = function(*args, **kwargs)
        finally:
            _outermost.inside = False
        device = _dispatch._cuda_device((*args, *kwargs.values()))
        for out in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(out, cupy.ndarray):
                assert out.device.id == device, f"{function.__name__} returned on {out.device}"
        return result

    return call


@pytest.fixture(autouse=True)
def _gpu_inputs_on_the_second_device(request, monkeypatch):
    """With two devices, every GPU test makes its arrays on device 1 while cuproi is called with
    device 0 current: each call must run, allocate and validate on its input's device."""
    if DEVICES < 2 or request.node.get_closest_marker("gpu") is None:
        yield
        return
    from cuproi import _cuda

    for module in (cuproi, _cuda):
        for name in module.__all__:
            if callable(getattr(module, name)):
                monkeypatch.setattr(module, name, _from_device_zero(getattr(module, name), CUPY))
    with CUPY.cuda.Device(1):
        yield


@pytest.fixture(scope="session", autouse=True)
def _names_the_examples_assume(doctest_namespace):
    """cuproi's docstring examples assume ``import numpy as np`` and ``import cuproi``, as
    NumPy's assume ``np`` (docs/architecture.md); the tests that run them pass these names, and
    those of the adapters (``jax``, ``jnp``, ``torch``) where they import them."""
    doctest_namespace.update(np=np, cuproi=cuproi)


@pytest.fixture
def x64():
    """JAX's x64 mode (float64 arrays) for one test, the previous setting restored after."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture
def host_syncs():
    """The stand-in's log of a block: ``with host_syncs() as log`` (skips on a real GPU)."""
    if not STANDIN:
        pytest.skip("the transfer log is the CuPy stand-in's")
    return CUPY.record
