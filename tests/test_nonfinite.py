"""NaN and infinite values: IEEE results, no warnings, and NaN for bins with no place.

The rules (README, "Conventions"): features, gradients and masks that hold NaN or infinities
give what IEEE arithmetic gives (a bin that reads a NaN is NaN, 0 * inf is NaN), as the CUDA
kernels do, and NumPy's RuntimeWarnings never reach the caller. A Deformable RoI Pooling bin
whose offset is NaN or infinite has no place on the map: its output and its gradients with
respect to its offset, its mask and its box are NaN, and the features get nothing from it.
"""

import warnings

import calls
import numpy as np
import pytest
from conftest import CUPY
from oracles import deform_roi_pool as deform_oracle

import cuproi


def _non_finite(problem):
    """``problem`` (calls.problem) with NaN and infinities in its arrays."""
    x, boxes, rotated, g, offset, mask, x2 = (a.copy() for a in problem)
    x[0, 0, 3, 3], x[1, 1, 5, 5], x[0, 2, 6:8, 6:8] = np.nan, np.inf, -np.inf
    x2[0, 3, 1, 1], x2[1, 4, 2, 2] = np.inf, np.nan
    g[0, 0, 0, 0], g[1, 2, 1, 1] = np.inf, np.nan
    offset[2, 0, 1, 1], offset[3, 1, 0, 0] = np.nan, -np.inf
    mask[4, 0, 0, 1] = np.inf
    return x, boxes, rotated, g, offset, mask, x2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_no_warnings_from_non_finite_values(monkeypatch, dtype):
    monkeypatch.setenv("CUPROI_NUM_THREADS", "2")  # warnings raised in the threads count too
    problem = _non_finite(calls.problem(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = calls.every_call(*problem, False)
    assert any(np.isnan(r).any() for r in results)


def _deform(xp, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 12, 14)).astype(dtype)
    ct = np.float64 if dtype == np.float64 else np.float32
    boxes = np.array([[0, 1, 1, 9, 8], [1, 2, 3, 12, 11], [0, 0, 0, 5, 5]], ct)
    offset = rng.normal(0, 0.3, (3, 2, 2, 2)).astype(ct)
    offset[0, 0, 1, 0], offset[1, 1, 0, 1] = np.nan, np.inf
    mask = rng.uniform(0, 1, (3, 1, 2, 2)).astype(ct)
    g = rng.standard_normal((3, 3, 2, 2)).astype(dtype)
    unplaced = np.zeros((3, 1, 2, 2), bool)
    unplaced[0, 0, 1, 0] = unplaced[1, 0, 0, 1] = True
    return [xp.asarray(a) for a in (x, boxes, offset, mask, g)], unplaced


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _check_unplaced_bins(xp, dtype):
    (x, boxes, offset, mask, g), unplaced = _deform(xp, dtype)
    out = _host(cuproi.deform_roi_pool(x, boxes, offset, 2, 1.0, 2, 0.1, mask))
    grad_x, grad_offset, grad_mask = (
        _host(a) for a in cuproi.deform_roi_pool_backward(g, x, boxes, offset, 2, 1.0, 2, 0.1, mask)
    )
    grad_boxes = _host(
        cuproi.deform_roi_pool_box_backward(g, x, boxes, offset, 2, 1.0, 2, 0.1, mask)
    )
    everywhere = np.broadcast_to(unplaced, out.shape)
    assert np.isnan(out[everywhere]).all() and np.isfinite(out[~everywhere]).all()
    assert np.isnan(grad_offset[np.broadcast_to(unplaced, grad_offset.shape)]).all()
    assert np.isfinite(grad_offset[~np.broadcast_to(unplaced, grad_offset.shape)]).all()
    assert np.isnan(grad_mask[unplaced]).all() and np.isfinite(grad_mask[~unplaced]).all()
    assert np.isnan(grad_boxes[:2, 1:]).all() and np.isfinite(grad_boxes[2]).all()
    assert (grad_boxes[:, 0] == 0).all()
    # The features get nothing from an unplaced bin: the oracle's gradient with those bins'
    # output gradients zeroed (and their offsets, which then move nothing, set to 0).
    host = [_host(a).astype(np.float64) for a in (x, boxes, offset, mask, g)]
    hx, hboxes, hoffset, hmask, hg = host
    hg[np.broadcast_to(unplaced, hg.shape)] = 0
    hoffset[np.broadcast_to(unplaced, hoffset.shape)] = 0
    expected, _ = deform_oracle.deform_roi_pool_backward(
        hg * hmask, hx, hboxes, hoffset, (2, 2), 1.0, 2, 0.1
    )
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(grad_x.astype(np.float64), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bins_whose_offset_is_not_finite_are_nan(dtype):
    _check_unplaced_bins(np, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bins_whose_offset_is_not_finite_are_nan_on_the_gpu(dtype):
    _check_unplaced_bins(CUPY, dtype)


def test_nan_features_propagate_to_the_bins_that_read_them():
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 1, 1] = np.nan
    boxes = np.array([[0, 0, 0, 8, 8]], np.float32)
    out = cuproi.roi_align(x, boxes, 2, 1.0, 2, True)
    assert np.isnan(out[0, 0, 0, 0]) and np.isfinite(out[0, 0, 1:]).all()
    assert np.isnan(cuproi.roi_pool(x, boxes, 2)[0, 0, 0, 0])


def _past_float16_calls():
    """Calls whose float16 results lie past float16's range, by name, each taking the arrays
    it reads; then those arrays in float16, and as the call computes them (float32)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float16)
    boxes = np.array([[0, 0.5, 0.5, 3, 3]], np.float32)
    # grad_offset grows with the box: 1.4e5 cells high, its second sample row on the map.
    huge = np.array([[0, 0.5, -52498.5, 3, 87501.5]], np.float32)
    offset = np.zeros((1, 2, 2, 2), np.float16)
    g = rng.standard_normal((1, 2, 2, 2)).astype(np.float16)
    mask = np.full((1, 1, 2, 2), 1e30, np.float32)  # the features' gradient: g * 1e30
    wide = np.full(g.shape, 1e30, np.float32)  # read in the float16 features' dtype: inf

    def deform(a, boxes=boxes, **kwargs):
        return cuproi.deform_roi_pool_backward(
            a["g"], a["x"], boxes, a["offset"], 2, 1.0, 2, 1.0, **kwargs
        )

    def max_mode(a):
        return cuproi.roi_align_backward(
            a["g"], boxes, x.shape, 2, 1.0, 2, True, pool_mode="max", input=a["x"]
        )

    narrow = {"x": x, "g": g, "offset": offset}
    computed = {key: a.astype(np.float32) for key, a in narrow.items()}
    read_wide = {**narrow, "g": wide}
    read_narrow = {**narrow, "g": np.full(g.shape, np.inf, np.float16)}
    return {
        "mask": (lambda a: deform(a, mask=mask)[0], narrow, computed),
        "grad_offset": (lambda a: deform(a, huge)[1], narrow, computed),
        "grad_output, max mode": (max_mode, read_wide, read_narrow),
        "grad_output, deform": (lambda a: deform(a)[0], read_wide, read_narrow),
    }


@pytest.mark.parametrize("name", list(_past_float16_calls()))
def test_float16_past_its_range_is_its_infinity_without_warnings(name):
    """A float16 result computed in float32 is the float32 result rounded to float16, its
    infinity where it lies past float16's range; a wider gradient is read in the float16
    features' dtype. NumPy's overflow warnings never reach the caller."""
    call, arrays, as_computed = _past_float16_calls()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = call(arrays)
    expected = call(as_computed)
    with np.errstate(over="ignore"):
        expected = expected.astype(got.dtype)
    assert np.isinf(got).any()
    np.testing.assert_array_equal(got, expected)
