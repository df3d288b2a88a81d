"""No boxes at all (an image without proposals): every function gives empty outputs and zero
gradients, on the CPU and through the CUDA path, never an error."""

import calls
import numpy as np
import pytest
from conftest import CUPY


def _without_boxes(xp):
    x, boxes, rotated, g, offset, mask, x2 = (xp.asarray(a) for a in calls.problem())
    return x, boxes[:0], rotated[:0], g[:0], offset[:0], mask[:0], x2


def _check(results, to_numpy):
    assert len(results) == 25
    for result in results:
        result = to_numpy(result)
        assert result.shape[0] in (0, 2)  # (K, ...) outputs, or (N, ...) zero gradients
        assert not result.any()


@pytest.mark.parametrize("deterministic", [False, True])
def test_every_function_on_the_cpu(deterministic):
    _check(calls.every_call(*_without_boxes(np), deterministic), np.asarray)


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_every_function_on_the_gpu(deterministic):
    _check(calls.every_call(*_without_boxes(CUPY), deterministic), CUPY.asnumpy)


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_the_torch_adapter_with_boxes_that_require_grad(pool_mode):
    torch = pytest.importorskip("torch")
    import cuproi.torch as ct

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    boxes = torch.zeros(0, 5, requires_grad=True)
    outs = [
        ct.roi_align(x, boxes, 2, 1.0, 2, True, pool_mode=pool_mode),
        ct.deform_roi_pool(x, boxes, None, 2),
        ct.prroi_pool(x, boxes, 2),
    ]
    sum(out.sum() for out in outs).backward()
    assert all(out.shape == (0, 3, 2, 2) for out in outs)
    assert boxes.grad.shape == (0, 5) and not x.grad.any()
