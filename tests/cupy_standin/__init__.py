"""A stand-in for CuPy on machines without a GPU, for cuproi's tests (never shipped).

``install()`` puts it in ``sys.modules`` as ``cupy``, so that cuproi's CUDA path (the real
``cuproi._cuda``: its device and stream handling, kernel cache and launches) and the ``-m gpu``
tests run unchanged on the host. Arrays are NumPy memory that belongs to a device
(``_array``); ``cuda`` holds devices, streams and events; ``RawModule`` compiles the kernels'
CUDA text for the host and checks CuPy's launch rules (``_kernels``). ``record()`` gives the
log of host synchronisations, cross-device reads and launches of a block of code.

What it proves: the Python path, the launch rules, device and stream handling, the kernels'
arithmetic as the host compiler does it (one thread). What only a GPU proves: the numbers
of the GPU's own arithmetic (FMA contraction, atomics' order), speed, and races between threads.
"""

import sys

import numpy as np

from cupy_standin import _state, cuda, testing
from cupy_standin._array import _root, _to_host, _unwrap, _wrap, ndarray, poisoned
from cupy_standin._kernels import RawKernel, RawModule
from cupy_standin._state import record

__version__ = "14.0.0+standin"
memoize = cuda.memoize
get_default_memory_pool = cuda.get_default_memory_pool

_CREATION = {
    "arange",
    "empty",
    "empty_like",
    "eye",
    "full",
    "full_like",
    "identity",
    "linspace",
    "ones",
    "ones_like",
    "zeros",
    "zeros_like",
}
_CONVERSION = {"array", "asarray", "ascontiguousarray", "asfortranarray"}


def _host_data(value):
    """Host data given to a conversion, with any stand-in arrays in it read on this device."""
    if isinstance(value, ndarray):
        return _unwrap(value, "conversion")
    if isinstance(value, (list, tuple)):
        return [_host_data(v) for v in value]
    return value


def _converter(function):
    def convert(obj, dtype=None, *args, **kwargs):
        if isinstance(obj, ndarray):
            result = function(obj._a, dtype, *args, **kwargs)
            if result is obj._a:
                return obj
            if _root(result) is _root(obj._a):
                return ndarray._of(result, obj._device)
            _state.reading(obj._device, f"cupy.{function.__name__}")
            return ndarray._of(result, _state.current_device())
        data = np.array(_host_data(obj), dtype=dtype, copy=True)  # a host-to-device copy
        return ndarray._of(function(data, *args, **kwargs), _state.current_device())

    return convert


def _creator(function):
    def create(*args, **kwargs):
        args = [a._a if isinstance(a, ndarray) else a for a in args]  # *_like: shape only
        result = function(*args, **kwargs)
        if function.__name__.startswith("empty"):
            poisoned(result)
        return ndarray._of(result, _state.current_device())

    return create


def _function(function):
    def call(*args, **kwargs):
        what = f"cupy.{function.__name__}"
        sources = [a for a in args if isinstance(a, ndarray)]
        return _wrap(function(*_unwrap(args, what), **_unwrap(kwargs, what)), sources)

    return call


def __getattr__(name):
    value = getattr(np, name, None)
    if value is None or isinstance(value, type(np)):
        raise AttributeError(f"the CuPy stand-in has no attribute {name!r}")
    if isinstance(value, type) or not callable(value):  # dtypes, constants
        return value
    if name in _CONVERSION:
        return _converter(value)
    if name in _CREATION:
        return _creator(value)
    return _function(value)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    return _to_host(a, "cupy.asnumpy") if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


class _HostCapsule:
    """A producer's capsule as NumPy imports it (the stand-in's devices are host memory)."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **unused):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def from_dlpack(array, *, device=None, copy=None):
    """Zero-copy import of a CUDA array, as CuPy's: the producer is handed CuPy's current
    stream (``__dlpack__(stream=...)``) and the array lives on the producer's device.

    Producers of the tests say kDLCUDA in ``__dlpack_device__`` while their capsule holds
    host memory (a CPU torch tensor, say); the import is recorded.
    """
    kind, index = array.__dlpack_device__()
    if kind != 2:
        raise BufferError(f"the CuPy stand-in imports CUDA memory only; got device type {kind}")
    stream = cuda.get_current_stream().ptr or 1  # 1: the legacy default stream, per DLPack
    _state.note("dlpack", "import", index, stream)
    if isinstance(array, ndarray):
        return ndarray._of(array._a, array._device)
    data = np.from_dlpack(_HostCapsule(array.__dlpack__(stream=stream)))
    return ndarray._of(data, _state.check_device(index))


def install():
    """Put the stand-in in place of CuPy (``import cupy`` then gives it) and return it."""
    module = sys.modules[__name__]
    sys.modules.update({"cupy": module, "cupy.cuda": cuda, "cupy.testing": testing})
    return module


__all__ = [
    "RawKernel",
    "RawModule",
    "asnumpy",
    "cuda",
    "from_dlpack",
    "get_array_module",
    "get_default_memory_pool",
    "install",
    "memoize",
    "ndarray",
    "record",
    "testing",
]
