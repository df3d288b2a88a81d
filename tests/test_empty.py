"""No boxes at all (an image without proposals): every function gives empty outputs and zero
gradients, on the CPU and through the CUDA path, never an error."""

import numpy as np
import pytest
from conftest import CUPY
from test_cuda_path import _every_call, _problem


def _without_boxes(xp):
    x, boxes, rotated, g, offset, mask, x2 = (xp.asarray(a) for a in _problem())
    return x, boxes[:0], rotated[:0], g[:0], offset[:0], mask[:0], x2


def _check(results, to_numpy):
    assert len(results) == 25
    for result in results:
        result = to_numpy(result)
        assert result.shape[0] in (0, 2)  # (K, ...) outputs, or (N, ...) zero gradients
        assert not result.any()


@pytest.mark.parametrize("deterministic", [False, True])
def test_every_function_on_the_cpu(deterministic):
    _check(_every_call(*_without_boxes(np), deterministic), np.asarray)


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_every_function_on_the_gpu(deterministic):
    _check(_every_call(*_without_boxes(CUPY), deterministic), CUPY.asnumpy)
