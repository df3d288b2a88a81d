"""cuproi.torch.ps_roi_pool and PSRoIPool: the checks of tests/torch_op_tester.py."""

from torch_op_tester import PositionSensitiveTester

import cuproi.torch as ct


class TestPSRoIPool(PositionSensitiveTester):
    function = staticmethod(ct.ps_roi_pool)
    modules = (ct.PSRoIPool,)
    cases = {"default": {}}
