"""Multi-level (FPN) RoI Align, forward and backward, all levels in one call.

The reference workload of reference/performance.md section 1: two 800x1216 images, 256
channels, the P2-P5 levels (strides 4 to 32), 512 boxes per image of 16 to 600 pixels (so every
level gets boxes), 7x7 outputs (box head) and 14x14 (mask head); and a few boxes at 14x14, the
mask head at inference.
"""

import numpy as np

import cuproi

from .common import Benchmark

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE = (800, 1216)


def pyramid(xp, channels=256, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(2, channels, int(IMAGE[0] * s), int(IMAGE[1] * s)) for s in SCALES]
    return [xp.asarray(rng.standard_normal(s, dtype=np.float32).astype(dtype)) for s in shapes]


def fpn_boxes(num_boxes, seed=0):
    """Boxes with log-uniform sides of 16 to 600 pixels, centres uniform over the image."""
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(16), np.log(600), (num_boxes, 2)))
    centre = rng.uniform(0, [IMAGE[1], IMAGE[0]], (num_boxes, 2))
    corner = centre - side / 2
    boxes = np.column_stack([rng.integers(0, 2, num_boxes), corner, corner + side])
    return boxes.astype(np.float32)


class MultiScaleRoIAlign(Benchmark):
    """1024 boxes (512 per image) over P2-P5."""

    param_names = [*Benchmark.param_names, "output_size"]
    params = [*Benchmark.params, [7, 14]]
    num_boxes = 1024

    def setup(self, backend, output_size):
        self.setup_backend(backend)
        xp = self.xp
        self.features = pyramid(xp)
        self.boxes = xp.asarray(fpn_boxes(self.num_boxes))
        self.shapes = [f.shape for f in self.features]
        rng = np.random.default_rng(1)
        grad = rng.standard_normal((self.num_boxes, 256, output_size, output_size))
        self.grad = xp.asarray(grad.astype(np.float32))
        self.kw = {"output_size": output_size, "spatial_scales": SCALES, "sampling_ratio": 2}
        self.time_forward(backend, output_size)
        self.time_backward(backend, output_size)

    def time_forward(self, *params):
        cuproi.multi_scale_roi_align(self.features, self.boxes, **self.kw)
        self.sync()

    def time_backward(self, *params):
        cuproi.multi_scale_roi_align_backward(self.grad, self.boxes, self.shapes, **self.kw)
        self.sync()

    def time_backward_deterministic(self, *params):
        cuproi.multi_scale_roi_align_backward(
            self.grad, self.boxes, self.shapes, deterministic=True, **self.kw
        )
        self.sync()


class Inference(Benchmark):
    """A few detections over P2-P5 at 14x14 (the mask head at inference), forward only.

    Few boxes on large maps: what the boxes read, not the size of the maps, should set the
    time (``time_roi_align_p2`` pools every box from P2 alone).
    """

    param_names = [*Benchmark.param_names, "num_boxes"]
    params = [*Benchmark.params, [16, 100]]

    def setup(self, backend, num_boxes):
        self.setup_backend(backend)
        self.features = pyramid(self.xp)
        self.boxes = self.xp.asarray(fpn_boxes(num_boxes))
        self.time_forward(backend, num_boxes)
        self.time_roi_align_p2(backend, num_boxes)

    def time_forward(self, *params):
        cuproi.multi_scale_roi_align(self.features, self.boxes, 14, SCALES, 2)
        self.sync()

    def time_roi_align_p2(self, *params):
        cuproi.roi_align(self.features[0], self.boxes, 14, 1 / 4, 2, True)
        self.sync()
