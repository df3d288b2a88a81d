"""The stand-in's ndarray and array functions: NumPy memory that belongs to a device.

As in CuPy, an array is allocated on the current device and every operation runs on the
current device: reading an array of another device raises without peer access and is recorded
with it, while views (reshape, transpose, basic slices) stay with the memory they view. Every
copy to the host (``get``, ``asnumpy``, ``tolist``, ``item``, ``bool``, ``int``, ``float``) is
recorded as the host synchronisation it is on a GPU, and implicit conversion to NumPy raises
TypeError as CuPy's does.
"""

import itertools
import operator

import numpy as np

from cupy_standin import _state


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _unwrap(value, what):
    """NumPy data of stand-in arrays in ``value`` (also in lists and keyword dicts), read on the
    current device."""
    if isinstance(value, ndarray):
        _state.reading(value._device, what)
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)} ({what}): move it to the device first")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what) for v in value)
    if isinstance(value, dict):  # keyword arguments, as copyto's where=
        return {key: _unwrap(v, what) for key, v in value.items()}
    return value


def _wrap(result, sources=()):
    """``result`` of NumPy as stand-in arrays: views on their source's device, new data on the
    current device; NumPy scalars become 0-d arrays (CuPy's reductions return device arrays)."""
    if isinstance(result, tuple):
        return tuple(_wrap(r, sources) for r in result)
    if isinstance(result, np.generic):
        result = np.asarray(result)
    if not isinstance(result, np.ndarray):
        return result
    for source in sources:
        if _root(result) is _root(source._a):
            return ndarray._of(result, source._device)
    return ndarray._of(result, _state.current_device())


_allocations = itertools.count()


def poisoned(a):
    """``a`` filled as CuPy's memory pool may hand a block back: with what its last user left.

    NumPy's fresh pages are zeros, and a run's arrays tend to be filled alike from one run to
    the next: a kernel that adds into memory it did not zero, or leaves elements unwritten,
    would pass. So each allocation gets a value of its own (finite, so that comparing two runs
    does not find NaN equal to NaN): 1000 or more for floats, near the largest for integers.
    """
    n = next(_allocations) % 1024
    if a.dtype.kind in "fc":
        a.fill(1000 + n)  # whole numbers, apart in float16 too
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max - n)
    elif a.dtype.kind == "b":
        a.fill(True)
    return a


def _to_host(array, what):
    _state.note("transfers", what, array.nbytes)
    return array._a.copy()


class ndarray:  # noqa: N801 (CuPy's name)
    """A CuPy array of the stand-in: ``_a`` (NumPy data) on device ``_device``."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        self._a = poisoned(np.empty(shape, dtype, order=order))
        self._device = _state.current_device()

    @classmethod
    def _of(cls, data, device):
        array = cls.__new__(cls)
        array._a, array._device = data, device
        return array

    # ---- what an array is ------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: self.transpose())

    @property
    def device(self):
        from cupy_standin.cuda import Device

        return Device(self._device)

    @property
    def data(self):
        class MemoryPointer:
            ptr = self._a.ctypes.data
            device_id = self._device

        return MemoryPointer()

    @property
    def __cuda_array_interface__(self):
        from cupy_standin.cuda import get_current_stream

        contiguous = self._a.flags.c_contiguous
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self._a.ctypes.data, False),
            "strides": None if contiguous else self.strides,
            "version": 3,
            "stream": get_current_stream().ptr or 1,
        }

    def __dlpack_device__(self):
        return (2, self._device)  # kDLCUDA

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """The DLPack capsule of the NumPy memory (it says kDLCPU: consumers of the stand-in
        are host code). ``stream`` is the consumer's, recorded as a CuPy producer would wait
        on it."""
        if stream is not None and not isinstance(stream, int):
            raise TypeError(f"stream must be an int or None; got {type(stream).__name__}")
        _state.note("dlpack", "export", self._device, stream)
        return self._a.__dlpack__()

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"array({np.array2string(self._a, separator=', ')}, device={self._device})"

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # ---- copies to the host ----------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        return _to_host(self, "ndarray.get")

    def tolist(self):
        return _to_host(self, "ndarray.tolist").tolist()

    def item(self):
        return _to_host(self, "ndarray.item").item()

    def __bool__(self):
        return bool(_to_host(self, "bool(ndarray)"))

    def __int__(self):
        return int(_to_host(self, "int(ndarray)"))

    def __float__(self):
        return float(_to_host(self, "float(ndarray)"))

    def __index__(self):
        return operator.index(_to_host(self, "ndarray.__index__")[()])

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    # ---- NumPy protocols: ufuncs and functions on stand-in arrays give stand-in arrays -----
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if kwargs.get("out") is not None:
            return NotImplemented
        args = _unwrap(inputs, f"numpy.{ufunc.__name__}")
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, function, types, args, kwargs):
        what = f"numpy.{function.__name__}"
        return _wrap(function(*_unwrap(args, what), **_unwrap(kwargs, what)))

    # ---- indexing ---------------------------------------------------------------------------
    def __getitem__(self, key):
        result = self._a[_unwrap(key, "index")]
        if _root(result) is not _root(self._a):  # advanced indexing: a kernel makes a copy
            _state.reading(self._device, "ndarray.__getitem__")
        return _wrap(result, [self])

    def __setitem__(self, key, value):
        _state.reading(self._device, "ndarray.__setitem__")
        if isinstance(value, np.ndarray):  # CuPy copies host data in
            value = value.copy()
        else:
            value = _unwrap(value, "ndarray.__setitem__")
        self._a[_unwrap(key, "index")] = value

    # ---- every other method: NumPy's, on the current device (views stay where they are) ----
    def __getattr__(self, name):
        method = getattr(np.ndarray, name, None)
        if not callable(method) or name.startswith("_"):
            raise AttributeError(f"'ndarray' object has no attribute {name!r}")

        def call(*args, **kwargs):
            what = f"ndarray.{name}"
            result = getattr(self._a, name)(*_unwrap(args, what), **_unwrap(kwargs, what))
            if isinstance(result, np.ndarray) and result is self._a:
                return self
            if not (isinstance(result, np.ndarray) and _root(result) is _root(self._a)):
                _state.reading(self._device, what)
            return _wrap(result, [self])

        return call


def _operator(function, reflected=False, inplace=False):
    def method(self, other):
        what = f"operator.{function.__name__}"
        if isinstance(other, np.ndarray):
            return NotImplemented
        a, b = _unwrap(self, what), _unwrap(other, what)
        if inplace:
            function(a, b)
            return self
        return _wrap(function(b, a) if reflected else function(a, b))

    return method


for _name in (
    "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift lt le gt ge eq ne".split()
):
    _function = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _operator(_function))
    if _name not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(ndarray, f"__r{_name}__", _operator(_function, reflected=True))
        setattr(ndarray, f"__i{_name}__", _operator(getattr(operator, f"i{_name}"), inplace=True))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(
        ndarray,
        f"__{_name}__",
        (lambda f: lambda self: _wrap(f(_unwrap(self, f"operator.{f.__name__}"))))(
            getattr(operator, _name)
        ),
    )
ndarray.__hash__ = None
