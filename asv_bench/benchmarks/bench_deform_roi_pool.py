"""Deformable RoI Pooling: forward and backward, and the modulated form with its box gradient.

The box head (512 boxes, 7x7), the mask head (256 boxes, 14x14) and a sweep over the number
and the size of the boxes, on one FPN level (100x152, stride 8) of two 800x1216 images, 256
channels, sampling_ratio 2, offsets of standard deviation 0.1 (``cuproi._workloads``).
``GpuTime`` reports device time from CUDA events (skipped without a GPU).
"""

from cuproi import _workloads

from . import common

OP = "deform_roi_pool"
CALLS = ("forward", "backward", "backward_deterministic")


class BoxHead(common.BoxHead):
    op, timed = OP, CALLS


class MaskHead(BoxHead):
    """The mask head: 256 boxes, 14x14 outputs."""

    head = "mask head"


class Sweep(common.Sweep):
    op, timed = OP, common.SWEPT


class Modulated(common.Benchmark):
    """With a mask (DCNv2's modulated form), and its box gradient, on the box head in float32."""

    op = OP
    timed = ("modulated_forward", "modulated_backward", "modulated_box_backward")

    def setup(self, backend):
        self.prepare(backend, **_workloads.HEADS["box head"])


class GpuTime(common.HeadsDeviceTime):
    op, timed = OP, CALLS
