"""cuproi.torch.multi_scale_roi_align and MultiScaleRoIAlign: gradients to every level
(gradcheck, opcheck), equality with the array API and the oracle, torchvision's interface."""

from collections import OrderedDict

import numpy as np
import pytest
from oracles import multi_scale_roi_align as multi_scale_oracle

import cuproi

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

SCALES = [1 / 4, 1 / 8, 1 / 16]
# A small pyramid (gradcheck perturbs every element), so a small canonical box: the level steps
# at sides of 14 (P2 -> P3) and 28 (P3 -> P4) pixels.
CANONICAL = (28.0, 4)


def data(dtype=torch.float64, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(2, channels, 16 // 2**i, 12 // 2**i, generator=g, dtype=dtype) for i in range(3)
    ]
    boxes = torch.tensor(
        [
            [0, 2.0, 3.0, 10.0, 12.0],  # ~8.5 px: P2
            [1, 4.0, 4.0, 24.0, 26.0],  # ~21 px: P3
            [0, 0.0, 0.0, 40.0, 60.0],  # ~49 px: P4
            [1, 5.0, 5.0, 5.0, 5.0],  # a point: P2
            [0, 5.0, 6.0, 19.0, 20.0],  # exactly on the P2/P3 step: P3
        ],
        dtype=torch.float64 if dtype == torch.float64 else torch.float32,
    )
    return features, boxes


def call(features, boxes, size=(2, 3), ratio=2, aligned=True):
    return ct.multi_scale_roi_align(features, boxes, size, SCALES, ratio, aligned, *CANONICAL)


def test_gradcheck_every_level():
    features, boxes = data()
    features = [f.requires_grad_() for f in features]

    def f(*levels):
        return call(list(levels), boxes)

    assert torch.autograd.gradcheck(f, tuple(features))


def test_values_and_gradients_equal_the_array_api_and_oracle():
    features, boxes = data()
    features = [f.requires_grad_() for f in features]
    out = call(features, boxes, ratio=-1, aligned=False)
    g = torch.randn(out.shape, dtype=torch.float64)
    (out * g).sum().backward()
    xs = [f.detach().numpy() for f in features]
    b = boxes.numpy()
    np.testing.assert_array_equal(
        out.detach().numpy(),
        cuproi.multi_scale_roi_align(xs, b, (2, 3), SCALES, -1, False, *CANONICAL),
    )
    np.testing.assert_allclose(
        out.detach().numpy(),
        multi_scale_oracle.multi_scale_roi_align(xs, b, (2, 3), SCALES, -1, False, *CANONICAL),
        atol=1e-12,
    )
    want = multi_scale_oracle.multi_scale_roi_align_backward(
        g.numpy(), b, [x.shape for x in xs], (2, 3), SCALES, -1, False, *CANONICAL
    )
    for f, w in zip(features, want, strict=True):
        np.testing.assert_allclose(f.grad.numpy(), w, rtol=1e-12, atol=1e-12)
    assert all(f.grad.abs().sum() > 0 for f in features)


def test_opcheck():
    features, boxes = data(torch.float32)
    features = [f.requires_grad_() for f in features]
    args = (features, boxes, 2, 3, SCALES, 2, True, *CANONICAL)
    torch.library.opcheck(torch.ops.cuproi.multi_scale_roi_align.default, args)


def test_box_lists(monkeypatch):
    features, boxes = data()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(call(features, per_image), call(features, flat))


@pytest.mark.parametrize("enabled", [False, True])
def test_deterministic_algorithms_reach_the_backward(monkeypatch, enabled):
    seen = []
    original = cuproi.multi_scale_roi_align_backward

    def spy(*args, **kwargs):
        seen.append(kwargs["deterministic"])
        return original(*args, **kwargs)

    monkeypatch.setattr(cuproi, "multi_scale_roi_align_backward", spy)
    features, boxes = data()
    features = [f.requires_grad_() for f in features]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        call(features, boxes).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [enabled]


def test_module_infers_scales_like_torchvision():
    features, boxes = data(torch.float32)
    x = OrderedDict([("p2", features[0]), ("skip", features[0]), ("p3", features[1])])
    x["p4"] = features[2]
    m = ct.MultiScaleRoIAlign(["p2", "p3", "p4"], 3, 2, canonical_scale=28.0)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    image_shapes = [(62, 47), (64, 40)]  # max (64, 47): heights 16/64 = 1/4, ...
    out = m(x, per_image, image_shapes)
    assert m.scales == SCALES
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(out, call(features, flat, 3, 2, False))
    assert "canonical_scale=28.0" in repr(m)


def test_module_errors():
    m = ct.MultiScaleRoIAlign(["p9"], 3, 2)
    features, boxes = data()
    with pytest.raises(ValueError, match="none of the feature maps"):
        m({"p2": features[0]}, [boxes[:, 1:]], [(64, 48)])
    with pytest.raises(ValueError, match="image_shapes"):
        ct.MultiScaleRoIAlign(["p2"], 3, 2)({"p2": features[0]}, [boxes[:, 1:]], [])


def test_torch_compile_without_graph_breaks():
    features, boxes = data(torch.float32)
    features = [f.requires_grad_() for f in features]

    def f(a, b, c):
        return call([a, b, c], boxes).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(*features).backward()
    want = [f.grad.clone() for f in features]
    for t in features:
        t.grad = None
    f(*features).backward()
    for t, w in zip(features, want, strict=True):
        torch.testing.assert_close(t.grad, w)
