"""The op-family extensions: max-mode RoI Align, modulated Deformable RoI Pooling and the box
gradients, forward and backward, on the box-head workload of bench_ops.py (512 boxes, 7x7,
256 channels, one FPN level at stride 8)."""

import numpy as np

import cuproi

from .common import Benchmark, workload


class Family(Benchmark):
    """Arrays and timed calls; setup runs every call once (compiles the kernels)."""

    num_boxes, size, channels = 512, 7, 256

    def setup(self, backend):
        self.setup_backend(backend)
        xp = self.xp
        rng = np.random.default_rng(1)
        n, c, s = self.num_boxes, self.channels, self.size
        x, boxes = workload(n, c)
        x, boxes = xp.asarray(x.astype(np.float32)), xp.asarray(boxes)
        grad = xp.asarray(rng.standard_normal((n, c, s, s)).astype(np.float32))
        offset = xp.asarray(rng.normal(0, 0.1, (n, 2, s, s)).astype(np.float32))
        mask = xp.asarray(rng.uniform(0, 1, (n, 1, s, s)).astype(np.float32))
        kw = {"output_size": s, "spatial_scale": 1 / 8, "sampling_ratio": 2}
        self.calls = {
            "roi_align_max_forward": lambda: cuproi.roi_align(
                x, boxes, aligned=True, pool_mode="max", **kw
            ),
            "roi_align_max_backward": lambda: cuproi.roi_align_backward(
                grad, boxes, x.shape, aligned=True, pool_mode="max", input=x, **kw
            ),
            "roi_align_box_backward": lambda: cuproi.roi_align_box_backward(
                grad, x, boxes, aligned=True, **kw
            ),
            "roi_align_box_backward_deterministic": lambda: cuproi.roi_align_box_backward(
                grad, x, boxes, aligned=True, deterministic=True, **kw
            ),
            "modulated_forward": lambda: cuproi.deform_roi_pool(x, boxes, offset, mask=mask, **kw),
            "modulated_backward": lambda: cuproi.deform_roi_pool_backward(
                grad, x, boxes, offset, mask=mask, **kw
            ),
            "deform_box_backward": lambda: cuproi.deform_roi_pool_box_backward(
                grad, x, boxes, offset, mask=mask, **kw
            ),
        }
        for call in self.calls.values():
            call()
        self.sync()

    def run(self, name):
        self.calls[name]()
        self.sync()

    def time_roi_align_max_forward(self, backend):
        self.run("roi_align_max_forward")

    def time_roi_align_max_backward(self, backend):
        self.run("roi_align_max_backward")

    def time_roi_align_box_backward(self, backend):
        self.run("roi_align_box_backward")

    def time_roi_align_box_backward_deterministic(self, backend):
        self.run("roi_align_box_backward_deterministic")

    def time_modulated_forward(self, backend):
        self.run("modulated_forward")

    def time_modulated_backward(self, backend):
        self.run("modulated_backward")

    def time_deform_box_backward(self, backend):
        self.run("deform_box_backward")
