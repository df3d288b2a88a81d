"""The fixed-point sums of ``deterministic=True`` themselves, on the host kernels: float16
accumulates in float32, the scale follows the gradient's magnitude, zero and empty gradients,
inf and NaN as in the default sums. That every op's deterministic gradient is the oracle's,
repeats its bits and ignores the order of the boxes is checked per op by roi_op_tester.
"""

import numpy as np
import pytest
from conftest import host_backend
from oracles import roi_align as align_oracle

SHAPE = (2, 3, 9, 11)
SIZE = (3, 4)


def boxes(dtype, k=24, seed=0):
    """Many overlapping boxes, so that every feature cell receives many terms."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [9, 7], (k, 2))
    size = rng.uniform(0.5, 8, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    return rois.astype(dtype)


def data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    rois = boxes(dtype, seed=seed)
    x = rng.standard_normal(SHAPE).astype(dtype)
    g = rng.standard_normal((len(rois), SHAPE[1], *SIZE)).astype(dtype)
    offset = rng.normal(0, 0.5, (len(rois), 2, *SIZE)).astype(dtype)
    return x, rois, g, offset


def gradients(b, x, rois, g, offset, deterministic):
    """Every gradient the three backwards give, as a list of arrays."""
    _, argmax = b.roi_pool(x, rois, SIZE, 0.5, return_argmax=True)
    det = {"deterministic": deterministic}
    return [
        b.roi_align_backward(g, rois, x.shape, 0.5, 2, True, **det),
        b.roi_align_backward(g, rois, x.shape, 0.5, -1, False, **det),
        b.roi_pool_backward(g, rois, argmax, x.shape, **det),
        *b.deform_roi_pool_backward(g, x, rois, offset, 0.5, 2, 0.1, **det)[:2],
    ]


def test_float16_accumulates_in_float32():
    b = host_backend()
    x, rois, g, offset = data(np.float16)
    rois = rois.astype(np.float32)
    offset = offset.astype(np.float32)
    for got, plain in zip(
        gradients(b, x, rois, g, offset, True),
        gradients(b, x, rois, g, offset, False),
        strict=True,
    ):
        assert got.dtype == plain.dtype
        np.testing.assert_allclose(got, plain, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-3, 1e30])
def test_scale_follows_the_gradient(magnitude):
    """The fixed-point scale adapts: tiny and huge gradients keep their relative precision."""
    b = host_backend()
    x, rois, g, _ = data(np.float64)
    g = g * magnitude
    got = b.roi_align_backward(g, rois, SHAPE, 0.5, 2, True, deterministic=True)
    want = align_oracle.roi_align_backward(g, rois, SHAPE, SIZE, 0.5, 2, True)
    np.testing.assert_allclose(got / magnitude, want / magnitude, rtol=1e-12, atol=1e-12)


def test_zero_and_empty_gradients():
    b = host_backend()
    x, rois, g, _ = data(np.float32)
    zero = b.roi_align_backward(np.zeros_like(g), rois, SHAPE, 0.5, 2, True, deterministic=True)
    assert not zero.any()
    empty = b.roi_align_backward(g[:0], rois[:0], SHAPE, 0.5, 2, True, deterministic=True)
    assert empty.shape == SHAPE and not empty.any()


def test_non_finite_gradients_propagate_as_by_default():
    b = host_backend()
    x, rois, g, _ = data(np.float64)
    g[0, 0, 0, 0], g[1, 1, 1, 1], g[2, 2, 2, 2] = np.nan, np.inf, -np.inf
    got = b.roi_align_backward(g, rois, SHAPE, 0.5, 2, True, deterministic=True)
    plain = b.roi_align_backward(g, rois, SHAPE, 0.5, 2, True)
    assert np.isnan(plain).any() and np.isinf(plain).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(plain))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(plain))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(plain))
    finite = np.isfinite(plain)
    np.testing.assert_allclose(got[finite], plain[finite], rtol=1e-12, atol=1e-12)
