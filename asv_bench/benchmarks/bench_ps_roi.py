"""Position-sensitive RoI Align and RoI Pool (R-FCN), forward and backward.

R-FCN's heads on a stride-16 map of two 800x1216 images (50x76): ``k x k = 7 x 7`` bins and
``C = C_out * 49`` score maps, with ``C_out = 21`` for the classification head (20 classes and
background) and ``C_out = 8`` for the class-agnostic box head; 300 boxes per image of 32 to 512
pixels. ``GpuTime`` reports device time from CUDA events (skipped without a GPU).
"""

import numpy as np

import cuproi

from .common import Benchmark, gpu_seconds, workload

HEADS = {"cls": 21, "bbox": 8}
POOLED = 7


class _PsOps(Benchmark):
    """Arrays and the timed calls of one head; setup runs every call once (compiles)."""

    def prepare(self, backend, head, dtype="float32"):
        self.setup_backend(backend)
        if backend == "numpy" and dtype == "float16":
            raise NotImplementedError("the CPU backend computes float16 in float32")
        xp = self.xp
        c_out = HEADS[head]
        x, boxes = workload(
            600, c_out * POOLED * POOLED, height=50, width=76, stride=16, extent=(32, 512)
        )
        x, boxes = xp.asarray(x.astype(dtype)), xp.asarray(boxes)
        rng = np.random.default_rng(1)
        grad = xp.asarray(rng.standard_normal((600, c_out, POOLED, POOLED)).astype(dtype))
        scale = 1 / 16
        self.calls = {
            "ps_roi_align_forward": lambda: cuproi.ps_roi_align(x, boxes, POOLED, scale, 2),
            "ps_roi_align_backward": lambda: cuproi.ps_roi_align_backward(
                grad, boxes, x.shape, POOLED, scale, 2
            ),
            "ps_roi_align_backward_deterministic": lambda: cuproi.ps_roi_align_backward(
                grad, boxes, x.shape, POOLED, scale, 2, deterministic=True
            ),
            "ps_roi_pool_forward": lambda: cuproi.ps_roi_pool(x, boxes, POOLED, scale),
            "ps_roi_pool_backward": lambda: cuproi.ps_roi_pool_backward(
                grad, boxes, x.shape, POOLED, scale
            ),
            "ps_roi_pool_backward_deterministic": lambda: cuproi.ps_roi_pool_backward(
                grad, boxes, x.shape, POOLED, scale, deterministic=True
            ),
        }
        for call in self.calls.values():
            call()
        self.sync()

    def run(self, name):
        self.calls[name]()
        self.sync()


class PsHeads(_PsOps):
    """R-FCN's classification and box heads, 600 boxes, 7x7 bins."""

    param_names = [*Benchmark.param_names, "head", "dtype"]
    params = [*Benchmark.params, list(HEADS), ["float32", "float16"]]

    def setup(self, backend, head, dtype):
        self.prepare(backend, head, dtype)

    def time_ps_roi_align_forward(self, *params):
        self.run("ps_roi_align_forward")

    def time_ps_roi_align_backward(self, *params):
        self.run("ps_roi_align_backward")

    def time_ps_roi_align_backward_deterministic(self, *params):
        self.run("ps_roi_align_backward_deterministic")

    def time_ps_roi_pool_forward(self, *params):
        self.run("ps_roi_pool_forward")

    def time_ps_roi_pool_backward(self, *params):
        self.run("ps_roi_pool_backward")

    def time_ps_roi_pool_backward_deterministic(self, *params):
        self.run("ps_roi_pool_backward_deterministic")


class PsGpuTime(_PsOps):
    """Device time (CUDA events) of the two heads; skipped without a GPU."""

    param_names = ["head", "dtype"]
    params = [list(HEADS), ["float32", "float16"]]
    unit = "seconds"

    def setup(self, head, dtype):
        self.prepare("cupy", head, dtype)

    def track_ps_roi_align_forward(self, *params):
        return gpu_seconds(self.calls["ps_roi_align_forward"])

    def track_ps_roi_align_backward(self, *params):
        return gpu_seconds(self.calls["ps_roi_align_backward"])

    def track_ps_roi_align_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["ps_roi_align_backward_deterministic"])

    def track_ps_roi_pool_forward(self, *params):
        return gpu_seconds(self.calls["ps_roi_pool_forward"])

    def track_ps_roi_pool_backward(self, *params):
        return gpu_seconds(self.calls["ps_roi_pool_backward"])

    def track_ps_roi_pool_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["ps_roi_pool_backward_deterministic"])
