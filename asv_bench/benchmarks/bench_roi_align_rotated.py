"""Rotated RoI Align (detectron2's ROIAlignRotated head), forward and backward.

Rotated-box heads (aerial images, scene text) pool 7x7 bins from 256 channels of a stride-8
level of two 800x1216 images (100x152); 512 boxes per image (1024) of 16 to 300 pixels at
angles uniform in [-180, 180) degrees (``cuproi._workloads``), adaptive sampling (detectron2's
default, ``POOLER_SAMPLING_RATIO=0``) and 2x2 samples. ``GpuTime`` reports device time from
CUDA events (skipped without a GPU).
"""

from . import common

OP = "roi_align_rotated"
CALLS = ("forward", "backward", "backward_deterministic")
SAMPLING_RATIOS = [0, 2]
BOXES = 1024


class BoxHead(common.Benchmark):
    """1024 rotated boxes, 256 channels, 7x7 bins; adaptive and 2x2 sampling."""

    param_names = [*common.Benchmark.param_names, "sampling_ratio"]
    params = [*common.Benchmark.params, SAMPLING_RATIOS]
    op, timed = OP, CALLS

    def setup(self, backend, sampling_ratio):
        self.prepare(backend, num_boxes=BOXES, sampling_ratio=sampling_ratio)


class GpuTime(common.DeviceTime):
    """Device time, float32 and float16."""

    param_names = ["sampling_ratio", "dtype"]
    params = [SAMPLING_RATIOS, common.DTYPES]
    op, timed = OP, CALLS

    def setup(self, sampling_ratio, dtype):
        self.prepare("cupy", dtype, num_boxes=BOXES, sampling_ratio=sampling_ratio)
