"""cuproi.torch.roi_align and RoIAlign (avg and max mode, gradients for the features and the
boxes): the checks of tests/torch_op_tester.py, and max mode against the oracle."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import roi_align as align_oracle  # noqa: E402
from torch_op_tester import TorchOpTester  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402


class TestRoIAlign(TorchOpTester):
    function = staticmethod(ct.roi_align)
    modules = (ct.RoIAlign,)
    cases = {
        "avg": {"sampling_ratio": 2, "aligned": True},
        "adaptive": {"sampling_ratio": -1, "aligned": False},
        "max": {"sampling_ratio": 2, "aligned": True, "pool_mode": "max"},
        "avg, boxes": {"sampling_ratio": 2, "aligned": False, "wrt": ("input", "boxes")},
        "aligned, boxes": {"sampling_ratio": -1, "aligned": True, "wrt": ("input", "boxes")},
        "max, boxes": {
            "sampling_ratio": 2,
            "aligned": True,
            "pool_mode": "max",
            "wrt": ("input", "boxes"),
        },
    }
    channels_last_gradient = True

    def expected(self, t, g, case):
        x, boxes, options = t["input"], t["boxes"], self.options(case)
        mode = {"pool_mode": options.pop("pool_mode", "avg")}
        grad = cuproi.roi_align_backward(g, boxes, x.shape, **options, **mode, input=x)
        return cuproi.roi_align(x, boxes, **options, **mode), {
            "input": grad,
            "boxes": cuproi.roi_align_box_backward(g, x, boxes, **options, **mode),
        }


def test_max_mode_equals_the_oracle():
    t = TestRoIAlign().inputs(TestRoIAlign.cases["max"])
    x, boxes = t["input"], t["boxes"]
    np.testing.assert_allclose(
        ct.roi_align(x, boxes, (3, 4), 0.7, 2, True, "max").numpy(),
        align_oracle.roi_align_max(x.numpy(), boxes.numpy(), (3, 4), 0.7, 2, True),
        rtol=1e-12,
    )
