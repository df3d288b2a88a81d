"""Modulated Deformable RoI Pooling (``deform_roi_pool(..., mask=...)``, DCNv2 / mmcv's
ModulatedDeformRoIPoolPack): the mask multiplies inside the kernel; forward, the three gradients and
validation on both backends against tests/oracles/deform_roi_pool.py, and the deterministic
backward."""

import host
import numpy as np
import pytest
from conftest import TOLERANCE
from oracles import deform_roi_pool as deform_oracle

import cuproi

SHAPE = (2, 3, 9, 11)
SIZE = (3, 4)


def data(dtype, seed=0, k=10):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [9, 7], (k, 2))
    size = rng.uniform(0.5, 8, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((k, SHAPE[1], *SIZE))
    offset = rng.normal(0, 0.5, (k, 2, *SIZE))
    mask = rng.uniform(0, 1, (k, 1, *SIZE))
    return [a.astype(dtype) for a in (x, rois, g, offset, mask)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, 0])
@pytest.mark.parametrize("with_offset", [True, False])
def test_matches_oracle(backend, dtype, ratio, with_offset):
    x, rois, g, offset, mask = data(dtype)
    offset = offset if with_offset else None
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    out = backend.deform_roi_pool(x, rois, offset, SIZE, 0.7, ratio, 0.1, mask)
    want = deform_oracle.deform_roi_pool_modulated(x, rois, offset, mask, SIZE, 0.7, ratio, 0.1)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
    grad_x, grad_offset, grad_mask = backend.deform_roi_pool_backward(
        g, x, rois, offset, 0.7, ratio, 0.1, mask
    )
    # d (m * f) / d input = m * d f / d input: the unmodulated backward of g * mask.
    gm = (g.astype(np.float64) * mask).astype(dtype)
    plain_x, plain_offset, none = backend.deform_roi_pool_backward(
        gm, x, rois, offset, 0.7, ratio, 0.1
    )
    assert none is None and grad_x.dtype == dtype and grad_mask.dtype == mask.dtype
    np.testing.assert_allclose(grad_x, plain_x, rtol=10 * rtol, atol=10 * atol)
    if with_offset:
        np.testing.assert_allclose(grad_offset, plain_offset, rtol=10 * rtol, atol=10 * atol)
    else:
        assert grad_offset is None
    want_mask = deform_oracle.deform_roi_pool_mask_grad(g, x, rois, offset, SIZE, 0.7, ratio, 0.1)
    assert grad_mask.shape == mask.shape
    np.testing.assert_allclose(grad_mask, want_mask, rtol=rtol, atol=10 * atol)


def test_mask_gradient_is_exact_finite_difference():
    """The output is linear in the mask: a finite difference is exact up to rounding."""
    x, rois, g, offset, mask = data(np.float64)
    _, _, grad_mask = cuproi.deform_roi_pool_backward(g, x, rois, offset, SIZE, 0.7, 2, 0.1, mask)
    eps = 1e-3
    for k, ph, pw in [(0, 0, 0), (3, 1, 2), (9, 2, 3)]:
        plus, minus = mask.copy(), mask.copy()
        plus[k, 0, ph, pw] += eps
        minus[k, 0, ph, pw] -= eps
        f = [
            np.sum(g * cuproi.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2, 0.1, m))
            for m in (plus, minus)
        ]
        assert grad_mask[k, 0, ph, pw] == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-9)


def test_float16_on_host_kernels():
    b = {op: host.bind(op) for op in ("deform_roi_pool", "deform_roi_pool_backward")}
    x, rois, g, offset, mask = data(np.float16)
    rois, offset, mask = (a.astype(np.float32) for a in (rois, offset, mask))
    rtol, atol = TOLERANCE[np.dtype(np.float16)]
    out = b["deform_roi_pool"](x, rois, offset, SIZE, 0.7, 2, 0.1, mask)
    assert out.dtype == np.float16
    want = deform_oracle.deform_roi_pool_modulated(x, rois, offset, mask, SIZE, 0.7, 2, 0.1)
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
    _, _, grad_mask = b["deform_roi_pool_backward"](g, x, rois, offset, 0.7, 2, 0.1, mask)
    want = deform_oracle.deform_roi_pool_mask_grad(g, x, rois, offset, SIZE, 0.7, 2, 0.1)
    np.testing.assert_allclose(grad_mask, want, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_backward_is_order_independent(dtype):
    backward = host.bind("deform_roi_pool_backward")
    x, rois, g, offset, mask = data(dtype, k=30)
    order = np.random.default_rng(5).permutation(len(rois))

    def run(*arrays):
        return backward(
            arrays[1], x, arrays[0], arrays[2], 0.7, 2, 0.1, arrays[3], deterministic=True
        )

    a = run(rois, g, offset, mask)
    b = run(*(np.ascontiguousarray(v[order]) for v in (rois, g, offset, mask)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1][order], b[1])
    np.testing.assert_array_equal(a[2][order], b[2])
    plain = backward(g, x, rois, offset, 0.7, 2, 0.1, mask)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    for got, want in zip(a, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_validation():
    x, rois, g, offset, mask = data(np.float64)
    with pytest.raises(ValueError, match=r"mask must have shape \(10, 1, 3, 4\)"):
        cuproi.deform_roi_pool(x, rois, offset, SIZE, mask=mask[:, :, :2])
    with pytest.raises(ValueError, match="mask must be a 4-D array"):
        cuproi.deform_roi_pool(x, rois, offset, SIZE, mask=mask[:, 0])
    with pytest.raises(TypeError, match="mask must be float16, float32 or float64"):
        cuproi.deform_roi_pool(x, rois, offset, SIZE, mask=mask.astype(np.int32))
    with pytest.raises(ValueError, match="mask must have shape"):
        cuproi.deform_roi_pool_backward(g, x, rois, offset, SIZE, mask=mask[:5])
    with pytest.raises(TypeError, match="mask must be an array"):
        cuproi.deform_roi_pool(x, rois, offset, SIZE, mask=[[1.0]])


def test_mask_of_ones_is_the_plain_op_and_none_keeps_the_tuple():
    x, rois, g, offset, mask = data(np.float64)
    ones = np.ones_like(mask)
    np.testing.assert_array_equal(
        cuproi.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2, mask=ones),
        cuproi.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2),
    )
    result = cuproi.deform_roi_pool_backward(g, x, rois, offset, SIZE, 0.7, 2)
    assert len(result) == 3 and result[2] is None
    grads = cuproi.deform_roi_pool_backward(g, x, rois, offset, SIZE, 0.7, 2, mask=ones)
    for a, b in zip(grads[:2], result[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # float32 mask with float64 features: the gradient has the mask's dtype
    m32 = mask.astype(np.float32)
    assert (
        cuproi.deform_roi_pool_backward(g, x, rois, offset, SIZE, mask=m32)[2].dtype == np.float32
    )
