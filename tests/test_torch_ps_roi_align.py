"""cuproi.torch.ps_roi_align and PSRoIAlign: the checks of tests/torch_op_tester.py."""

from torch_op_tester import PositionSensitiveTester

import cuproi.torch as ct


class TestPSRoIAlign(PositionSensitiveTester):
    function = staticmethod(ct.ps_roi_align)
    modules = (ct.PSRoIAlign,)
    cases = {"sampling_ratio=2": {"sampling_ratio": 2}, "adaptive": {"sampling_ratio": -1}}
