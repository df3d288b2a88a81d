"""Shared pieces of the op benchmarks: the backend axis, the timed calls, the reference heads.

Workloads and calls come from ``cuproi._workloads`` (reference/performance.md section 1), the
same ones ``asv_bench/compare.py`` and ``python -m cuproi bench`` time. A benchmark class names
its op (``op``) and the calls it times (``timed``, names of ``cuproi._workloads.calls``) and
gets one method per call: ``time_<call>``, or ``track_<call>`` (device seconds from CUDA
events) in a ``DeviceTime`` class. The classes here time nothing themselves, so asv lists only
the subclasses in the ``bench_<op>.py`` modules.
"""

import ctypes

import numpy as np

from cuproi import _timing, _workloads

BACKENDS = ["numpy", "cupy"]
DTYPES = ["float32", "float16"]
# The calls of a Sweep: 24 problems each, so the variants (deterministic, channels last, argmax)
# are timed on the heads only; with them the sweeps took half of a quick run.
SWEPT = ("forward", "backward")


def cuda_devices():
    """The number of CUDA devices the driver sees (0 without a driver), asked of the driver.

    Milliseconds, where importing CuPy to learn that there is no GPU took seconds in every
    benchmark process of the cupy backend: most of a quick run on a machine without one. Ask in
    ``setup`` only, never at import: asv forks the benchmarks' processes, and CUDA initialised
    before a fork does not work after it.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class Benchmark:
    """Holds ``self.xp``, ``self.sync`` and ``self.calls`` for the current parameters.

    ``prepare`` raises NotImplementedError (asv: skipped) when CuPy or a GPU is missing, and
    on CuPy runs every call once (compiles the kernels); every timed call ends with
    ``self.sync()`` so GPU work is inside the timing. On NumPy nothing is run in ``setup``: asv's
    own first calls warm the timed one, and ``--quick`` times a single call anyway, so running
    every call of the class there made most of a quick run's time.
    """

    param_names = ["backend"]
    params = [BACKENDS]
    timeout = 300
    op, timed = None, ()
    prefix = "time"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("timed", ()):
            setattr(cls, f"{cls.prefix}_{name}", cls.method(name))

    @staticmethod
    def method(name):
        def time(self, *params):
            self.calls[name]()
            self.sync()

        return time

    def setup_backend(self, backend, dtype="float32"):
        if backend == "numpy":
            if dtype == "float16":
                raise NotImplementedError("the CPU backend computes float16 in float32")
            self.xp, self.sync = np, lambda: None
            return
        if cuda_devices() == 0:
            raise NotImplementedError("cupy backend unavailable: no CUDA device")
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() == 0:
                raise NotImplementedError("no CUDA device")
        except (ImportError, RuntimeError) as error:
            raise NotImplementedError(f"cupy backend unavailable: {error}") from None
        self.xp = cupy
        self.sync = cupy.cuda.get_current_stream().synchronize

    def prepare(self, backend, dtype="float32", **workload):
        """Arrays of ``_workloads.problem(self.op, dtype=dtype, **workload)`` on ``backend``,
        and the calls named in ``timed`` on them (``self.calls``), each run once on CuPy."""
        self.setup_backend(backend, dtype)
        problem = _workloads.problem(self.op, dtype=dtype, **workload).to(self.xp)
        every = _workloads.calls(self.op, problem)
        self.calls = {name: every[name] for name in self.timed}
        if backend == "cupy":
            for call in self.calls.values():
                call()
            self.sync()


class DeviceTime(Benchmark):
    """Device time (CUDA events) of the calls: ``track_<call>``; skipped without a GPU."""

    unit = "seconds"
    prefix = "track"

    @staticmethod
    def method(name):
        def track(self, *params):
            return _timing.device_seconds(self.calls[name])

        return track


class BoxHead(Benchmark):
    """The box head on one FPN level (stride 8): 512 boxes of 16 to 300 pixels, 7x7 outputs."""

    param_names = [*Benchmark.param_names, "dtype"]
    params = [*Benchmark.params, DTYPES]
    head = "box head"

    def setup(self, backend, dtype):
        self.prepare(backend, dtype, **_workloads.HEADS[self.head])


class Sweep(Benchmark):
    """Cost growth with the number of boxes and their size (64 channels, 7x7, float32), of the
    calls in :data:`SWEPT`."""

    param_names = [*Benchmark.param_names, "num_boxes", "box_size"]
    params = [*Benchmark.params, list(_workloads.SWEEP_BOXES), list(_workloads.BOX_SIZES)]

    def setup(self, backend, num_boxes, box_size):
        extent = _workloads.BOX_SIZES[box_size]
        self.prepare(backend, num_boxes=num_boxes, extent=extent, **_workloads.SWEEP)


class HeadsDeviceTime(DeviceTime):
    """Device time of the box and mask heads, float32 and float16."""

    param_names = ["workload", "dtype"]
    params = [list(_workloads.HEADS), DTYPES]

    def setup(self, workload, dtype):
        self.prepare("cupy", dtype, **_workloads.HEADS[workload])


class RfcnHeads(Benchmark):
    """R-FCN's classification (21 outputs) and box (8) heads: 600 boxes of 32 to 512 pixels on
    one stride-16 map (50x76), 7x7 bins, so 21 x 49 and 8 x 49 score maps."""

    param_names = [*Benchmark.param_names, "head", "dtype"]
    params = [*Benchmark.params, list(_workloads.RFCN_CHANNELS), DTYPES]

    def setup(self, backend, head, dtype):
        channels = _workloads.RFCN_CHANNELS[head]
        self.prepare(backend, dtype, channels=channels, **_workloads.SINGLE_MAP_HEAD)


class RfcnHeadsDeviceTime(DeviceTime):
    """Device time of R-FCN's two heads, float32 and float16."""

    param_names = ["head", "dtype"]
    params = [list(_workloads.RFCN_CHANNELS), DTYPES]

    def setup(self, head, dtype):
        channels = _workloads.RFCN_CHANNELS[head]
        self.prepare("cupy", dtype, channels=channels, **_workloads.SINGLE_MAP_HEAD)
