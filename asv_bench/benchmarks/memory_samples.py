"""One box with a huge sampling_ratio: peak memory and time (CPU backend).

Max-mode RoI Align reduces every sample of a bin, the box gradients weigh every sample's slope,
and rotated RoI Align enumerates every sample: with ``sampling_ratio=512`` one box has 12.8
million samples (7x7 bins), which max mode once listed at once (2.3 GB, 18 s on the project's
2-core VM). They are now cut into pieces of a bounded size. ``peakmem_`` is the process's peak
resident memory, the features (4 channels of 64x64) included; ``time_`` the wall time.
"""

import numpy as np

import cuproi

OPS = ["max", "max_backward", "max_box_backward", "avg_box_backward", "rotated"]


class OneBoxHugeSamplingRatio:
    """One 56x56 box, 7x7 bins of ratio x ratio samples, 4 channels; CPU only."""

    param_names = ["sampling_ratio", "op"]
    params = [[64, 256], OPS]
    timeout = 300

    def setup(self, ratio, op):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 4, 64, 64), dtype=np.float32)
        box = np.array([[0, 4.0, 4.0, 60.0, 60.0]], np.float32)
        rotated = np.array([[0, 32.0, 32.0, 56.0, 40.0, 30.0]], np.float32)
        g = rng.standard_normal((1, 4, 7, 7), dtype=np.float32)
        calls = {
            "max": lambda: cuproi.roi_align(x, box, 7, 1.0, ratio, True, pool_mode="max"),
            "max_backward": lambda: cuproi.roi_align_backward(
                g, box, x.shape, 7, 1.0, ratio, True, pool_mode="max", input=x
            ),
            "max_box_backward": lambda: cuproi.roi_align_box_backward(
                g, x, box, 7, 1.0, ratio, True, pool_mode="max"
            ),
            "avg_box_backward": lambda: cuproi.roi_align_box_backward(
                g, x, box, 7, 1.0, ratio, True
            ),
            "rotated": lambda: cuproi.roi_align_rotated(x, rotated, 7, 1.0, ratio),
        }
        self.call = calls[op]

    def peakmem_one_box(self, ratio, op):
        self.call()

    def time_one_box(self, ratio, op):
        self.call()
