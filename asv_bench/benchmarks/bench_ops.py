"""Forward and backward of the three ops (the performance work extends this suite)."""

import cuproi

from .common import Benchmark, workload


class RoIOps(Benchmark):
    param_names = [*Benchmark.param_names, "num_boxes"]
    params = [*Benchmark.params, [64, 512]]

    def setup(self, backend, num_boxes):
        self.setup_backend(backend)
        x, boxes = workload(num_boxes, channels=64)
        self.x, self.boxes = self.xp.asarray(x), self.xp.asarray(boxes)
        self.kw = {"output_size": 7, "spatial_scale": 1 / 8, "sampling_ratio": 2}
        self.out = cuproi.roi_align(self.x, self.boxes, aligned=True, **self.kw)  # compiles
        self.pooled, self.argmax = cuproi.roi_pool(self.x, self.boxes, 7, 1 / 8, return_argmax=True)
        self.offset = self.xp.zeros((num_boxes, 2, 7, 7), self.x.dtype)
        cuproi.deform_roi_pool(self.x, self.boxes, self.offset, **self.kw)
        cuproi.roi_pool_backward(self.pooled, self.boxes, self.argmax, self.x.shape)
        cuproi.roi_align_backward(self.out, self.boxes, self.x.shape, aligned=True, **self.kw)
        cuproi.deform_roi_pool_backward(self.out, self.x, self.boxes, self.offset, **self.kw)
        self.sync()

    def time_roi_align_forward(self, backend, num_boxes):
        cuproi.roi_align(self.x, self.boxes, aligned=True, **self.kw)
        self.sync()

    def time_roi_align_backward(self, backend, num_boxes):
        cuproi.roi_align_backward(self.out, self.boxes, self.x.shape, aligned=True, **self.kw)
        self.sync()

    def time_roi_pool_forward(self, backend, num_boxes):
        cuproi.roi_pool(self.x, self.boxes, 7, 1 / 8)
        self.sync()

    def time_roi_pool_backward(self, backend, num_boxes):
        cuproi.roi_pool_backward(self.pooled, self.boxes, self.argmax, self.x.shape)
        self.sync()

    def time_deform_roi_pool_forward(self, backend, num_boxes):
        cuproi.deform_roi_pool(self.x, self.boxes, self.offset, **self.kw)
        self.sync()

    def time_deform_roi_pool_backward(self, backend, num_boxes):
        cuproi.deform_roi_pool_backward(self.out, self.x, self.boxes, self.offset, **self.kw)
        self.sync()
