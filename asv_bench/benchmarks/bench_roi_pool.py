"""RoI Pool: forward (with and without the argmax, channels last), backward.

The box head (512 boxes, 7x7), the mask head (256 boxes, 14x14) and a sweep over the number
and the size of the boxes, on one FPN level (100x152, stride 8) of two 800x1216 images, 256
channels (``cuproi._workloads``). ``GpuTime`` reports device time from CUDA events (skipped
without a GPU).
"""

from . import common

OP = "roi_pool"
CALLS = (
    "forward",
    "forward_argmax",
    "forward_argmax_channels_last",
    "backward",
    "backward_deterministic",
)


class BoxHead(common.BoxHead):
    op, timed = OP, CALLS


class MaskHead(BoxHead):
    """The mask head: 256 boxes, 14x14 outputs."""

    head = "mask head"


class Sweep(common.Sweep):
    op, timed = OP, CALLS


class GpuTime(common.HeadsDeviceTime):
    op, timed = OP, CALLS
