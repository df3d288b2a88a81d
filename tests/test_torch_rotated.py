"""cuproi.torch.roi_align_rotated and RoIAlignRotated: a custom op with autograd (gradcheck,
opcheck), fake tensors, torch.compile, deterministic mode, and equality with the array API."""

import doctest

import numpy as np
import pytest
from test_roi_align_rotated import ZOO

import cuproi

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

SIZE = (3, 4)


def data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 12, generator=g, dtype=dtype)
    boxes = torch.tensor(ZOO, dtype=torch.float32)
    return x, boxes


@pytest.mark.parametrize(
    "args", [(0.7, 2, True, False), (0.7, 0, True, True), (0.5, 0, False, False)]
)
def test_gradcheck(args):
    x, boxes = data(seed=1)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ct.roi_align_rotated(t, boxes, SIZE, *args), (x,))


@pytest.mark.parametrize("args", [(0.7, 0, True, False), (0.5, 2, False, True)])
def test_values_and_gradients_equal_the_array_api(args):
    x, boxes = data()
    x.requires_grad_()
    xn, bn = x.detach().numpy(), boxes.numpy()
    out = ct.roi_align_rotated(x, boxes, SIZE, *args)
    g = torch.randn(out.shape, dtype=torch.float64)
    (out * g).sum().backward()
    np.testing.assert_array_equal(
        out.detach().numpy(), cuproi.roi_align_rotated(xn, bn, SIZE, *args)
    )
    expected = cuproi.roi_align_rotated_backward(g.numpy(), bn, xn.shape, SIZE, *args)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_list_of_boxes():
    x, boxes = data()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(
        ct.roi_align_rotated(x, per_image, SIZE, 0.7), ct.roi_align_rotated(x, flat, SIZE, 0.7)
    )
    assert ct.roi_align_rotated(x, [], SIZE).shape == (0, 3, *SIZE)


@pytest.mark.parametrize("enabled", [False, True])
def test_deterministic_algorithms_reach_the_backward(monkeypatch, enabled):
    seen = []
    original = cuproi.roi_align_rotated_backward

    def spy(*args, **kwargs):
        seen.append(kwargs["deterministic"])
        return original(*args, **kwargs)

    monkeypatch.setattr(cuproi, "roi_align_rotated_backward", spy)
    x, boxes = data()
    x.requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        ct.roi_align_rotated(x, boxes, SIZE, 0.7, 2).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [enabled]


def test_custom_op_passes_opcheck():
    x, boxes = data()
    x.requires_grad_()
    op = torch.ops.cuproi.roi_align_rotated.default
    torch.library.opcheck(op, (x, boxes, 3, 4, 0.7, 2, True, False))
    torch.library.opcheck(op, (x, boxes, 3, 4, 0.7, 0, False, True))


def test_fake_tensors_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 256, 50, 76)
        boxes = torch.empty(7, 6)
        assert ct.roi_align_rotated(x, boxes, 7, 1 / 16).shape == (7, 256, 7, 7)


def test_torch_compile_without_graph_breaks():
    x, boxes = data(torch.float32)
    x.requires_grad_()

    def loss(x):
        return (
            ct.roi_align_rotated(x, boxes, SIZE, 0.7, 2).square().sum()
            + ct.roi_align_rotated(x, boxes, SIZE, 0.5, 0, False, True).sum()
        )

    compiled = torch.compile(loss, fullgraph=True)  # fails on any graph break
    value = compiled(x)
    value.backward()
    grad = x.grad.clone()
    x.grad = None
    expected = loss(x)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, x.grad)


def test_module_equals_function():
    x, boxes = data()
    module = ct.RoIAlignRotated(SIZE, 0.7, 2, aligned=False, clockwise=True)
    torch.testing.assert_close(
        module(x, boxes), ct.roi_align_rotated(x, boxes, SIZE, 0.7, 2, False, True)
    )
    text = repr(module)
    assert "output_size=(3, 4)" in text and "clockwise=True" in text and "aligned=False" in text
    torch.testing.assert_close(
        ct.RoIAlignRotated(SIZE, 0.7)(x, boxes), ct.roi_align_rotated(x, boxes, SIZE, 0.7)
    )


def test_float16_and_float32_tensors():
    for dtype in (torch.float16, torch.float32):
        x, boxes = data(dtype)
        out = ct.roi_align_rotated(x, boxes, SIZE, 0.7)
        assert out.dtype == dtype and out.shape == (len(boxes), 3, *SIZE)


def test_validation_errors_reach_the_caller():
    x, boxes = data()
    with pytest.raises(ValueError, match=r"\(K, 6\)"):
        ct.roi_align_rotated(x, boxes[:, :5], SIZE)
    with pytest.raises(IndexError, match="batch index"):
        ct.roi_align_rotated(x[:1], boxes, SIZE)


def test_docstring_example():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(ct.roi_align_rotated, "roi_align_rotated", globs={})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_cpu():
    x, boxes = data(torch.float32)
    xc, bc = x.cuda().requires_grad_(), boxes.cuda()
    out = ct.roi_align_rotated(xc, bc, SIZE, 0.7)
    assert out.is_cuda
    torch.testing.assert_close(
        out.cpu(), ct.roi_align_rotated(x, boxes, SIZE, 0.7), rtol=1e-5, atol=1e-5
    )
    out.sum().backward()
    xd = x.cuda().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ct.roi_align_rotated(t, bc, SIZE, 0.7, 2), (xd,))
