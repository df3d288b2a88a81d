"""Compile the kernels lazily, once per device, and launch them on the current CuPy stream."""

import functools

from cuproi._cuda import _source

_OPTIONS = ("--std=c++17",)
_THREADS = 256
_MAX_BLOCKS = 65535  # grid-stride loops cover any n with a bounded grid


@functools.cache
def _kernels():
    import cupy  # only here: importing cuproi never imports cupy

    @cupy.memoize(for_each_device=True)
    def module(name):
        return cupy.RawModule(code=_source.source(name), options=_OPTIONS)

    @cupy.memoize(for_each_device=True)
    def kernel(name, entry):
        return module(name).get_function(entry)

    return kernel


def grid(n, per_block=False):
    """Blocks of the launch of ``n`` items, and the stride of its grid-stride loop."""
    blocks = min(n if per_block else -(-n // _THREADS), _MAX_BLOCKS)
    return blocks, blocks if per_block else blocks * _THREADS


def launch(name, entry, n, args, per_block=False):
    """Run ``entry`` of kernels/<name>.cu over ``n`` elements on the current device and stream.

    With ``per_block`` the ``n`` items are blocks' work (one block each, in a block-stride
    loop) rather than threads'.
    """
    if n == 0:
        return
    _kernels()(name, entry)((grid(n, per_block)[0],), (_THREADS,), args)
