"""Rotated RoI Align (detectron2's ROIAlignRotated head), forward and backward.

Rotated-box heads (aerial images, scene text) pool 7x7 bins from 256 channels of a stride-8
level of two 800x1216 images (100x152); 512 boxes per image (1024) of 16 to 300 pixels at
angles uniform in [-180, 180) degrees, adaptive sampling (detectron2's default,
``POOLER_SAMPLING_RATIO=0``) and 2x2 samples. ``GpuTime`` reports device time from CUDA events
(skipped without a GPU).
"""

import numpy as np

import cuproi

from .common import Benchmark, gpu_seconds, workload

POOLED = 7


class _RotatedOps(Benchmark):
    """Arrays and the timed calls; setup runs every call once (compiles)."""

    def prepare(self, backend, sampling_ratio, dtype="float32"):
        self.setup_backend(backend)
        if backend == "numpy" and dtype == "float16":
            raise NotImplementedError("the CPU backend computes float16 in float32")
        xp = self.xp
        x, boxes = workload(1024)
        rng = np.random.default_rng(1)
        centre = (boxes[:, 1:3] + boxes[:, 3:5]) / 2
        size = boxes[:, 3:5] - boxes[:, 1:3]
        angle = rng.uniform(-180, 180, len(boxes))
        rotated = np.column_stack([boxes[:, 0], centre, size, angle]).astype(np.float32)
        x, rois = xp.asarray(x.astype(dtype)), xp.asarray(rotated)
        grad = xp.asarray(rng.standard_normal((len(rois), x.shape[1], POOLED, POOLED)), dtype)
        scale, ratio = 1 / 8, sampling_ratio
        self.calls = {
            "forward": lambda: cuproi.roi_align_rotated(x, rois, POOLED, scale, ratio),
            "backward": lambda: cuproi.roi_align_rotated_backward(
                grad, rois, x.shape, POOLED, scale, ratio
            ),
            "backward_deterministic": lambda: cuproi.roi_align_rotated_backward(
                grad, rois, x.shape, POOLED, scale, ratio, deterministic=True
            ),
        }
        for call in self.calls.values():
            call()
        self.sync()

    def run(self, name):
        self.calls[name]()
        self.sync()


class RoIAlignRotated(_RotatedOps):
    """1024 rotated boxes, 256 channels, 7x7 bins; adaptive and 2x2 sampling."""

    param_names = [*Benchmark.param_names, "sampling_ratio"]
    params = [*Benchmark.params, [0, 2]]

    def setup(self, backend, sampling_ratio):
        self.prepare(backend, sampling_ratio)

    def time_forward(self, *params):
        self.run("forward")

    def time_backward(self, *params):
        self.run("backward")

    def time_backward_deterministic(self, *params):
        self.run("backward_deterministic")


class RoIAlignRotatedGpuTime(_RotatedOps):
    """Device time (CUDA events), float32 and float16; skipped without a GPU."""

    param_names = ["sampling_ratio", "dtype"]
    params = [[0, 2], ["float32", "float16"]]
    unit = "seconds"

    def setup(self, sampling_ratio, dtype):
        self.prepare("cupy", sampling_ratio, dtype)

    def track_forward(self, *params):
        return gpu_seconds(self.calls["forward"])

    def track_backward(self, *params):
        return gpu_seconds(self.calls["backward"])

    def track_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["backward_deterministic"])
