"""cuproi.torch.prroi_pool and PrRoIPool (gradients for the features and the box coordinates):
the checks of tests/torch_op_tester.py."""

from torch_op_tester import TorchOpTester

import cuproi.torch as ct


class TestPrRoIPool(TorchOpTester):
    function = staticmethod(ct.prroi_pool)
    modules = (ct.PrRoIPool,)
    # The features are saved for the backward only when the boxes' gradient reads them.
    cases = {"input": {}, "boxes": {"wrt": ("input", "boxes")}}
    refused = [*TorchOpTester.refused, ("scale below float32", lambda t: {"spatial_scale": 1e-300})]
