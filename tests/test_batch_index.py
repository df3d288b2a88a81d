"""Batch indices are checked as given, before the boxes are cast to the compute dtype: float32
rounds 2**24 + 1 to 2**24 and 1 + 1e-9 to 1, which would read another image than the one asked."""

import numpy as np
import pytest
from conftest import CUPY

import cuproi
from cuproi import _validate

X = np.ones((2, 1, 4, 4), np.float32)


def test_a_batch_float32_cannot_index_is_refused():
    boxes = np.zeros((1, 5))
    with pytest.raises(ValueError, match=r"beyond 2\*\*24.*use float64"):
        _validate.boxes(np, boxes, 2**24 + 1, 1.0, np.float32)
    assert _validate.boxes(np, boxes, 2**24 + 1, 1.0, np.float64).dtype == np.float64


@pytest.mark.gpu
def test_on_the_gpu_such_a_row_gives_zeros():
    x = CUPY.asarray(X)
    boxes = CUPY.asarray(np.array([[1 + 1e-9, 0, 0, 2, 2], [1, 0, 0, 2, 2]]))
    out = CUPY.asnumpy(cuproi.roi_align(x, boxes, 1, 1.0, 2, True))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0, 1])
