"""RawModule and RawKernel of the stand-in: the CUDA text run on the host, with CuPy's rules.

The code is compiled with the host compiler and tests/host/shim.h (a launch runs as one thread
whose grid-stride loop covers every element), so what runs is the very text CuPy would hand
NVRTC. Before each launch the stand-in checks what a GPU would reject or silently get wrong:
grid and block limits, registers and static shared memory per block (from ``nvcc -Xptxas -v``
where nvcc exists), the argument count, scalars of the exact C type of their parameter (CuPy
passes a Python int as a 64-bit integer and a float as a double), array element types, C
order, arrays of the device the kernel runs on, and no array it writes sharing memory with
another of its arrays. It runs on the current stream, and the launch is recorded.
"""

import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import host
import numpy as np

from cupy_standin import _state
from cupy_standin._array import ndarray
from cupy_standin.cuda import get_current_stream

NVCC = shutil.which("nvcc")
# x86-64 has the control bits that mirror -ftz=true (tests/host/shim.h).
FLUSHES_SUBNORMALS = platform.machine() in ("x86_64", "AMD64")

_POINTEES = {
    "cuproi::half": np.float16,
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "long long": np.int64,
    "cuproi::u64": np.uint64,
    "unsigned long long": np.uint64,
}
_SCALARS = {
    "int": (np.int32, ctypes.c_int32),
    "long long": (np.int64, ctypes.c_int64),
    "float": (np.float32, ctypes.c_float),
    "double": (np.float64, ctypes.c_double),
}
_MAX_BLOCK = (1024, 1024, 64)
_MAX_GRID = (2**31 - 1, 65535, 65535)
_THREADS_PER_BLOCK = 1024
_SHARED_PER_BLOCK = 48 << 10
_REGISTERS_PER_BLOCK = 65536


@functools.cache
def _resources(code):
    """{entry: (registers, static shared bytes)} from ptxas, or {} without nvcc (kept beside
    the host builds, by a hash of the code)."""
    if NVCC is None:
        return {}
    saved = host._build_dir() / f"{hashlib.sha256(code.encode()).hexdigest()[:24]}.ptxas.json"
    if saved.exists():
        return {k: tuple(v) for k, v in json.loads(saved.read_text()).items()}
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "module.cu"
        src.write_text(code)
        command = [NVCC, "-cubin", "-arch=sm_80", "--std=c++17", "-Xptxas", "-v", str(src)]
        log = subprocess.run(
            [*command, "-o", str(Path(folder) / "module.cubin")],
            capture_output=True,
            text=True,
            check=True,
            env=host.compiler_environment(),
        ).stderr
    found, entry = {}, None
    for line in log.splitlines():
        match = re.search(r"Compiling entry function '(\w+)'", line)
        if match:
            entry = match.group(1)
        match = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if match and entry:
            found[entry] = (int(match.group(1)), int(match.group(2)))
    partial = saved.with_name(f"{saved.name}.{os.getpid()}")
    partial.write_text(json.dumps(found))
    os.replace(partial, saved)
    return found


def _dim3(value, limits, what):
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints; got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d < 1 or d > limit for d, limit in zip(dims, limits, strict=True)):
        raise _state.CUDADriverError(
            f"CUDA_ERROR_INVALID_VALUE: {what} {dims} outside the limits {limits}"
        )
    return dims


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", **unused):
        if code is None:
            raise NotImplementedError("the stand-in compiles source code only (no path=)")
        self.code = code
        # CuPy appends -ftz=true after the caller's options, so it always wins.
        self.options = (*tuple(options), "-ftz=true")

    def get_function(self, name):
        signatures = host.signatures(self.code)
        if name not in signatures:
            raise _state.CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        return RawKernel(self.code, name, self.options, _module=self)

    @property
    def flushes_subnormals(self):
        """Whether float32 arithmetic flushes subnormals (the last -ftz option wins)."""
        ftz = [o for o in self.options if o.startswith(("-ftz=", "--ftz="))]
        return ftz[-1].endswith("true")


def _span(a):
    """The bytes ``[start, end)`` of array ``a``'s memory (C-contiguous)."""
    return a.ctypes.data, a.ctypes.data + a.nbytes


def _no_overlap_with_written(spans):
    """Refuse a launch whose written array shares memory with another of its arrays.

    ``spans`` are ``(where, read only, start, end)``. On a GPU such a launch races between the
    threads that write and those that read, and the kernels read their const arrays through
    the read-only data cache (``__ldg``), which does not see the launch's own writes.
    """
    for i, (where, read_only, start, end) in enumerate(spans):
        for other, other_read_only, other_start, other_end in spans[i + 1 :]:
            if not (read_only and other_read_only) and start < other_end and other_start < end:
                raise ValueError(f"{where} and {other} share memory, and the kernel writes one")


class RawKernel:
    def __init__(self, code, name, options=(), *, _module=None, **unused):
        self.module = _module or RawModule(code, options=options)
        self.name = name
        self.params = host.signatures(code)[name]
        self.device = _state.current_device()  # a function is loaded on one device

    def __call__(self, grid, block, args, *, shared_mem=0, enable_cooperative_groups=False):
        device = _state.current_device()
        grid = _dim3(grid, _MAX_GRID, "grid")
        block = _dim3(block, _MAX_BLOCK, "block")
        threads = block[0] * block[1] * block[2]
        registers, shared = _resources(self.module.code).get(self.name, (0, 0))
        if threads > _THREADS_PER_BLOCK or threads * registers > _REGISTERS_PER_BLOCK:
            raise _state.CUDADriverError(
                f"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: {self.name}: {threads} threads of "
                f"{registers} registers"
            )
        if shared + shared_mem > _SHARED_PER_BLOCK:
            raise _state.CUDADriverError(
                f"CUDA_ERROR_INVALID_VALUE: {self.name}: {shared} + {shared_mem} bytes of "
                f"shared memory per block"
            )
        if self.device != device:
            raise _state.CUDADriverError(
                f"CUDA_ERROR_INVALID_HANDLE: {self.name} was loaded on device {self.device} and "
                f"launched on device {device}"
            )
        converted = self._arguments(args)
        stream = get_current_stream()
        if stream.device_id not in (-1, device):
            raise _state.CUDADriverError(
                f"CUDA_ERROR_INVALID_HANDLE: {self.name} launched on device {device} on a "
                f"stream of device {stream.device_id}"
            )
        _state.note("launches", self.name, device, stream.ptr, grid, block)
        self._run(converted)

    def _arguments(self, args):
        if not isinstance(args, tuple):
            raise TypeError(f"{self.name}: args must be a tuple; got {type(args).__name__}")
        if len(args) != len(self.params):
            raise TypeError(
                f"{self.name} takes {len(self.params)} arguments; {len(args)} were given"
            )
        converted, spans = [], []
        for i, (arg, param) in enumerate(zip(args, self.params, strict=True)):
            where = f"{self.name} argument {i} ({param})"
            if param.endswith("*"):
                pointee = param[:-1].removeprefix("const ").strip()
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{where}: expected a device array, got {type(arg).__name__}")
                if arg.dtype != _POINTEES[pointee]:
                    raise TypeError(f"{where}: got an array of {arg.dtype}")
                if not arg.flags.c_contiguous:
                    raise ValueError(f"{where}: the kernel reads a C-contiguous array")
                _state.reading(arg._device, where)
                converted.append(ctypes.c_void_p(arg._a.ctypes.data if arg.size else 0))
                spans.append((where, param.startswith("const "), *_span(arg._a)))
            else:
                dtype, c_type = _SCALARS[param]
                if type(arg) is not dtype:
                    raise TypeError(
                        f"{where}: scalar of type {type(arg).__name__}; CuPy passes Python "
                        "ints as 64-bit integers and floats as doubles, so give the exact "
                        f"NumPy type {dtype.__name__}"
                    )
                converted.append(c_type(arg))
        _no_overlap_with_written(spans)
        return converted

    def _run(self, converted):
        library = host.build(self.module.code)
        function = getattr(library, self.name)
        function.restype = None
        flush = self.module.flushes_subnormals and not self.name.endswith(("_f64", "_f64_i64"))
        if flush and FLUSHES_SUBNORMALS:
            before = library.cuproi_host_flush_subnormals(1)
            try:
                function(*converted)
            finally:
                library.cuproi_host_flush_subnormals(before & 0x8040)
        else:
            function(*converted)
