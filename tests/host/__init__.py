"""Run the CUDA sources of kernels/ on the host.

Each kernels/<name>.cu, as the loader hands it to NVRTC (includes inlined), is compiled by a C++
compiler with shim.h (which turns a launch into one thread of one block) into a shared library,
and its entry points are called through ctypes. ``launch`` has the signature of the GPU
launcher, so ``cuproi._cuda._ops`` runs unchanged on NumPy arrays: the very code that marshals
the GPU arguments is what these tests exercise.
"""

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from cuproi._cuda import _ops, _source

SHIM = Path(__file__).with_name("shim.h")
COMPILER = shutil.which(os.environ.get("CXX", "g++"))

_SCALARS = {
    np.int32: ctypes.c_int32,
    np.int64: ctypes.c_int64,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}


@functools.cache
def _build_dir():
    return Path(tempfile.mkdtemp(prefix="cuproi-host-kernels-"))


@functools.cache
def library(name):
    """kernels/<name>.cu compiled for the host and loaded."""
    folder = _build_dir()
    src = folder / f"{name}.cu"
    src.write_text(_source.source(name))
    lib = folder / f"{name}.so"
    subprocess.run(
        [
            COMPILER,
            "-O2",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-include",
            str(SHIM),
            "-x",
            "c++",
            str(src),
            "-o",
            str(lib),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return ctypes.CDLL(str(lib))


def launch(name, entry, n, args, per_block=False):
    """Call ``entry`` of kernels/<name>.cu once; its grid-stride loop covers all ``n``.

    One thread of one block: a loop over blocks' work (``per_block``) covers it all as well.
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
    function = getattr(library(name), entry)
    function.restype = None
    function(*converted)


def bind(op):
    """``cuproi._cuda._ops.<op>`` bound to NumPy and the host launcher: the backend signature."""
    return functools.partial(getattr(_ops, op), np, launch)
