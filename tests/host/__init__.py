"""Run the CUDA sources of kernels/ on the host.

Each kernels/<name>.cu, as the loader hands it to NVRTC (includes inlined), is compiled by a C++
compiler with shim.h (which turns a launch into one thread of one block) into a shared library,
and its entry points are called through ctypes. ``launch`` has the signature of the GPU
launcher, so the launches of ``cuproi._cuda`` run unchanged on NumPy arrays (``bind``): the very
code that marshals the GPU arguments is what these tests exercise. Inside ``with blocks(...)``,
``launch`` runs the launch's blocks and threads instead (shim.h, block simulator), in a chosen
order.
"""

import contextlib
import ctypes
import functools
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import cuproi._cuda
from cuproi._cuda import _launch, _source

SHIM = Path(__file__).with_name("shim.h")
COMPILER = shutil.which(os.environ.get("CXX", "g++"))
# CUPROI_HOST_SANITIZE=1 builds the kernels with AddressSanitizer and UBSan, float-to-int
# overflow included: the first out-of-bounds access or undefined operation of a kernel aborts
# the run with its report, as compute-sanitizer would on a GPU (for one host thread's
# arithmetic). The ASan runtime must be the first library of the process (docs/testing.md).
SANITIZE = os.environ.get("CUPROI_HOST_SANITIZE") == "1"
ASAN_LOADED = hasattr(ctypes.CDLL(None), "__asan_init")  # the ASan runtime is in this process
_SANITIZERS = (
    "-fsanitize=address,undefined,float-cast-overflow",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
)

_SCALARS = {
    np.int32: ctypes.c_int32,
    np.int64: ctypes.c_int64,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}


@functools.cache
def _build_dir():
    """Builds are named by a hash of what made them, so test runs can share the folder."""
    folder = Path(tempfile.gettempdir()) / f"cuproi-host-kernels-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    return folder


@functools.cache
def library(name):
    """kernels/<name>.cu compiled for the host and loaded."""
    return build(_source.source(name))


def _compile(text, *flags, suffix):
    """Run the host compiler with shim.h on ``text``; the output file's path, cached by both."""
    key = hashlib.sha256("\0".join((SHIM.read_text(), text, *flags)).encode()).hexdigest()[:24]
    out = _build_dir() / f"{key}{suffix}"
    if not out.exists():  # each process its own source and output, another run may build it too
        src = _build_dir() / f"{key}.{os.getpid()}.cu"
        src.write_text(text)
        command = [COMPILER, "-std=c++17", "-include", str(SHIM), "-x", "c++", str(src)]
        partial = out.with_name(f"{out.name}.{os.getpid()}")
        subprocess.run(
            [*command, *flags, "-o", str(partial)],
            check=True,
            capture_output=True,
            env=compiler_environment(),
        )
        os.replace(partial, out)  # whole
        src.unlink()
    return out


@functools.cache
def sanitizer_preload():
    """LD_PRELOAD for CUPROI_HOST_SANITIZE=1, or None where the host compiler has no ASan.

    ASan's runtime first; then libstdc++, whose exceptions ASan intercepts only if it is
    loaded at start (matplotlib's extension throws some as it is imported).
    """
    if COMPILER is None:
        return None
    paths = [
        subprocess.run(
            [COMPILER, f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
        for name in ("libasan.so", "libstdc++.so")
    ]
    return " ".join(paths) if all(os.path.isabs(p) for p in paths) else None


def compiler_environment():
    """This process's environment but LD_PRELOAD: a preloaded ASan runtime crashes nvcc."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@functools.cache
def build(text):
    """CUDA source ``text`` compiled for the host and loaded."""
    flags = ("-O2", "-shared", "-fPIC", "-Wall", "-Werror")
    if SANITIZE:
        if not ASAN_LOADED:
            raise RuntimeError(
                "CUPROI_HOST_SANITIZE=1 needs the ASan runtime loaded first: run Python with "
                'LD_PRELOAD="$(g++ -print-file-name=libasan.so) '
                '$(g++ -print-file-name=libstdc++.so)"'
            )
        flags += _SANITIZERS
    return ctypes.CDLL(str(_compile(text, *flags, suffix=".so")))


_ENTRY = re.compile(r'extern "C" void (\w+)\s*\(([^)]*)\)')


@functools.cache
def signatures(text):
    """{entry point: (parameter type, ...)} of the ``extern "C"`` kernels in CUDA ``text``.

    Read from the preprocessed source (the entry points are written by macros); each type is
    as declared, e.g. ``const cuproi::half*`` or ``long long``, without its parameter name.
    """
    expanded = _compile(text, "-E", "-P", suffix=".ii").read_text()
    found = {}
    for name, params in _ENTRY.findall(expanded):
        if name.startswith(("cuproi_host_", "_")):  # the shim's own, the C library's
            continue
        found[name] = tuple(
            " ".join(p.split()).rsplit(" ", 1)[0].replace(" *", "*") for p in params.split(",")
        )
    return found


_grid = None  # the settings of `blocks` while it is on


@contextlib.contextmanager
def blocks(threads=256, max_blocks=3, order="ascending", seed=0):
    """Within it, ``launch`` runs ``threads`` threads per block and a grid sized like the GPU
    launcher's (cuproi._cuda._launch) but of at most ``max_blocks`` blocks, so that the
    kernels' block- and grid-stride loops take several turns.

    The blocks run one after the other, their threads one at a time from barrier to barrier
    (shim.h), both in ``order``: "ascending", "descending" or "shuffled" (by ``seed``).
    """
    global _grid
    orders = ("ascending", "descending", "shuffled")
    if order not in orders:
        raise ValueError(f"order must be one of {orders}, got {order!r}")
    _grid = (threads, max_blocks, orders.index(order), seed)
    try:
        yield
    finally:
        _grid = None


@functools.cache
def _workers(threads):
    return ThreadPoolExecutor(threads, "cuproi-host-block")


def _simulate(lib, function, args, n, per_block):
    threads, max_blocks, order, seed = _grid
    grid = min(n if per_block else -(-n // threads), max_blocks)
    indices = list(range(grid))
    if order == 1:
        indices.reverse()
    elif order == 2:
        random.Random(seed).shuffle(indices)

    def thread(index, t):
        lib.cuproi_host_enter(index, t)
        function(*args)
        lib.cuproi_host_leave()

    lib.cuproi_host_grid(grid, threads, order, seed)
    try:
        for index in indices:
            lib.cuproi_host_block()
            running = [_workers(threads).submit(thread, index, t) for t in range(threads)]
            for r in running:
                r.result()
    finally:
        lib.cuproi_host_grid(0, 1, 0, 0)


def launch(name, entry, n, args, per_block=False):
    """Call ``entry`` of kernels/<name>.cu once; its grid-stride loop covers all ``n``.

    One thread of one block: a loop over blocks' work (``per_block``) covers it all as well.
    Inside ``blocks``, the launch's blocks and threads (which skip ``n == 0``, as the GPU
    launcher does).
    """
    converted = []
    for a in args:
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous, f"{entry}: non-contiguous array argument"
            converted.append(ctypes.c_void_p(a.ctypes.data))
        elif type(a) in _SCALARS:
            converted.append(_SCALARS[type(a)](a))
        else:  # the GPU launch would pass a Python int/float as long long/double: a silent bug
            raise TypeError(
                f"{entry}: argument {a!r} of type {type(a).__name__} is not an exact C type"
            )
    lib = library(name)
    function = getattr(lib, entry)
    function.restype = None
    if _grid is None:
        function(*converted)
    elif n > 0:
        _simulate(lib, function, converted, n, per_block)


def device():
    """The ``_launch.Device`` of the host: NumPy arrays, kernels run by ``launch``."""
    return _launch.Device(np, launch)


def bind(op):
    """``cuproi._cuda.<op>`` on NumPy and the host launcher: the backend signature."""
    return functools.partial(getattr(cuproi._cuda, op).__wrapped__, device())
