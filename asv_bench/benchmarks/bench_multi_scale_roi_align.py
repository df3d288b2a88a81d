"""Multi-level (FPN) RoI Align, forward and backward, all levels in one call.

The reference workload of reference/performance.md section 1: two 800x1216 images, 256
channels, the P2-P5 levels (strides 4 to 32), 512 boxes per image of 16 to 600 pixels (so every
level gets boxes), 7x7 outputs (box head) and 14x14 (mask head); and a few boxes at 14x14, the
mask head at inference (``cuproi._workloads``).
"""

from cuproi import _workloads

from . import common


class Training(common.Benchmark):
    """1024 boxes (512 per image) over P2-P5."""

    param_names = [*common.Benchmark.param_names, "output_size"]
    params = [*common.Benchmark.params, [7, 14]]
    op = "multi_scale_roi_align"
    timed = ("forward", "backward", "backward_deterministic")

    def setup(self, backend, output_size):
        self.prepare(backend, num_boxes=1024, output_size=output_size, **_workloads.PYRAMID)


class Inference(common.Benchmark):
    """A few detections over P2-P5 at 14x14 (the mask head at inference), forward only.

    Few boxes on large maps: what the boxes read, not the size of the maps, should set the
    time (``time_roi_align_finest`` pools every box from P2 alone).
    """

    param_names = [*common.Benchmark.param_names, "num_boxes"]
    params = [*common.Benchmark.params, [16, 100]]
    op = "multi_scale_roi_align"
    timed = ("forward", "roi_align_finest")

    def setup(self, backend, num_boxes):
        self.prepare(backend, num_boxes=num_boxes, output_size=14, **_workloads.PYRAMID)
