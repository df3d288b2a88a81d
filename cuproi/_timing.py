"""Timing a call on a backend: the backends found, median host-clock and CUDA-event times.

Shared by ``python -m cuproi bench`` and ``demo``, ``asv_bench/compare.py`` and the asv
benchmarks. CuPy is imported by the caller (or inside a function here), never at import. Also
the measures of ``asv_bench/corners.py``: calls of several libraries timed in turn, the growth of
the peak resident set over a call, and the memory-copy bandwidth that sets a floor.
"""

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
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


def interleaved_seconds(calls, repeat=3, before=lambda key: None, least=0.02):
    """{key: median host-clock seconds a call} of the callables ``calls`` ({key: call}).

    One round times each in turn, in order, and ``repeat`` rounds follow a warm-up round, so
    that a load that comes and goes on the machine weighs on every call alike. A call that
    takes less than ``least`` seconds is timed over as many calls as fill ``least``, so that a
    fraction of a millisecond is not one call's cold start after the others ran. They are
    counted in the warm-up round on a second call: counted on the first, whose imports and
    caches took long, a 1 ms call was timed alone, at 2.8 ms. ``before(key)`` runs, untimed,
    before each of ``key``'s turns (e.g. to set its number of threads).
    """
    times = {key: [] for key in calls}
    number = {}
    for timed in [False] + [True] * repeat:
        for key, call in calls.items():
            before(key)
            if not timed:
                call()  # its cold start, not counted
            start = time.perf_counter()
            for _ in range(number.get(key, 1)):
                call()
            seconds = (time.perf_counter() - start) / number.get(key, 1)
            if timed:
                times[key].append(seconds)
            else:
                number[key] = max(1, int(least / max(seconds, 1e-9)))
    return {key: float(np.median(t)) for key, t in times.items()}


def copy_bandwidth(nbytes=64 * 2**20, repeat=5):
    """Bytes per second that one thread's ``np.copyto`` moves (reads plus writes).

    The best of ``repeat`` copies of an ``nbytes`` array, larger than the caches: a floor for
    any op that must read or write that many bytes.
    """
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)  # written once, so that its pages exist before the timing
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def _status(field):
    """A size of /proc/self/status in bytes (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def resident_growth(call):
    """Bytes by which the peak resident set size over ``call()`` exceeds the size before it.

    What the call holds at its peak, its results included, as the operating system counts it:
    the same measure for NumPy and torch, whose allocators tracemalloc and torch's statistics
    do not both see. Linux only: the peak is reset first (``/proc/self/clear_refs``).
    """
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    result = call()
    peak = _status("VmHWM")
    del result
    return peak - before


# glibc's allocator returns large blocks to the system at once, above a fixed size rather than
# one that grows with the blocks freed, so that the resident set follows the live arrays and
# what the workload's construction freed is not reused, unseen, by the measured call.
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def resident_growth_apart(function, *args, threads=1):
    """``function(*args)``'s return value (e.g. a :func:`resident_growth`), in a fresh process.

    ``function`` is ``"module:name"``; the child runs with ``threads`` threads for cuproi
    (``CUPROI_NUM_THREADS``) and torch (``OMP_NUM_THREADS``), glibc's large blocks given back
    when freed, and this process's ``sys.path``. Raises RuntimeError with the child's last line
    of error output where it fails (e.g. a library not installed).
    """
    module, name = function.split(":")
    code = (
        "import importlib, json, sys; "
        f"f = getattr(importlib.import_module({module!r}), {name!r}); "
        "print(json.dumps(f(*json.loads(sys.argv[1]))))"
    )
    env = {
        **os.environ,
        **_MALLOC,
        "CUPROI_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True
    )
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])
