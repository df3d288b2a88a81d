"""RoI Align: forward, backward (atomic, deterministic, channels last), max mode, box gradient.

The box head (512 boxes, 7x7), the mask head (256 boxes, 14x14) and a sweep over the number
and the size of the boxes, on one FPN level (100x152, stride 8) of two 800x1216 images, 256
channels, sampling_ratio 2, aligned (``cuproi._workloads``). ``GpuTime`` reports device time
from CUDA events (skipped without a GPU).
"""

from cuproi import _workloads

from . import common

OP = "roi_align"
CALLS = (
    "forward",
    "backward",
    "backward_deterministic",
    "forward_channels_last",
    "backward_channels_last",
)


class BoxHead(common.BoxHead):
    op, timed = OP, CALLS


class MaskHead(BoxHead):
    """The mask head: 256 boxes, 14x14 outputs."""

    head = "mask head"


class Sweep(common.Sweep):
    op, timed = OP, CALLS


class MaxModeAndBoxGradient(common.Benchmark):
    """``pool_mode="max"`` and the gradient of the boxes, on the box head in float32."""

    op = OP
    timed = ("max_forward", "max_backward", "box_backward", "box_backward_deterministic")

    def setup(self, backend):
        self.prepare(backend, **_workloads.HEADS["box head"])


class GpuTime(common.HeadsDeviceTime):
    op, timed = OP, CALLS
