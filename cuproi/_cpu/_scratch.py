"""The CPU backend's largest temporary, kept from one call to the next (one per thread).

A NumPy array of tens of megabytes is mapped afresh by the C allocator at every call and
unmapped when freed, so every call pays again for faulting in its pages as they are first
written: the tiles of P2 that 16 boxes read (42 MB) and RoI Pool's key table of the box head
(62 MB) cost their ops 4 to 13 ms a call that way on this project's 2-core VM
(docs/benchmarks.md, "Fresh pages"). So the backend takes such a temporary (the features laid
out channels last, RoI Pool's table) from here and gives it back when the call is done with
it: each thread keeps the largest buffer given back, up to KEEP bytes, and lends it to its
next take. A buffer is lent to one array at a time, never to one that leaves the call.
"""

import threading
import weakref

import numpy as np

KEEP = 1 << 28  # bytes: a larger buffer is freed as usual (256 MiB)

_local = threading.local()


def _lent():
    """Weak references to the buffers this thread lent and not given back.

    Weak, so that a buffer whose array is dropped without being given back (an exception
    inside the op) is freed as usual.
    """
    if not hasattr(_local, "lent"):
        _local.lent = []
    _local.lent[:] = [ref for ref in _local.lent if ref() is not None]
    return _local.lent


def take(shape, dtype):
    """An uninitialized C-contiguous array, on this thread's kept buffer when it is large enough.

    Give it back with :func:`give` once it is no longer used; a second take in the meantime
    gets a fresh buffer.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = getattr(_local, "kept", None)
    if buffer is None or buffer.size < nbytes:
        buffer = np.empty(max(nbytes, 1), np.uint8)
    else:
        _local.kept = None  # lent
    _lent().append(weakref.ref(buffer))
    return buffer[:nbytes].view(dtype).reshape(shape)


def give(array):
    """Keep the buffer of ``array``, if :func:`take` lent it, for this thread's next take.

    Anything else (a view of the caller's features, which no copy was needed for) is ignored.
    """
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    lent = _lent()
    if not any(ref() is root for ref in lent):
        return
    lent[:] = [ref for ref in lent if ref() is not root]
    kept = getattr(_local, "kept", None)
    if root.size <= KEEP and (kept is None or root.size > kept.size):
        _local.kept = root
