"""RoI Pool: forward (with and without the argmax, channels last), backward.

The box head (512 boxes, 7x7), the mask head (256 boxes, 14x14) and a sweep over the number
and the size of the boxes, on one FPN level (100x152, stride 8) of two 800x1216 images, 256
channels (``cuproi._workloads``), and a few detections (``FewBoxes``, issue 27). ``GpuTime``
reports device time from CUDA events (skipped without a GPU).
"""

from cuproi import _workloads

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
    op, timed = OP, common.SWEPT


class FewBoxes(common.Benchmark):
    """A few detections: 16 boxes, 7x7, 256 channels; the training forward and the backward."""

    op, timed = OP, ("forward_argmax", "backward")

    def setup(self, backend):
        self.prepare(backend, **_workloads.FEW_BOXES)


class GpuTime(common.HeadsDeviceTime):
    op, timed = OP, CALLS
