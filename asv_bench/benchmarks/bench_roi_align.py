"""RoI Align: forward, backward (atomic, deterministic, channels last), max mode, box gradient.

The box head (512 boxes, 7x7), the mask head (256 boxes, 14x14) and a sweep over the number
and the size of the boxes, on one FPN level (100x152, stride 8) of two 800x1216 images, 256
channels, sampling_ratio 2, aligned (``cuproi._workloads``). ``GpuTime`` reports device time
from CUDA events (skipped without a GPU). Issue 27's corners: a few boxes (``FewBoxes``), max
mode (``MaxModeAndBoxGradient``, and ``MaxModeAdaptive`` with mmcv's adaptive sampling) and
the floor of the box head's forward (``Floor``).
"""

from cuproi import _timing, _workloads

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
    op, timed = OP, common.SWEPT


class MaxModeAndBoxGradient(common.Benchmark):
    """``pool_mode="max"`` and the gradient of the boxes, on the box head in float32."""

    op = OP
    timed = ("max_forward", "max_backward", "box_backward", "box_backward_deterministic")

    def setup(self, backend):
        self.prepare(backend, **_workloads.HEADS["box head"])


class MaxModeAdaptive(common.Benchmark):
    """mmcv's RoIAlign with ``pool_mode="max"`` and its default ``sampling_ratio=0`` (adaptive:
    bins of different sizes, so different numbers of samples), on the box head in float32."""

    op, timed = OP, ("max_forward", "max_backward")

    def setup(self, backend):
        self.prepare(backend, sampling_ratio=0, **_workloads.HEADS["box head"])


class FewBoxes(common.Benchmark):
    """A few detections at inference: 16 boxes, 7x7, 256 channels, forward, on the stride-8
    level (100x152) and on P2 (200x304)."""

    param_names = [*common.Benchmark.param_names, "level"]
    params = [*common.Benchmark.params, ["stride 8", "P2"]]
    op, timed = OP, ("forward",)
    LEVELS = {"stride 8": _workloads.FEW_BOXES, "P2": _workloads.FEW_BOXES_P2}

    def setup(self, backend, level):
        self.prepare(backend, **self.LEVELS[level])


class Floor:
    """A floor of the box head's forward, in seconds: the bytes it must move (its output, and
    every feature element its samples touch, once) at one thread's ``np.copyto`` bandwidth.

    To set beside ``BoxHead.time_forward`` (numpy, float32); issue 27 asks for at most 10 times.
    """

    unit = "seconds"

    def setup(self):
        p = _workloads.problem(OP, **_workloads.HEADS["box head"])
        self.bytes = _workloads.footprint_bytes(p.x, p.boxes, p.output_size[0], p.spatial_scale)

    def track_forward_floor(self):
        return self.bytes / _timing.copy_bandwidth()


class GpuTime(common.HeadsDeviceTime):
    op, timed = OP, CALLS
