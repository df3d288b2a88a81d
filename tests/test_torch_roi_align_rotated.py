"""cuproi.torch.roi_align_rotated and RoIAlignRotated: the checks of tests/torch_op_tester.py on
rotated boxes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from roi_op_tester import box_zoo  # noqa: E402
from torch_op_tester import TorchOpTester  # noqa: E402

import cuproi.torch as ct  # noqa: E402

# The box zoo turned by angles of every quadrant, beyond a turn and back.
ANGLES = [0.0, 30.0, 90.0, -45.0, 180.0, 135.5, 10.0, 20.0, 60.0, 77.0, -270.0, 405.0]


def rotated_zoo():
    """(K, 6) [batch_index, cx, cy, w, h, angle]: empty, negative, outside, huge boxes."""
    b = box_zoo(0.7)
    return torch.tensor(
        np.column_stack([b[:, :1], (b[:, 1:3] + b[:, 3:]) / 2, b[:, 3:] - b[:, 1:3], ANGLES])
    )


class TestRoIAlignRotated(TorchOpTester):
    function = staticmethod(ct.roi_align_rotated)
    modules = (ct.RoIAlignRotated,)
    cases = {
        "sampling_ratio=2": {"sampling_ratio": 2, "aligned": True, "clockwise": False},
        "clockwise": {"sampling_ratio": 0, "aligned": True, "clockwise": True},
        "unaligned": {
            "spatial_scale": 0.5,
            "sampling_ratio": 0,
            "aligned": False,
            "clockwise": False,
        },
        "unaligned, clockwise": {
            "spatial_scale": 0.5,
            "sampling_ratio": 2,
            "aligned": False,
            "clockwise": True,
        },
    }
    invalid = [
        *TorchOpTester.invalid,
        (
            "axis-aligned boxes",
            lambda t: {"boxes": t["boxes"][:, :5]},
            ValueError,
            r"boxes must be a \(K, 6\)",
        ),
        ("one image", lambda t: {"input": t["input"][:1]}, IndexError, r".*batch index"),
    ]

    def tensors(self, case, g):
        return super().tensors(case, g) | {"boxes": rotated_zoo()}
