"""cuproi.torch.ps_roi_align / ps_roi_pool and their modules: custom ops with autograd (gradcheck,
opcheck), fake tensors, torch.compile, deterministic mode, and equality with the array API."""

import doctest

import numpy as np
import pytest
from roi_op_tester import box_zoo

import cuproi

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

SIZE = (3, 4)
C = 2 * SIZE[0] * SIZE[1]


def data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 10, 12, generator=g, dtype=dtype)
    boxes = torch.tensor(box_zoo(0.7), dtype=torch.float32)
    return x, boxes


def _ops(boxes):
    return {
        "ps_roi_align": lambda x: ct.ps_roi_align(x, boxes, SIZE, 0.7, 2),
        "ps_roi_align_adaptive": lambda x: ct.ps_roi_align(x, boxes, SIZE, 0.7, -1),
        "ps_roi_pool": lambda x: ct.ps_roi_pool(x, boxes, SIZE, 0.7),
    }


@pytest.mark.parametrize("op", list(_ops(None)))
def test_gradcheck(op):
    """On one image and one output channel (the full Jacobian costs a forward per input
    element); test_values_and_gradients_equal_the_array_api covers the whole problem."""
    x, boxes = data(seed=1)
    x = x[:1, : SIZE[0] * SIZE[1]].clone().requires_grad_()
    assert torch.autograd.gradcheck(_ops(boxes[boxes[:, 0] == 0])[op], (x,))


def test_values_and_gradients_equal_the_array_api():
    x, boxes = data()
    x.requires_grad_()
    xn, bn = x.detach().numpy(), boxes.numpy()
    for forward, backward, args in (
        (cuproi.ps_roi_align, cuproi.ps_roi_align_backward, (0.7, -1)),
        (cuproi.ps_roi_pool, cuproi.ps_roi_pool_backward, (0.7,)),
    ):
        out = getattr(ct, forward.__name__)(x, boxes, SIZE, *args)
        g = torch.randn(out.shape, dtype=torch.float64)
        x.grad = None
        (out * g).sum().backward()
        np.testing.assert_array_equal(out.detach().numpy(), forward(xn, bn, SIZE, *args))
        expected = backward(g.numpy(), bn, xn.shape, SIZE, *args)
        np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_list_of_boxes():
    x, boxes = data()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    for op in (ct.ps_roi_align, ct.ps_roi_pool):
        torch.testing.assert_close(op(x, per_image, SIZE, 0.7), op(x, flat, SIZE, 0.7))


@pytest.mark.parametrize("enabled", [False, True])
def test_deterministic_algorithms_reach_the_backward(monkeypatch, enabled):
    seen = []
    for name in ("ps_roi_align_backward", "ps_roi_pool_backward"):
        original = getattr(cuproi, name)

        def spy(*args, original=original, **kwargs):
            seen.append(kwargs["deterministic"])
            return original(*args, **kwargs)

        monkeypatch.setattr(cuproi, name, spy)
    x, boxes = data()
    x.requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        for out in (ct.ps_roi_align(x, boxes, SIZE, 0.7, 2), ct.ps_roi_pool(x, boxes, SIZE, 0.7)):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [enabled] * 2


def test_custom_ops_pass_opcheck():
    x, boxes = data()
    x.requires_grad_()
    torch.library.opcheck(torch.ops.cuproi.ps_roi_align.default, (x, boxes, 3, 4, 0.7, 2))
    torch.library.opcheck(torch.ops.cuproi.ps_roi_align.default, (x, boxes, 3, 4, 0.7, -1))
    torch.library.opcheck(torch.ops.cuproi.ps_roi_pool.default, (x, boxes, 3, 4, 0.7))


def test_fake_tensors_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 21 * 49, 50, 76)
        boxes = torch.empty(7, 5)
        assert ct.ps_roi_align(x, boxes, 7, 1 / 16).shape == (7, 21, 7, 7)
        assert ct.ps_roi_pool(x, boxes, 7, 1 / 16).shape == (7, 21, 7, 7)


def test_channels_must_divide():
    x = torch.randn(1, 10, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    for op in (ct.ps_roi_align, ct.ps_roi_pool):
        with pytest.raises(ValueError, match="10 channels, which is not a multiple of output_size"):
            op(x, boxes, 3)


def test_torch_compile_without_graph_breaks():
    x, boxes = data(torch.float32)
    x.requires_grad_()

    def loss(x):
        return (
            ct.ps_roi_align(x, boxes, SIZE, 0.7, 2).square().sum()
            + ct.ps_roi_pool(x, boxes, SIZE, 0.7).sum()
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


def test_modules_equal_functions():
    x, boxes = data()
    torch.testing.assert_close(
        ct.PSRoIAlign(SIZE, 0.7, 2)(x, boxes), ct.ps_roi_align(x, boxes, SIZE, 0.7, 2)
    )
    torch.testing.assert_close(
        ct.PSRoIPool(SIZE, 0.7)(x, boxes), ct.ps_roi_pool(x, boxes, SIZE, 0.7)
    )
    assert "sampling_ratio=2" in repr(ct.PSRoIAlign(SIZE, 0.7, 2))
    assert "output_size=(3, 4)" in repr(ct.PSRoIPool(SIZE, 0.7))


def test_float16_and_float32_tensors():
    for dtype in (torch.float16, torch.float32):
        x, boxes = data(dtype)
        for op in (ct.ps_roi_align, ct.ps_roi_pool):
            out = op(x, boxes, SIZE, 0.7)
            assert out.dtype == dtype and out.shape == (len(boxes), 2, *SIZE)


def test_docstring_example():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(ct.ps_roi_align, "ps_roi_align", globs={})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_cpu():
    x, boxes = data(torch.float32)
    xc, bc = x.cuda().requires_grad_(), boxes.cuda()
    for op in (ct.ps_roi_align, ct.ps_roi_pool):
        out = op(xc, bc, SIZE, 0.7)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), op(x, boxes, SIZE, 0.7), rtol=1e-5, atol=1e-5)
        out.sum().backward()
    xd = x.cuda().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ct.ps_roi_align(t, bc, SIZE, 0.7, 2), (xd,))
