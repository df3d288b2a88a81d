"""cuproi.torch.ps_roi_pool and PSRoIPool: the checks of tests/torch_op_tester.py."""

import pytest

torch = pytest.importorskip("torch")

from torch_op_tester import NOT_A_MULTIPLE, TorchOpTester  # noqa: E402

import cuproi.torch as ct  # noqa: E402


class TestPSRoIPool(TorchOpTester):
    function = staticmethod(ct.ps_roi_pool)
    modules = (ct.PSRoIPool,)
    channels, gradcheck_channels = 24, 12  # two output channels of 3 x 4 bins; one
    cases = {"default": {}}
    invalid = [*TorchOpTester.invalid, NOT_A_MULTIPLE]
