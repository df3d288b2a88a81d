"""cuproi.torch.prroi_pool and PrRoIPool: a custom op with autograd for the features and the box
coordinates (gradcheck, opcheck), fake tensors, torch.compile, deterministic mode, and equality
with the array API."""

import doctest

import numpy as np
import pytest
from roi_op_tester import box_zoo

import cuproi

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

SIZE = (3, 4)


def data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 12, generator=g, dtype=dtype)
    boxes = torch.tensor(box_zoo(0.7), dtype=torch.float32)
    return x, boxes


def smooth_boxes(seed=0, k=4):
    """(K, 5) float64 boxes of positive size, inside and partly outside the map."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([9.0, 7.0]) - 2
    size = 1.3 + 5 * torch.rand(k, 2, generator=g, dtype=torch.float64)
    index = torch.tensor([[0.0], [1.0], [0.0], [1.0]], dtype=torch.float64)[:k]
    return torch.cat([index, corner, corner + size], 1)


def with_index(rois, coords):
    """(K, 5) boxes from fixed batch indices and differentiable coordinates."""
    return torch.cat([rois[:, :1].detach(), coords], 1)


def test_gradcheck_input():
    x, boxes = data(seed=1)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ct.prroi_pool(t, boxes, SIZE, 0.7), (x,))


def test_gradcheck_input_and_boxes():
    x, _ = data(seed=2)
    rois = smooth_boxes()
    x.requires_grad_()
    coords = rois[:, 1:].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ct.prroi_pool(a, with_index(rois, b), (2, 3), 0.7),
        (x, coords),
        atol=1e-6,
    )


def test_values_and_gradients_equal_the_array_api():
    x, _ = data()
    rois = smooth_boxes()
    x.requires_grad_()
    rois.requires_grad_()
    out = ct.prroi_pool(x, rois, SIZE, 0.7)
    g = torch.randn(out.shape, dtype=torch.float64)
    (out * g).sum().backward()
    xn, bn = x.detach().numpy(), rois.detach().numpy()
    np.testing.assert_array_equal(out.detach().numpy(), cuproi.prroi_pool(xn, bn, SIZE, 0.7))
    np.testing.assert_array_equal(
        x.grad.numpy(), cuproi.prroi_pool_backward(g.numpy(), bn, xn.shape, SIZE, 0.7)
    )
    want = cuproi.prroi_pool_box_backward(g.numpy(), xn, bn, SIZE, 0.7)
    np.testing.assert_allclose(rois.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    assert (rois.grad[:, 0] == 0).all()


def test_list_of_boxes():
    x, boxes = data()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(
        ct.prroi_pool(x, per_image, SIZE, 0.7), ct.prroi_pool(x, flat, SIZE, 0.7)
    )
    # Per-image (L, 4) tensors get their gradient through the concatenation.
    rois = smooth_boxes()
    coords = [rois[rois[:, 0] == i, 1:].clone().requires_grad_() for i in range(2)]
    ct.prroi_pool(x, coords, SIZE, 0.7).sum().backward()
    stacked = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    want = cuproi.prroi_pool_box_backward(
        np.ones((len(rois), 3, *SIZE)), x.numpy(), stacked.numpy(), SIZE, 0.7
    )
    np.testing.assert_allclose(torch.cat([c.grad for c in coords]).numpy(), want[:, 1:])


@pytest.mark.parametrize("enabled", [False, True])
def test_deterministic_algorithms_reach_the_backward(monkeypatch, enabled):
    seen = []
    for name in ("prroi_pool_backward", "prroi_pool_box_backward"):
        original = getattr(cuproi, name)

        def spy(*args, original=original, **kwargs):
            seen.append(kwargs["deterministic"])
            return original(*args, **kwargs)

        monkeypatch.setattr(cuproi, name, spy)
    x, _ = data()
    rois = smooth_boxes()
    x.requires_grad_()
    rois.requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        ct.prroi_pool(x, rois, SIZE, 0.7).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [enabled] * 2


def test_features_are_saved_only_for_box_gradients():
    x, boxes = data()
    x.requires_grad_()
    out = ct.prroi_pool(x, boxes, SIZE, 0.7)
    out.sum().backward()  # no box gradient: works without the saved features
    assert x.grad is not None


def test_custom_ops_pass_opcheck():
    x, boxes = data()
    rois = smooth_boxes()
    g = torch.randn(len(rois), 3, *SIZE, dtype=torch.float64)
    ops = torch.ops.cuproi
    torch.library.opcheck(ops.prroi_pool.default, (x.requires_grad_(), boxes, 3, 4, 0.7))
    checks = [
        (ops.prroi_pool.default, (x.detach(), rois, 3, 4, 0.7)),
        (ops.prroi_pool_backward.default, (g, rois, list(x.shape), 0.7, False)),
        (ops.prroi_pool_box_backward.default, (g, x.detach(), rois, 0.7, False)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_fake_tensors_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 256, 50, 76)
        boxes = torch.empty(7, 5)
        assert ct.prroi_pool(x, boxes, 7, 1 / 16).shape == (7, 256, 7, 7)
        assert ct.PrRoIPool((2, 3), 1 / 16)(x, boxes).shape == (7, 256, 2, 3)


def test_torch_compile_without_graph_breaks():
    x, _ = data(torch.float32)
    rois = smooth_boxes().float()
    x.requires_grad_()
    rois.requires_grad_()

    def loss(x, b):
        return ct.prroi_pool(x, b, SIZE, 0.7).square().sum()

    compiled = torch.compile(loss, fullgraph=True)  # fails on any graph break
    value = compiled(x, rois)
    value.backward()
    grads = x.grad.clone(), rois.grad.clone()
    x.grad = rois.grad = None
    expected = loss(x, rois)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], rois.grad)


def test_module_equals_function():
    x, boxes = data()
    torch.testing.assert_close(
        ct.PrRoIPool(SIZE, 0.7)(x, boxes), ct.prroi_pool(x, boxes, SIZE, 0.7)
    )
    torch.testing.assert_close(ct.PrRoIPool(2)(x, boxes), ct.prroi_pool(x, boxes, 2))
    assert repr(ct.PrRoIPool(SIZE, 0.7)) == "PrRoIPool(output_size=(3, 4), spatial_scale=0.7)"


def test_float16_and_float32_tensors():
    for dtype in (torch.float16, torch.float32):
        x, boxes = data(dtype)
        out = ct.prroi_pool(x, boxes, SIZE, 0.7)
        assert out.dtype == dtype and out.shape == (len(boxes), 3, *SIZE)
        x.requires_grad_()
        rois = smooth_boxes().float().requires_grad_()
        ct.prroi_pool(x, rois, SIZE, 0.7).sum().backward()
        assert x.grad.dtype == dtype and rois.grad.dtype == torch.float32


def test_docstring_example():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(ct.prroi_pool, "prroi_pool", globs={})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_cpu():
    x, _ = data(torch.float32)
    rois = smooth_boxes().float()
    xc, bc = x.cuda().requires_grad_(), rois.cuda().requires_grad_()
    out = ct.prroi_pool(xc, bc, SIZE, 0.7)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ct.prroi_pool(x, rois, SIZE, 0.7), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    xd = x.cuda().double().requires_grad_()
    cd = rois[:, 1:].cuda().double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ct.prroi_pool(a, with_index(rois.cuda().double(), b), SIZE, 0.7), (xd, cd)
    )
