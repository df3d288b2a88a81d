"""Precise RoI Pooling (IoU-Net), forward, input gradient and box gradient.

IoU-Net's head pools 7 x 7 bins from one stride-16 map of two 800x1216 images (50x76, 256
channels) for 600 boxes of 32 to 512 pixels (``cuproi._workloads``); the box gradient is what
its optimization-based refinement runs. ``GpuTime`` reports device time from CUDA events
(skipped without a GPU).
"""

from cuproi import _workloads

from . import common

OP = "prroi_pool"
CALLS = ("forward", "backward", "backward_deterministic", "box_backward")


class Head(common.Benchmark):
    """600 boxes, 7x7 bins, 256 channels."""

    param_names = [*common.Benchmark.param_names, "dtype"]
    params = [*common.Benchmark.params, common.DTYPES]
    op, timed = OP, CALLS

    def setup(self, backend, dtype):
        self.prepare(backend, dtype, **_workloads.SINGLE_MAP_HEAD)


class GpuTime(common.DeviceTime):
    """Device time, float32 and float16."""

    param_names = ["dtype"]
    params = [common.DTYPES]
    op, timed = OP, CALLS

    def setup(self, dtype):
        self.prepare("cupy", dtype, **_workloads.SINGLE_MAP_HEAD)
