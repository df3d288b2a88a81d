"""cuproi.torch.roi_align_rotated and RoIAlignRotated: the checks of tests/torch_op_tester.py on
rotated boxes."""

import pytest

torch = pytest.importorskip("torch")

from roi_op_tester import box_zoo  # noqa: E402
from torch_op_tester import TorchOpTester  # noqa: E402

import cuproi.torch as ct  # noqa: E402

# The box zoo turned by angles of every quadrant, beyond a turn and back.
ANGLES = [0.0, 30.0, 90.0, -45.0, 180.0, 135.5, 10.0, 20.0, 60.0, 77.0, -270.0, 405.0]
UNALIGNED = {"spatial_scale": 0.5, "aligned": False}


class TestRoIAlignRotated(TorchOpTester):
    function = staticmethod(ct.roi_align_rotated)
    modules = (ct.RoIAlignRotated,)
    defaults = TorchOpTester.defaults | {"sampling_ratio": 0, "aligned": True, "clockwise": False}
    cases = {
        "default": {},
        "sampling_ratio=2": {"sampling_ratio": 2},
        "clockwise": {"clockwise": True},
        "unaligned": UNALIGNED,
        "unaligned, clockwise": UNALIGNED | {"sampling_ratio": 2, "clockwise": True},
    }
    invalid = [
        *TorchOpTester.invalid,
        (
            "(K, 5) boxes",
            lambda t: {"boxes": t["boxes"][:, :5]},
            ValueError,
            r"boxes must be a \(K, 6\)",
        ),
        (
            "one image",
            lambda t: {"input": t["input"][:1]},
            IndexError,
            r"boxes\[1\] has batch index 1",
        ),
    ]

    def tensors(self, case, g):
        """The box zoo as (K, 6) [batch_index, cx, cy, w, h, angle]: empty, negative, outside,
        huge boxes."""
        b = torch.tensor(box_zoo(0.7))
        centre, size = (b[:, 1:3] + b[:, 3:]) / 2, b[:, 3:] - b[:, 1:3]
        rotated = torch.cat([b[:, :1], centre, size, torch.tensor(ANGLES)[:, None].double()], 1)
        return super().tensors(case, g) | {"boxes": rotated}
