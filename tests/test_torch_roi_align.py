"""cuproi.torch.roi_align and RoIAlign (avg and max mode, gradients for the features and the
boxes): the checks of tests/torch_op_tester.py, and max mode against the oracle."""

import numpy as np
from oracles import roi_align as align_oracle
from torch_op_tester import TorchOpTester

import cuproi
import cuproi.torch as ct

BOTH = ("input", "boxes")


class TestRoIAlign(TorchOpTester):
    function = staticmethod(ct.roi_align)
    modules = (ct.RoIAlign,)
    cases = {
        "avg": {"sampling_ratio": 2, "aligned": True},
        "adaptive": {"sampling_ratio": -1, "aligned": False},
        "max": {"sampling_ratio": 2, "aligned": True, "pool_mode": "max"},
        "avg, boxes": {"sampling_ratio": 2, "aligned": False, "wrt": BOTH},
        "aligned, boxes": {"sampling_ratio": 2, "aligned": True, "wrt": BOTH},
        "adaptive, boxes": {"sampling_ratio": -1, "aligned": True, "wrt": BOTH},
        "max, boxes": {"sampling_ratio": 2, "aligned": True, "pool_mode": "max", "wrt": BOTH},
    }
    channels_last_gradient = True
    refused = [
        *TorchOpTester.refused,
        ("max mode, 3-D input", lambda t: {"input": t["input"][0], "pool_mode": "max"}),
        ("unknown pool_mode", lambda t: {"pool_mode": "mean"}),
        (
            "boxes with a gradient",
            lambda t: {"input": t["input"].long(), "boxes": t["boxes"].requires_grad_()},
        ),
        ("scale below float32", lambda t: {"spatial_scale": 1e-300}),
    ]

    def expected(self, t, g, case):
        x, boxes, options = t["input"], t["boxes"], self.options(case)
        mode = {"pool_mode": options.pop("pool_mode", "avg")}
        grad = cuproi.roi_align_backward(g, boxes, x.shape, **options, **mode, input=x)
        return cuproi.roi_align(x, boxes, **options, **mode), {
            "input": grad,
            "boxes": cuproi.roi_align_box_backward(g, x, boxes, **options, **mode),
        }


def test_max_mode_equals_the_oracle():
    tester, case = TestRoIAlign(), TestRoIAlign.cases["max"]
    t = tester.inputs(case)
    want = align_oracle.roi_align_max(t["input"].numpy(), t["boxes"].numpy(), (3, 4), 0.7, 2, True)
    np.testing.assert_allclose(tester.call(t, case).numpy(), want, rtol=1e-12)
