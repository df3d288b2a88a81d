"""Timing a call on a backend: the backends found, median host-clock and CUDA-event times.

Shared by ``python -m cuproi bench`` and ``demo``, ``asv_bench/compare.py`` and the asv
benchmarks. CuPy is imported by the caller (or inside a function here), never at import.
"""

import time
from typing import NamedTuple

import numpy as np


class Backend(NamedTuple):
    """An array module to run the ops on, with what moves results back and waits for it."""

    name: str
    xp: object  # numpy or cupy
    back: object  # backend array -> host array
    sync: object  # wait for the device


def backends(cupy):
    """NumPy, and CuPy unless ``cupy`` is None."""
    found = [Backend("numpy", np, np.asarray, lambda: None)]
    if cupy is not None:
        sync = cupy.cuda.get_current_stream().synchronize
        found.append(Backend("cupy", cupy, cupy.asnumpy, lambda: sync()))
    return found


def host_seconds(call, sync, repeat=3):
    """(result, median host-clock seconds) of ``repeat`` calls after a warm-up call.

    The warm-up compiles the kernels; ``sync`` ends every call, so device work is timed too.
    """
    call()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))


def autorange(call, sync, at_least=3, seconds=0.2, most=10_000):
    """(result, median host-clock seconds, calls timed): as many calls as fill ``seconds``.

    Two warm-up calls first: the first compiles the kernels and imports what the op needs
    lazily, the second fills what the first left to build (caches, thread pools), so that a
    small problem is not timed by its setup. Then calls are timed until there are at least
    ``at_least`` of them and they took ``seconds`` in all (at most ``most``); ``sync`` ends
    every call, so device work is timed too.
    """
    for _ in range(2):
        call()
        sync()
    times = []
    while len(times) < most and (len(times) < at_least or sum(times) < seconds):
        start = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times)), len(times)


def device_seconds(call, repeat=20):
    """Median device seconds of ``repeat`` calls after a warm-up, from CUDA events around each.

    The events go on the legacy default stream, which both CuPy and torch launch on by default;
    the device is idle at each start, so host launch overhead is counted too.
    """
    import cupy

    call()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))
