"""The P2-P5 pyramid of the multi-scale tests: two 512x640 images, and boxes of every level.

Shared by test_multi_scale_roi_align.py, test_blocks.py and test_gpu.py (a test file imports
no other test file).
"""

import numpy as np

from cuproi import _pyramid

# Strides 4 to 32.
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
IMAGE = (512, 640)
N, C = 2, 2
SHAPES = [(N, C, int(IMAGE[0] * s), int(IMAGE[1] * s)) for s in SCALES]
SIZE = (3, 4)
# Sides (pixels) at which torchvision's LevelMapper steps from one level to the next with the
# default canonical_scale=224, canonical_level=4 and k_min = 2: 112 (P2 -> P3), 224, 448.
STEPS = [112.0, 224.0, 448.0]


def pyramid(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def boxes_zoo():
    """Boxes of every level, on and around the level steps, degenerate and outside ones."""
    rows = [
        [0, 10.0, 20.0, 30.0, 45.0],  # small: P2
        [1, 100.0, 50.0, 180.0, 170.0],  # ~98 px: P2
        [0, 40.0, 60.0, 240.0, 200.0],  # ~167 px: P3
        [1, 0.0, 0.0, 300.0, 260.0],  # ~279 px: P4
        [0, 30.0, 10.0, 530.0, 500.0],  # ~495 px: P5
        [1, -100.0, -50.0, 900.0, 700.0],  # huge, beyond the image: P5 (clamped)
        [0, 5.0, 5.0, 5.0, 5.0],  # a point: area 0 -> P2
        [1, 50.0, 60.0, 250.0, 60.0],  # zero height -> P2
        [0, 300.0, 280.0, 100.0, 60.0],  # flipped on both axes: area > 0 -> by its size (P3)
        [1, 300.0, 20.0, 100.0, 260.0],  # flipped on one axis: area < 0 -> P2
        [0, 600.0, 480.0, 700.0, 560.0],  # partly outside the image
    ]
    for step in STEPS:  # w = step, h = step * f: area = step**2 * f around the step
        for f in (1.0, 1 - 1e-6, 1 - 2e-6, 1 + 1e-6, 1 - 1e-9, 0.999, 1.001):
            rows.append([len(rows) % 2, 20.0, 30.0, 20.0 + step, 30.0 + step * f])
    return np.array(rows)


def thresholds(dtype, canonical_scale=224, canonical_level=4, scales=SCALES):
    canonical = (canonical_scale, canonical_level)
    return _pyramid.level_rule(scales, len(scales), np.dtype(dtype), *canonical)[1]
