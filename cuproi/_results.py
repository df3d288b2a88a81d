"""The memory a backend's results go into: new arrays, or arrays its caller lends.

cuproi.jax runs the backends inside XLA, which owns the memory of every result. It lends
XLA's result buffers to the backend for one call (:func:`lend`), and the backends allocate
their results with :func:`empty` and :func:`zeros`, which hand out a lent array of the array
type, dtype and size asked for (reshaped to the shape asked for), each at most once, and
allocate a new array otherwise. Without a lender nothing changes. A result computed elsewhere
(float16 summed in float32, say) costs the lender a copy into its buffer, never a wrong value:
the lender checks where each result lies.
"""

import contextlib
import math
import threading

import numpy as np

_local = threading.local()  # each thread lends its own (JAX runs callbacks on several threads)


@contextlib.contextmanager
def lend(arrays):
    """Let this thread's allocations of results in the block take ``arrays`` (C-contiguous)."""
    before = getattr(_local, "lent", None)
    _local.lent = list(arrays)
    try:
        yield
    finally:
        _local.lent = before


def _take(xp, shape, dtype):
    lent = getattr(_local, "lent", None)
    if not lent:
        return None
    dtype, count = np.dtype(dtype), math.prod(shape)
    for i, array in enumerate(lent):
        if isinstance(array, xp.ndarray) and array.dtype == dtype and array.size == count:
            del lent[i]
            return array.reshape(shape)
    return None


def empty(xp, shape, dtype):
    """``xp.empty(shape, dtype)``, or a lent array of that size and dtype."""
    array = _take(xp, shape, dtype)
    return xp.empty(shape, dtype) if array is None else array


def zeros(xp, shape, dtype):
    """``xp.zeros(shape, dtype)``, or a lent array of that size and dtype, zeroed."""
    array = _take(xp, shape, dtype)
    if array is None:
        return xp.zeros(shape, dtype)
    array.fill(0)
    return array
