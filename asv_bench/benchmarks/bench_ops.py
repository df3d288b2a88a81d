"""RoI Align, RoI Pool and Deformable RoI Pool, forward and backward.

Sizes from reference/performance.md section 1: one FPN level (100x152, stride 8) of two 800x1216
images, 256 channels; the box head (512 boxes, 7x7), the mask head (256 boxes, 14x14), and a
sweep over the number and the size of the boxes. ``GpuTime`` reports device time from CUDA
events (skipped without a GPU).
"""

import numpy as np

import cuproi
from cuproi import _layout

from .common import BOX_SIZES, Benchmark, gpu_seconds, workload


class _Ops(Benchmark):
    """Arrays and the timed calls of one workload; setup runs every call once (compiles)."""

    def prepare(self, backend, num_boxes, size, dtype="float32", channels=256, extent=(16, 300)):
        self.setup_backend(backend)
        if backend == "numpy" and dtype == "float16":
            raise NotImplementedError("the CPU backend computes float16 in float32")
        xp = self.xp
        rng = np.random.default_rng(1)
        x, boxes = workload(num_boxes, channels, extent=extent)
        x, boxes = xp.asarray(x.astype(dtype)), xp.asarray(boxes)
        grad = xp.asarray(rng.standard_normal((num_boxes, channels, size, size)).astype(dtype))
        offset = xp.asarray(rng.normal(0, 0.1, (num_boxes, 2, size, size)).astype(dtype))
        kw = {"output_size": size, "spatial_scale": 1 / 8, "sampling_ratio": 2}
        _, argmax = cuproi.roi_pool(x, boxes, size, 1 / 8, return_argmax=True)
        stored = _layout.as_channels_last(xp, x)  # torch's channels_last memory format
        self.calls = {
            "roi_align_forward": lambda: cuproi.roi_align(x, boxes, aligned=True, **kw),
            "roi_align_backward": lambda: cuproi.roi_align_backward(
                grad, boxes, x.shape, aligned=True, **kw
            ),
            "roi_align_forward_channels_last": lambda: cuproi.roi_align(
                stored, boxes, aligned=True, **kw
            ),
            "roi_align_backward_channels_last": lambda: cuproi.roi_align_backward(
                grad, boxes, x.shape, aligned=True, channels_last=True, **kw
            ),
            "roi_align_backward_deterministic": lambda: cuproi.roi_align_backward(
                grad, boxes, x.shape, aligned=True, deterministic=True, **kw
            ),
            "roi_pool_forward": lambda: cuproi.roi_pool(x, boxes, size, 1 / 8),
            "roi_pool_forward_argmax": lambda: cuproi.roi_pool(
                x, boxes, size, 1 / 8, return_argmax=True
            ),
            "roi_pool_forward_argmax_channels_last": lambda: cuproi.roi_pool(
                stored, boxes, size, 1 / 8, return_argmax=True
            ),
            "roi_pool_backward": lambda: cuproi.roi_pool_backward(grad, boxes, argmax, x.shape),
            "roi_pool_backward_deterministic": lambda: cuproi.roi_pool_backward(
                grad, boxes, argmax, x.shape, deterministic=True
            ),
            "deform_roi_pool_forward": lambda: cuproi.deform_roi_pool(x, boxes, offset, **kw),
            "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(
                grad, x, boxes, offset, **kw
            ),
            "deform_roi_pool_backward_deterministic": lambda: cuproi.deform_roi_pool_backward(
                grad, x, boxes, offset, deterministic=True, **kw
            ),
        }
        for call in self.calls.values():
            call()
        self.sync()

    def run(self, name):
        self.calls[name]()
        self.sync()


class BoxHead(_Ops):
    """The reference workload: 512 boxes of 16 to 300 pixels, 7x7 outputs."""

    param_names = [*Benchmark.param_names, "dtype"]
    params = [*Benchmark.params, ["float32", "float16"]]
    num_boxes, size = 512, 7

    def setup(self, backend, dtype):
        self.prepare(backend, self.num_boxes, self.size, dtype)

    def time_roi_align_forward(self, *params):
        self.run("roi_align_forward")

    def time_roi_align_backward(self, *params):
        self.run("roi_align_backward")

    def time_roi_align_backward_deterministic(self, *params):
        self.run("roi_align_backward_deterministic")

    def time_roi_align_forward_channels_last(self, *params):
        self.run("roi_align_forward_channels_last")

    def time_roi_align_backward_channels_last(self, *params):
        self.run("roi_align_backward_channels_last")

    def time_roi_pool_forward(self, *params):
        self.run("roi_pool_forward")

    def time_roi_pool_forward_argmax(self, *params):
        self.run("roi_pool_forward_argmax")

    def time_roi_pool_forward_argmax_channels_last(self, *params):
        self.run("roi_pool_forward_argmax_channels_last")

    def time_roi_pool_backward(self, *params):
        self.run("roi_pool_backward")

    def time_roi_pool_backward_deterministic(self, *params):
        self.run("roi_pool_backward_deterministic")

    def time_deform_roi_pool_forward(self, *params):
        self.run("deform_roi_pool_forward")

    def time_deform_roi_pool_backward(self, *params):
        self.run("deform_roi_pool_backward")

    def time_deform_roi_pool_backward_deterministic(self, *params):
        self.run("deform_roi_pool_backward_deterministic")


class MaskHead(BoxHead):
    """The mask head: 256 boxes, 14x14 outputs."""

    num_boxes, size = 256, 14


class Sweep(BoxHead):
    """Cost growth with the number of boxes and their size (64 channels, 7x7, float32)."""

    param_names = [*Benchmark.param_names, "num_boxes", "box_size"]
    params = [*Benchmark.params, [64, 256, 1024, 4096], list(BOX_SIZES)]

    def setup(self, backend, num_boxes, box_size):
        self.prepare(backend, num_boxes, 7, channels=64, extent=BOX_SIZES[box_size])


class GpuTime(_Ops):
    """Device time (CUDA events) of the box and mask heads; skipped without a GPU."""

    param_names = ["workload", "dtype"]
    params = [["box head", "mask head"], ["float32", "float16"]]
    unit = "seconds"

    def setup(self, workload, dtype):
        num_boxes, size = {"box head": (512, 7), "mask head": (256, 14)}[workload]
        self.prepare("cupy", num_boxes, size, dtype)

    def track_roi_align_forward(self, *params):
        return gpu_seconds(self.calls["roi_align_forward"])

    def track_roi_align_backward(self, *params):
        return gpu_seconds(self.calls["roi_align_backward"])

    def track_roi_align_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["roi_align_backward_deterministic"])

    def track_roi_align_forward_channels_last(self, *params):
        return gpu_seconds(self.calls["roi_align_forward_channels_last"])

    def track_roi_align_backward_channels_last(self, *params):
        return gpu_seconds(self.calls["roi_align_backward_channels_last"])

    def track_roi_pool_forward(self, *params):
        return gpu_seconds(self.calls["roi_pool_forward"])

    def track_roi_pool_forward_argmax(self, *params):
        return gpu_seconds(self.calls["roi_pool_forward_argmax"])

    def track_roi_pool_forward_argmax_channels_last(self, *params):
        return gpu_seconds(self.calls["roi_pool_forward_argmax_channels_last"])

    def track_roi_pool_backward(self, *params):
        return gpu_seconds(self.calls["roi_pool_backward"])

    def track_roi_pool_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["roi_pool_backward_deterministic"])

    def track_deform_roi_pool_forward(self, *params):
        return gpu_seconds(self.calls["deform_roi_pool_forward"])

    def track_deform_roi_pool_backward(self, *params):
        return gpu_seconds(self.calls["deform_roi_pool_backward"])

    def track_deform_roi_pool_backward_deterministic(self, *params):
        return gpu_seconds(self.calls["deform_roi_pool_backward_deterministic"])
