"""cuproi.torch.ps_roi_align and PSRoIAlign: the checks of tests/torch_op_tester.py."""

import pytest

torch = pytest.importorskip("torch")

from torch_op_tester import NOT_A_MULTIPLE, TorchOpTester  # noqa: E402

import cuproi.torch as ct  # noqa: E402


class TestPSRoIAlign(TorchOpTester):
    function = staticmethod(ct.ps_roi_align)
    modules = (ct.PSRoIAlign,)
    channels, gradcheck_channels = 24, 12  # two output channels of 3 x 4 bins; one
    cases = {"sampling_ratio=2": {"sampling_ratio": 2}, "adaptive": {"sampling_ratio": -1}}
    invalid = [*TorchOpTester.invalid, NOT_A_MULTIPLE]
