"""Max-mode RoI Align (``pool_mode="max"``, mmcv's semantics): forward and backward on both
backends against the float64 oracle of tests/oracles/roi_align.py, ties, NaN, empty bins, samples
outside the map, validation, and the deterministic backward."""

import host
import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import roi_align as align_oracle

import cuproi

SHAPE = (2, 3, 9, 11)
SIZE = (3, 4)


def data(dtype, seed=0, k=12):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-3, [10, 8], (k, 2))
    size = rng.uniform(0.3, 9, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    rois = np.vstack([rois, [[1, -40, -40, 50, 50], [0, 3, 3, 3, 3], [1, 6, 2, 1, 1]]])
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((len(rois), SHAPE[1], *SIZE))
    return x.astype(dtype), rois.astype(dtype), g.astype(dtype)


def forward(b, x, rois, ratio, aligned, scale=0.7):
    if b is None:
        return cuproi.roi_align(x, rois, SIZE, scale, ratio, aligned, pool_mode="max")
    return b.roi_align(x, rois, SIZE, scale, ratio, aligned, "max")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, -1])
@pytest.mark.parametrize("aligned", [False, True])
def test_forward_and_backward_match_oracle(backend, dtype, ratio, aligned):
    x, rois, g = data(dtype)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    out = forward(backend, x, rois, ratio, aligned)
    assert out.dtype == dtype and out.shape == (len(rois), SHAPE[1], *SIZE)
    want = align_oracle.roi_align_max(x, rois, SIZE, 0.7, ratio, aligned)
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
    grad = backend.roi_align_backward(
        g, rois, x.shape, 0.7, ratio, aligned, pool_mode="max", input=x
    )
    assert grad.dtype == dtype and grad.shape == x.shape
    want = align_oracle.roi_align_max_backward(g, x, rois, SIZE, 0.7, ratio, aligned)
    np.testing.assert_allclose(grad, want, rtol=rtol, atol=atol)


def test_float16_on_host_kernels():
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    b = host_backend()
    x, rois, g = data(np.float16)
    rtol, atol = TOLERANCE[np.dtype(np.float16)]
    rois32 = rois.astype(np.float32)
    out = b.roi_align(x, rois32, SIZE, 0.7, 2, True, "max")
    assert out.dtype == np.float16
    np.testing.assert_allclose(
        out, align_oracle.roi_align_max(x, rois32, SIZE, 0.7, 2, True), rtol, atol
    )
    grad = b.roi_align_backward(g, rois32, x.shape, 0.7, 2, True, pool_mode="max", input=x)
    want = align_oracle.roi_align_max_backward(g, x, rois32, SIZE, 0.7, 2, True)
    np.testing.assert_allclose(grad, want, rtol, atol)


def test_ties_first_sample_in_scan_order_wins(backend):
    x = np.ones((1, 1, 6, 6))
    rois = np.array([[0, 1.0, 1.0, 5.0, 5.0]])
    out = backend.roi_align(x, rois, (1, 1), 1.0, 2, False, "max")
    assert out.item() == 1.0
    grad = backend.roi_align_backward(
        np.ones_like(out), rois, x.shape, 1.0, 2, False, pool_mode="max", input=x
    )
    # Samples at (2, 2), (2, 4), (4, 2), (4, 4): the first wins, exactly on cell (2, 2).
    want = np.zeros((6, 6))
    want[2, 2] = 1.0
    np.testing.assert_array_equal(grad[0, 0], want)


def test_nan_propagates_and_takes_the_gradient(backend):
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    x[0, 0, 2, 2] = np.nan
    rois = np.array([[0, 0.0, 0.0, 6.0, 6.0]])
    out = backend.roi_align(x, rois, (1, 1), 1.0, 3, False, "max")
    assert np.isnan(out.item())
    # The first NaN sample in scan order gets the gradient (its 4 neighbours).
    grad = backend.roi_align_backward(
        np.ones_like(out), rois, x.shape, 1.0, 3, False, pool_mode="max", input=x
    )
    want = align_oracle.roi_align_max_backward(np.ones_like(out), x, rois, 1, 1.0, 3, False)
    np.testing.assert_allclose(grad, want)


def test_empty_bin_gives_zero_and_no_gradient(backend):
    x = -np.ones((1, 2, 5, 5))
    rois = np.array([[0, 2.0, 2.0, 2.0, 2.0]])  # zero size, aligned, adaptive: no samples
    out = backend.roi_align(x, rois, (2, 2), 1.0, -1, True, "max")
    np.testing.assert_array_equal(out, 0)
    grad = backend.roi_align_backward(
        np.ones_like(out), rois, x.shape, 1.0, -1, True, pool_mode="max", input=x
    )
    np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("box", [[0, -6.0, -6.0, 3.0, 3.0], [0, -500.0, -500.0, 900.0, 800.0]])
def test_out_of_range_samples_compete_as_zero(backend, box):
    """Negative features: a sample outside the map (value 0, as in mmcv) wins, no gradient."""
    x = -1.0 - np.random.default_rng(0).uniform(size=(1, 1, 5, 5))
    rois = np.array([box])
    out = backend.roi_align(x, rois, (1, 1), 1.0, -1, False, "max")
    assert out.item() == 0.0
    grad = backend.roi_align_backward(
        np.ones_like(out), rois, x.shape, 1.0, -1, False, pool_mode="max", input=x
    )
    np.testing.assert_array_equal(grad, 0)
    # Positive features: the in-range maximum wins over the zeros.
    out = backend.roi_align(-x, rois, (1, 1), 1.0, -1, False, "max")
    np.testing.assert_allclose(out, align_oracle.roi_align_max(-x, rois, 1, 1.0, -1, False))


def test_avg_mode_is_unchanged():
    x, rois, _ = data(np.float64)
    a = cuproi.roi_align(x, rois, SIZE, 0.7, 2, True)
    b = cuproi.roi_align(x, rois, SIZE, 0.7, 2, True, pool_mode="avg")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, cuproi.roi_align(x, rois, SIZE, 0.7, 2, True, pool_mode="max"))


def test_public_backward_needs_input_in_max_mode():
    x, rois, g = data(np.float64)
    with pytest.raises(ValueError, match="needs input="):
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True, pool_mode="max")
    with pytest.raises(ValueError, match="input has shape"):
        cuproi.roi_align_backward(
            g, rois, (2, 3, 9, 12), SIZE, 0.7, 2, True, pool_mode="max", input=x
        )
    with pytest.raises(ValueError, match="pool_mode must be 'avg' or 'max'"):
        cuproi.roi_align(x, rois, SIZE, pool_mode="sum")
    with pytest.raises(ValueError, match="pool_mode must be"):
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, pool_mode="Max", input=x)
    grad = cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True, pool_mode="max", input=x)
    want = align_oracle.roi_align_max_backward(g, x, rois, SIZE, 0.7, 2, True)
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)
    # avg mode ignores input
    np.testing.assert_array_equal(
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True, input=x),
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True),
    )


def test_list_boxes():
    x, rois, _ = data(np.float64)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = np.vstack([rois[rois[:, 0] == i] for i in range(2)])
    np.testing.assert_array_equal(
        cuproi.roi_align(x, per_image, SIZE, 0.7, 2, True, pool_mode="max"),
        cuproi.roi_align(x, ordered, SIZE, 0.7, 2, True, pool_mode="max"),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_backward_is_order_independent(dtype):
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    backward = host.bind("roi_align_backward")
    x, rois, g = data(dtype, k=40)
    order = np.random.default_rng(3).permutation(len(rois))
    options = {"pool_mode": "max", "input": x, "deterministic": True}
    a = backward(g, rois, x.shape, 0.7, -1, False, **options)
    b = backward(
        np.ascontiguousarray(g[order]),
        np.ascontiguousarray(rois[order]),
        x.shape,
        0.7,
        -1,
        False,
        **options,
    )
    np.testing.assert_array_equal(a, b)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    want = align_oracle.roi_align_max_backward(g, x, rois, SIZE, 0.7, -1, False)
    np.testing.assert_allclose(a, want, rtol=rtol, atol=atol)
