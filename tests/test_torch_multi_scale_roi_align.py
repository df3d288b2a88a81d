"""cuproi.torch.multi_scale_roi_align and MultiScaleRoIAlign: the checks of
tests/torch_op_tester.py (gradients to every level), the oracle, and torchvision's interface."""

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import multi_scale_roi_align as multi_scale_oracle  # noqa: E402
from torch_op_tester import NOT_A_TENSOR, TorchOpTester  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402

LEVELS = ("p2", "p3", "p4")
SCALES = [1 / 4, 1 / 8, 1 / 16]
# The level steps at sides of 14 (P2 -> P3) and 28 (P3 -> P4) pixels (canonical_scale 28: the
# pyramid is small, gradcheck perturbs every element). Image by image, as a list gives them.
BOXES = [
    [0, 2.0, 3.0, 10.0, 12.0],  # ~8.5 px: P2
    [0, 0.0, 0.0, 40.0, 60.0],  # ~49 px: P4
    [0, 5.0, 6.0, 19.0, 20.0],  # exactly on the P2/P3 step: P3
    [1, 4.0, 4.0, 24.0, 26.0],  # ~21 px: P3
    [1, 5.0, 5.0, 5.0, 5.0],  # a point: P2
]
IMAGE_SHAPES = [(62, 47), (64, 40)]  # at most (64, 47): heights 16/64 = 1/4, ...
HELD_ARRAY = NOT_A_TENSOR + "list holding a nd"  # a level's message


class TestMultiScaleRoIAlign(TorchOpTester):
    function = staticmethod(ct.multi_scale_roi_align)
    modules = (ct.MultiScaleRoIAlign,)
    # In the order of the module's repr: a small pyramid, so a small canonical box.
    defaults = {"output_size": (2, 3), "spatial_scales": SCALES, "sampling_ratio": 2}
    defaults |= {"canonical_scale": 28.0, "canonical_level": 4, "aligned": True}
    cases = {"aligned": {}, "adaptive": {"sampling_ratio": -1, "aligned": False}}
    features = LEVELS
    gradcheck_part = (2, 1)  # one channel
    invalid = [
        *TorchOpTester.invalid,
        ("a level an array", lambda t: {"p3": t["p3"].numpy()}, TypeError, HELD_ARRAY),
    ]
    refused = [
        *TorchOpTester.refused,
        ("levels of two dtypes", lambda t: {"p3": t["p3"].double()}),
        ("levels of two widths", lambda t: {"p3": t["p3"][:, :1]}),
        ("scales that do not halve", lambda t: {"spatial_scales": [1 / 4, 1 / 4, 1 / 16]}),
    ]

    def tensors(self, case, g):
        shapes = {n: (2, 2, 16 // 2**i, 12 // 2**i) for i, n in enumerate(LEVELS)}
        levels = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
        return levels | {"boxes": torch.tensor(BOXES, dtype=torch.float64)}

    def call(self, t, case):
        return self.function([t[n] for n in LEVELS], t["boxes"], **self.options(case))

    def expected(self, t, g, case):
        levels, boxes, options = [t[n] for n in LEVELS], t["boxes"], self.options(case)
        shapes = [x.shape for x in levels]
        grads = cuproi.multi_scale_roi_align_backward(g, boxes, shapes, **options)
        out = cuproi.multi_scale_roi_align(levels, boxes, **options)
        return out, dict(zip(LEVELS, grads, strict=True))

    def module_kwargs(self, module, case):
        options = self.options(case)
        del options["spatial_scales"]  # the module infers them
        return {"featmap_names": list(LEVELS)} | options

    def module_call(self, module, t):
        x = OrderedDict([("p2", t["p2"]), ("skip", t["p2"]), ("p3", t["p3"]), ("p4", t["p4"])])
        per_image = t["boxes"][:, 1:].split([3, 2])  # BOXES' images
        return module(x, per_image, IMAGE_SHAPES)


def test_values_and_gradients_equal_the_oracle():
    tester, case = TestMultiScaleRoIAlign(), TestMultiScaleRoIAlign.cases["adaptive"]
    t, options = tester.inputs(case, grad=True), tester.options(case)
    out = tester.call(t, case)
    g = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, [t[n] for n in LEVELS], g)
    xs, b = [t[n].detach().numpy() for n in LEVELS], t["boxes"].numpy()
    want = multi_scale_oracle.multi_scale_roi_align(xs, b, **options)
    np.testing.assert_allclose(out.detach().numpy(), want, atol=1e-12)
    shapes = [x.shape for x in xs]
    want = multi_scale_oracle.multi_scale_roi_align_backward(g.numpy(), b, shapes, **options)
    for grad, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(grad.numpy(), w, rtol=1e-12, atol=1e-12)
        assert grad.abs().sum() > 0  # every level is pooled from


def test_the_module_infers_the_scales_like_torchvision():
    tester = TestMultiScaleRoIAlign()
    t, case = tester.first()
    module = tester.module(ct.MultiScaleRoIAlign, case)
    assert module.scales is None
    tester.module_call(module, t)
    assert module.scales == SCALES


def test_module_errors():
    t = TestMultiScaleRoIAlign().inputs({})
    m = ct.MultiScaleRoIAlign(["p9"], 3, 2)
    with pytest.raises(ValueError, match="none of the feature maps"):
        m({"p2": t["p2"]}, [t["boxes"][:, 1:]], [(64, 48)])
    with pytest.raises(ValueError, match="image_shapes"):
        ct.MultiScaleRoIAlign(["p2"], 3, 2)({"p2": t["p2"]}, [t["boxes"][:, 1:]], [])


def test_the_module_refuses_inferred_scales_that_do_not_halve():
    """Maps of P2 and P4 (torchvision would pool P3's boxes from P4's map): the error names the
    maps' heights, the image height and the scales inferred from them, eager and scripted."""
    t = TestMultiScaleRoIAlign().inputs({})
    module = ct.MultiScaleRoIAlign(["p2", "p4"], 3, 2)
    x, boxes = {"p2": t["p2"], "p4": t["p4"]}, [t["boxes"][:, 1:]]
    message = (
        r"the scales inferred from the maps' heights \[16, 4\] and the largest image height "
        r"64 .* are \[0\.25, 0\.0625\], which do not halve from each level to the next"
    )
    with pytest.raises(ValueError, match=message):
        module(x, boxes, [(64, 48)])
    with pytest.raises(torch.jit.Error, match=message):
        torch.jit.script(module)(x, boxes, [(64, 48)])


def test_the_features_must_be_a_list():
    with pytest.raises(
        TypeError,
        match=r"^features must be a list with one entry per pyramid level; "
        r"got an array of shape \(2, 8, 8, 8\)",
    ):
        ct.multi_scale_roi_align(torch.zeros(2, 8, 8, 8), torch.zeros(1, 5), 2, [1.0])
