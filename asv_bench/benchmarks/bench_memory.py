"""Working memory of the CPU backend: one small box on a large map, forward and backward.

Inference on FPN's finest level, or a crop of a large image, pools a few boxes from a map
thousands of cells wide. ``track_peak_beyond_result`` reports the peak bytes an op allocates
beyond the arrays it returns (tracemalloc, to which NumPy reports its allocations), for one
12x9-cell box on a 4000x4000 single-channel map (64 MB of float32): it should follow the box,
not the map. ``time_`` gives the time of the same calls.

``TrainingStep.track_resident_growth`` is the working memory of a training step (issue 27): RoI
Align's forward and input gradient of 4096 boxes on the box head's map, the output kept for the
backward, as the growth of the peak resident set size in a fresh process, results included
(``cuproi._workloads.training_memory``): the same measure for cuproi and torchvision.
"""

import functools
import importlib
import tracemalloc

import numpy as np

import cuproi
from cuproi import _timing, _workloads

SIZE = 4000
BOX = np.array([[0, 2000, 2000, 2012, 2009]], np.float64)
ROTATED = np.array([[0, 2006, 2004, 12, 9, 30]], np.float64)


class OneBoxOnALargeMap:
    """Peak bytes beyond the result, and time, of every op on one box (NumPy backend)."""

    param_names = ["call", "dtype"]
    params = [
        [
            "roi_align",
            "roi_align_backward",
            "roi_align_max",
            "roi_align_max_backward",
            "roi_pool",
            "roi_pool_backward",
            "deform_roi_pool",
            "deform_roi_pool_backward",
            "prroi_pool",
            "prroi_pool_backward",
            "ps_roi_align",
            "ps_roi_align_backward",
            "roi_align_rotated",
            "roi_align_rotated_backward",
        ],
        ["float32", "float16"],
    ]
    timeout = 300

    def setup(self, call, dtype):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 1, SIZE, SIZE), np.float32).astype(dtype)
        g7 = np.ones((1, 1, 7, 7), dtype)
        g2 = np.ones((1, 1, 2, 2), dtype)
        offset = np.full((1, 2, 7, 7), 0.1, dtype)
        # Built by the calls that read them, at the warm-up below: made in every setup, the
        # 4-channel copy and the forward that finds the argmax took most of a quick run here.
        x4 = functools.cache(lambda: np.repeat(x, 4, axis=1))
        argmax = functools.cache(lambda: cuproi.roi_pool(x, BOX, 7, return_argmax=True)[1])
        self.call = {
            "roi_align": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True),
            "roi_align_backward": lambda: cuproi.roi_align_backward(
                g7, BOX, x.shape, 7, 1.0, 2, True
            ),
            "roi_align_max": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True, pool_mode="max"),
            "roi_align_max_backward": lambda: cuproi.roi_align_backward(
                g7, BOX, x.shape, 7, 1.0, 2, True, pool_mode="max", input=x
            ),
            "roi_pool": lambda: cuproi.roi_pool(x, BOX, 7, return_argmax=True),
            "roi_pool_backward": lambda: cuproi.roi_pool_backward(g7, BOX, argmax(), x.shape),
            "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, BOX, offset, 7),
            "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(
                g7, x, BOX, offset, 7
            ),
            "prroi_pool": lambda: cuproi.prroi_pool(x, BOX, 7),
            "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g7, BOX, x.shape, 7),
            "ps_roi_align": lambda: cuproi.ps_roi_align(x4(), BOX, 2, 1.0, 2),
            "ps_roi_align_backward": lambda: cuproi.ps_roi_align_backward(
                g2, BOX, (1, 4, SIZE, SIZE), 2
            ),
            "roi_align_rotated": lambda: cuproi.roi_align_rotated(x, ROTATED, 7, 1.0, 2),
            "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
                g7, ROTATED, x.shape, 7, 1.0, 2
            ),
        }[call]
        self.call()  # warm: thread pools, the backend's kept scratch buffer

    def time_call(self, call, dtype):
        self.call()

    def track_peak_beyond_result(self, call, dtype):
        tracemalloc.start()
        try:
            result = self.call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        arrays = result if isinstance(result, tuple) else (result,)
        return peak - sum(a.nbytes for a in arrays if a is not None)

    track_peak_beyond_result.unit = "bytes"


class TrainingStep:
    """Working memory of RoI Align forward + backward, 4096 boxes, 256 channels, 7x7 (bytes)."""

    param_names = ["library"]
    params = [["cuproi", "torchvision"]]
    unit = "bytes"
    timeout = 300
    MODULES = {"cuproi": "cuproi", "torchvision": "torchvision.ops"}
    CHANNELS, BOXES = _workloads.CHANNELS, _workloads.MANY_BOXES["num_boxes"]

    def setup(self, library):
        try:
            importlib.import_module(self.MODULES[library])
        except ImportError as error:
            raise NotImplementedError(f"{library} unavailable: {error}") from None

    def track_resident_growth(self, library):
        return _timing.resident_growth_apart(
            "cuproi._workloads:training_memory", self.MODULES[library], self.CHANNELS, self.BOXES
        )
