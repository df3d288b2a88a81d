"""cuproi.torch.roi_align and RoIAlign (avg and max mode, gradients for the features and the
boxes): the checks of tests/torch_op_tester.py, and max mode against the oracle."""

import numpy as np
import pytest
from oracles import roi_align as align_oracle
from torch_op_tester import TorchOpTester

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402

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

    def forward_mode_refused(self, case):
        return case.get("pool_mode") == "max"

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


def _linear_problem():
    """The features, boxes and options of the average case, the call on features, a tangent."""
    tester, case = TestRoIAlign(), TestRoIAlign.cases["avg"]
    t = tester.inputs(case)
    u = torch.randn(
        t["input"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.double
    )
    return (
        t["input"],
        t["boxes"],
        tester.options(case),
        lambda x: tester.call(t | {"input": x}, case),
        u,
    )


def test_forward_mode_by_every_api():
    """forward_ad's dual tensors, torch.func.jvp and jacfwd carry the same tangent: the op of
    the features' tangent (it is linear in them); jacfwd of a sum is its gradient."""
    x, _, _, f, u = _linear_problem()
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(f(fwAD.make_dual(x, u))).tangent
    _, jvp = torch.func.jvp(f, (x,), (u,))
    torch.testing.assert_close(dual, f(u), rtol=0, atol=0)
    torch.testing.assert_close(jvp, f(u), rtol=0, atol=0)
    leaf = x.clone().requires_grad_()
    f(leaf).sum().backward()
    torch.testing.assert_close(torch.func.jacfwd(lambda v: f(v).sum())(x), leaf.grad)


def test_forward_over_reverse_gives_hessian_vector_products():
    """The tangent of a gradient: ``|roi_align(x)|^2 / 2`` has the Hessian ``A^T A``, so its
    product with ``u`` is the array API's backward of its forward of ``u`` (the backward op
    carries its gradient's tangent: torch would drop it)."""
    x, boxes, options, f, u = _linear_problem()
    leaf = x.clone().requires_grad_()
    with fwAD.dual_level():
        out = f(fwAD.make_dual(leaf, u))
        (grad,) = torch.autograd.grad((out**2).sum() / 2, leaf, create_graph=True)
        product = fwAD.unpack_dual(grad).tangent
    b = boxes.numpy()
    forward = cuproi.roi_align(u.numpy(), b, **options)
    expected = cuproi.roi_align_backward(forward, b, x.shape, **options)
    np.testing.assert_allclose(product.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_nested_forward_mode_is_refused():
    """An inner torch.func.jvp cannot see the outer one's tangents: an error, not a zero."""
    x, _, _, f, _ = _linear_problem()
    with pytest.raises(NotImplementedError, match="nested forward-mode derivatives"):
        torch.func.jacfwd(torch.func.jacfwd(lambda v: (f(v) ** 2).sum()))(x[:1, :1])
