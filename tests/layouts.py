"""Features stored channels last, and the problem of the channels-last tests.

Shared by test_channels_last.py and test_gpu.py (a test file imports no other test file).
"""

import numpy as np
from roi_op_tester import box_zoo, rois_for


def problem(dtype, channels, seed):
    """Features, boxes and an output gradient with every kind of box: the zoo, boxes whose
    adaptive grid overflows the kernels' shared tables, and rows naming no image."""
    rng = np.random.default_rng(seed)
    n, h, w = 2, 9, 11
    x = rng.standard_normal((n, channels, h, w)).astype(dtype)
    boxes = np.concatenate(
        [
            box_zoo(0.5),
            [[0, -300.0, -200.0, 400.0, 300.0], [1, -5.0, 2.0, 900.0, 7.0]],  # huge grids
            [[2, 1.0, 1.0, 6.0, 6.0], [-1, 1.0, 1.0, 6.0, 6.0]],  # no image: zeros
        ]
    )
    g = rng.standard_normal((len(boxes), channels, 5, 3)).astype(dtype)
    return x, rois_for(boxes, dtype), g


def channels_last(x):
    """The same values stored channels last: (N, C, H, W) strides over (N, H, W, C) memory."""
    out = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert out.shape == x.shape and (x.shape[1] == 1 or not out.flags.c_contiguous)
    return out


def assert_stored_channels_last(a):
    assert a.transpose(0, 2, 3, 1).flags.c_contiguous
