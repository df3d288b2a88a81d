"""Threads of the CPU backend: one pool, ordered maps over ranges of work.

The heavy steps of the backend (SciPy's sparse products, NumPy gathers, reductions and copies)
run in C with the GIL released, so a few Python threads keep several cores busy, as
torchvision's C++ kernels do with their OpenMP threads. Work is split so that the result never
depends on the split: every output element is computed by exactly one task, in the same order
of operations whatever the number of tasks, so outputs and gradients are bitwise identical with
1 thread or 16, from run to run.

The number of threads is ``CUPROI_NUM_THREADS`` when that environment variable is set (read at
every call, so it can be changed at run time; ``1`` runs everything in the calling thread), else
the number of cores this process may run on. A step uses fewer when its work is small
(:func:`workers`): between the long, GIL-free calls, every thread's range makes short NumPy
calls (slicing, building operators) for which the threads queue on the GIL, so a range must
hold enough work to pay for that.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_pools = {}
_lock = threading.Lock()
_inside = threading.local()  # set in pool threads: a task never waits on the pool it runs in

# Work per thread below which one more thread costs more than it saves (see workers), measured
# on a 2-core VM with 7x7 outputs of 64 and 256 channels (docs/benchmarks.md, "Threads on
# small problems"). Sparse products: multiply-adds, counting every operator entry as 16 more
# for building it (_sampling.work_per_entry); RoI Align broke even near 12M.
PRODUCT_GRAIN = 6_000_000
COPY_GRAIN = 1_250_000  # elements of a layout change: two threads won from about 2.5M


def threads():
    """Number of threads the backend uses: ``CUPROI_NUM_THREADS``, else the usable cores."""
    value = os.environ.get("CUPROI_NUM_THREADS", "").strip()
    if value:
        try:
            return max(int(value), 1)
        except ValueError:
            raise ValueError(
                f"CUPROI_NUM_THREADS must be a positive integer, got {value!r}"
            ) from None
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers(work, grain):
    """The threads worth using on ``work``: one per ``grain`` of it, from 1 to threads()."""
    return min(threads(), max(int(work // grain), 1))


def _pool(workers):
    with _lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(
                workers, "cuproi", initializer=setattr, initargs=(_inside, "busy", True)
            )
        return _pools[workers]


def _forget_pools():
    """Start a forked child over with pools of its own.

    A fork copies the pools' queues but not their threads (a task given to them would never
    run, as in a torch DataLoader's workers), and the lock may have been held by a thread that
    is gone.
    """
    global _lock
    _pools.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools)


def map_ordered(fn, items, workers=None):
    """``[fn(item) for item in items]``, the calls spread over the backend's threads.

    At most ``workers`` threads (default: all). Results come back in the order of ``items``,
    computed in the caller's NumPy error state (``np.errstate``). Runs in the calling thread
    when there is one thread, one item, when called from a task of the pool itself, or when
    the pool takes no more work: the interpreter is shutting down (a JAX computation still
    pending at exit).
    """
    items = list(items)
    workers = min(threads(), len(items), workers or len(items))
    if workers <= 1 or getattr(_inside, "busy", False):
        return [fn(item) for item in items]
    state = np.geterr()  # NumPy's error state is per thread: the tasks take the caller's

    def task(item):
        with np.errstate(**state):
            return fn(item)

    try:
        results = _pool(workers).map(task, items)  # submits every item, or raises at the first
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        return [fn(item) for item in items]
    return list(results)


def split(cost, parts):
    """Boundaries ``[0, ..., len(cost)]`` of at most ``parts`` consecutive ranges of ``cost``.

    The ranges carry about equal summed cost; every range is non-empty.
    """
    n = len(cost)
    parts = max(min(parts, n), 1)
    total = np.cumsum(cost, dtype=np.float64)
    if n == 0 or total[-1] <= 0:
        edges = np.linspace(0, n, parts + 1).astype(np.int64)
    else:
        targets = total[-1] * np.arange(1, parts) / parts
        edges = np.concatenate([[0], np.searchsorted(total, targets, side="right"), [n]])
    return np.unique(edges).tolist()


def ranges(cost, workers=None):
    """Consecutive ``(start, stop)`` ranges of ``cost`` for ``workers`` threads (default: all).

    Ranges are about equal in cost. For all the threads, a few more ranges than threads, so
    that a slow range does not leave the others idle; for fewer (or one), one range each, so
    that :func:`map_ordered` takes no more threads than that.
    """
    n = threads()
    workers = n if workers is None else min(workers, n)
    edges = split(cost, 2 * n if workers == n > 1 else workers)
    return list(zip(edges[:-1], edges[1:], strict=True))


def for_ranges(fn, cost, workers=None):
    """``fn(start, stop)`` for the ranges of :func:`ranges`, in parallel; results in order."""
    return map_ordered(lambda r: fn(*r), ranges(cost, workers))
