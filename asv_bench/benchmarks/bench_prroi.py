"""Precise RoI Pooling (IoU-Net), forward, input gradient and box gradient.

IoU-Net's head pools 7 x 7 bins from one stride-16 map of two 800x1216 images (50x76, 256
channels) for 600 boxes of 32 to 512 pixels; the box gradient is what its optimization-based
refinement runs. ``GpuTime`` reports device time from CUDA events (skipped without a GPU).
"""

import numpy as np

import cuproi

from .common import Benchmark, gpu_seconds, workload

POOLED = 7


class _PrRoIOps(Benchmark):
    """Arrays and the timed calls; setup runs every call once (compiles)."""

    def prepare(self, backend, dtype="float32"):
        self.setup_backend(backend)
        if backend == "numpy" and dtype == "float16":
            raise NotImplementedError("the CPU backend computes float16 in float32")
        xp = self.xp
        x, boxes = workload(600, 256, height=50, width=76, stride=16, extent=(32, 512))
        x, boxes = xp.asarray(x.astype(dtype)), xp.asarray(boxes)
        rng = np.random.default_rng(1)
        grad = xp.asarray(rng.standard_normal((600, 256, POOLED, POOLED)).astype(dtype))
        scale = 1 / 16
        self.calls = {
            "prroi_pool_forward": lambda: cuproi.prroi_pool(x, boxes, POOLED, scale),
            "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(
                grad, boxes, x.shape, POOLED, scale
            ),
            "prroi_pool_backward_deterministic": lambda: cuproi.prroi_pool_backward(
                grad, boxes, x.shape, POOLED, scale, deterministic=True
            ),
            "prroi_pool_box_backward": lambda: cuproi.prroi_pool_box_backward(
                grad, x, boxes, POOLED, scale
            ),
        }
        for call in self.calls.values():
            call()
        self.sync()

    def run(self, name):
        self.calls[name]()
        self.sync()


class PrRoIPool(_PrRoIOps):
    """600 boxes, 7x7 bins, 256 channels."""

    param_names = [*Benchmark.param_names, "dtype"]
    params = [*Benchmark.params, ["float32", "float16"]]

    def setup(self, backend, dtype):
        self.prepare(backend, dtype)

    def time_prroi_pool_forward(self, *params):
        self.run("prroi_pool_forward")

    def time_prroi_pool_backward(self, *params):
        self.run("prroi_pool_backward")

    def time_prroi_pool_backward_deterministic(self, *params):
        self.run("prroi_pool_backward_deterministic")

    def time_prroi_pool_box_backward(self, *params):
        self.run("prroi_pool_box_backward")


class PrRoIGpuTime(_PrRoIOps):
    """Device time (CUDA events); skipped without a GPU."""

    param_names = ["dtype"]
    params = [["float32", "float16"]]
    unit = "seconds"

    def setup(self, dtype):
        self.prepare("cupy", dtype)

    def track_prroi_pool_forward(self, *params):
        return gpu_seconds(self.calls["prroi_pool_forward"])

    def track_prroi_pool_backward(self, *params):
        return gpu_seconds(self.calls["prroi_pool_backward"])

    def track_prroi_pool_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["prroi_pool_backward_deterministic"])

    def track_prroi_pool_box_backward(self, *params):
        return gpu_seconds(self.calls["prroi_pool_box_backward"])
