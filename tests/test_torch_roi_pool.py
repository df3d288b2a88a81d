"""cuproi.torch.roi_pool and RoIPool: the checks of tests/torch_op_tester.py, and the value-only
op where no gradient is taken."""

import pytest

torch = pytest.importorskip("torch")

from torch_op_tester import DEVICES, TorchOpTester  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402


class TestRoIPool(TorchOpTester):
    function = staticmethod(ct.roi_pool)
    modules = (ct.RoIPool,)
    cases = {"default": {}}
    channels_last_gradient = False  # the gradient comes back NCHW, as torchvision's does
    refused = [
        *TorchOpTester.refused,
        (
            "input with a gradient",
            lambda t: {"input": t["input"].requires_grad_(), "boxes": t["boxes"][:, 1:]},
        ),
    ]

    def tensors(self, case, g):
        # Every cell's value distinct, so that no bin's max is tied.
        return super().tensors(case, g) | {
            "input": torch.randperm(720, generator=g).double().view(2, 3, 10, 12) / 7
        }

    def expected(self, t, g, case):
        x, boxes = t["input"], t["boxes"]
        out, argmax = cuproi.roi_pool(x, boxes, **self.options(case), return_argmax=True)
        return out, {"input": cuproi.roi_pool_backward(g, boxes, argmax, x.shape)}


@pytest.mark.parametrize("device", DEVICES)
def test_without_gradients_the_argmax_is_not_asked_for(monkeypatch, device):
    """No gradient to take (no_grad, or an input that needs none, NCHW or channels last): the
    value-only op, which gives what the differentiable one does."""
    t = TestRoIPool().inputs({}, device=device)
    x, boxes = t["input"], t["boxes"]
    expected = ct.roi_pool(x.clone().requires_grad_(), boxes, (3, 4), 0.7).detach()
    asked = []
    roi_pool = cuproi.roi_pool

    def spy(*args, **kwargs):
        asked.append(args[4] if len(args) > 4 else kwargs.get("return_argmax", False))
        return roi_pool(*args, **kwargs)

    monkeypatch.setattr(cuproi, "roi_pool", spy)
    with torch.no_grad():
        under_no_grad = ct.roi_pool(x.clone().requires_grad_(), boxes, (3, 4), 0.7)
    plain = ct.roi_pool(x, boxes, (3, 4), 0.7)
    stored = ct.roi_pool(x.contiguous(memory_format=torch.channels_last), boxes, (3, 4), 0.7)
    compiled = torch.compile(lambda x: ct.roi_pool(x, boxes, (3, 4), 0.7), fullgraph=True)(x)
    assert asked == [False] * 4
    for out in (under_no_grad, plain, stored, compiled):
        assert not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
