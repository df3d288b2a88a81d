"""cuproi.torch.prroi_pool and PrRoIPool (gradients for the features and the box coordinates):
the checks of tests/torch_op_tester.py."""

import pytest

torch = pytest.importorskip("torch")

from torch_op_tester import TorchOpTester  # noqa: E402

import cuproi.torch as ct  # noqa: E402


class TestPrRoIPool(TorchOpTester):
    function = staticmethod(ct.prroi_pool)
    modules = (ct.PrRoIPool,)
    # The features are saved for the backward only when the boxes' gradient reads them.
    cases = {"input": {}, "boxes": {"wrt": ("input", "boxes")}}
