"""Gradients with respect to the box coordinates: roi_align_box_backward (avg and max, both
aligned modes) and deform_roi_pool_box_backward (offsets, mask), on both backends, against the
analytic float64 oracles of tests/oracles and against finite differences of the float64
forward: central differences at smooth points, right differences where samples sit exactly on
integer positions (where TensorFlow's and DCN's box gradients vanish)."""

import host
import numpy as np
import pytest
from conftest import TOLERANCE
from oracles import calculus
from oracles import deform_roi_pool as deform_oracle
from oracles import roi_align as align_oracle

import cuproi
from cuproi import _cpu

SHAPE = (2, 3, 9, 11)
SIZE = (2, 3)


@pytest.fixture(params=["cpu", "host-kernels"])
def ops(request):
    if request.param == "cpu":
        return _cpu
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    names = ("roi_align_box_backward", "deform_roi_pool_box_backward")
    return type("HostOps", (), {n: staticmethod(host.bind(n)) for n in names})


def data(dtype, seed=0, k=8):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [8, 6], (k, 2))
    size = rng.uniform(1.3, 7, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((k, SHAPE[1], *SIZE))
    offset = rng.normal(0, 0.3, (k, 2, *SIZE))
    mask = rng.uniform(0.2, 1, (k, 1, *SIZE))
    return [a.astype(dtype) for a in (x, rois, g, offset, mask)]


def tolerance(dtype, grad):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    return {"rtol": 20 * rtol, "atol": 20 * atol * max(1.0, np.abs(grad).max())}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, -1])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_oracle(ops, dtype, ratio, aligned):
    x, rois, g, _, _ = data(dtype)
    rois = np.vstack([rois, [[0, 3.2, 2.1, 3.6, 2.4]]]).astype(dtype)  # legacy clamp (1 cell)
    g = np.concatenate([g, g[:1]])
    got = ops.roi_align_box_backward(g, x, rois, 0.7, ratio, aligned)
    want = align_oracle.roi_align_box_grad(g, x, rois, SIZE, 0.7, ratio, aligned)
    assert got.shape == (len(rois), 5) and (got[:, 0] == 0).all()
    np.testing.assert_allclose(got, want, **tolerance(dtype, want))
    if not aligned:  # the clamped box: its x2 and y2 do not move the samples
        assert got[-1, 3] == 0 and got[-1, 4] == 0 and got[-1, 1] != 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_max_matches_oracle(ops, dtype, aligned):
    x, rois, g, _, _ = data(dtype)
    got = ops.roi_align_box_backward(g, x, rois, 0.7, 2, aligned, pool_mode="max")
    want = align_oracle.roi_align_box_grad(g, x, rois, SIZE, 0.7, 2, aligned, "max")
    np.testing.assert_allclose(got, want, **tolerance(dtype, want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, 0])
@pytest.mark.parametrize("extras", ["none", "offset", "offset+mask"])
def test_deform_matches_oracle(ops, dtype, ratio, extras):
    x, rois, g, offset, mask = data(dtype)
    offset = None if extras == "none" else offset
    mask = mask if extras == "offset+mask" else None
    got = ops.deform_roi_pool_box_backward(g, x, rois, offset, 0.7, ratio, 0.1, mask)
    want = deform_oracle.deform_roi_pool_box_grad(g, x, rois, offset, SIZE, 0.7, ratio, 0.1, mask)
    np.testing.assert_allclose(got, want, **tolerance(dtype, want))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [2, -1])
def test_roi_align_central_differences(aligned, ratio):
    x, rois, g, _, _ = data(np.float64, seed=1)
    grad = cuproi.roi_align_box_backward(g, x, rois, SIZE, 0.7, ratio, aligned)

    def forward(r):
        return align_oracle.roi_align(x, r, SIZE, 0.7, ratio, aligned)

    np.testing.assert_allclose(
        grad, calculus.numeric_box_grad(forward, g, rois), rtol=1e-5, atol=1e-6
    )


def test_roi_align_max_central_differences():
    x, rois, g, _, _ = data(np.float64, seed=2)
    grad = cuproi.roi_align_box_backward(g, x, rois, SIZE, 0.7, 2, True, pool_mode="max")

    def forward(r):
        return align_oracle.roi_align_max(x, r, SIZE, 0.7, 2, True)

    np.testing.assert_allclose(
        grad, calculus.numeric_box_grad(forward, g, rois), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_central_differences(with_mask):
    x, rois, g, offset, mask = data(np.float64, seed=3)
    mask = mask if with_mask else None
    grad = cuproi.deform_roi_pool_box_backward(g, x, rois, offset, SIZE, 0.7, 2, 0.1, mask)

    def forward(r):
        return cuproi.deform_roi_pool(x, r, offset, SIZE, 0.7, 2, 0.1, mask)

    np.testing.assert_allclose(
        grad, calculus.numeric_box_grad(forward, g, rois), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("aligned", [False, True])
def test_integer_sample_positions_take_the_right_derivative(aligned):
    """Every sample exactly on a cell: the derivative from the right, not 0 as in TF/DCN."""
    x, _, _, _, _ = data(np.float64, seed=4)
    shift = 0.5 if aligned else 0.0
    # 2x3 bins, 2 samples per bin: box 4 x 6 cells from (1, 2) puts samples on integers.
    rois = np.array(
        [
            [0, 2 + shift, 1 + shift, 8 + shift, 5 + shift],
            [1, 1 + shift, 2 + shift, 7 + shift, 6 + shift],
        ]
    )
    g = np.random.default_rng(5).standard_normal((2, SHAPE[1], *SIZE))
    grad = cuproi.roi_align_box_backward(g, x, rois, SIZE, 1.0, 2, aligned)

    def forward(r):
        return align_oracle.roi_align(x, r, SIZE, 1.0, 2, aligned)

    right = calculus.right_box_grad(forward, g, rois)
    np.testing.assert_allclose(grad, right, rtol=1e-5, atol=1e-5)
    assert np.abs(grad[:, 1:]).min() > 1e-3  # none vanishes


def test_integer_positions_deform():
    x, _, _, _, _ = data(np.float64, seed=6)
    rois = np.array([[0, 2.5, 1.5, 8.5, 5.5]])
    g = np.random.default_rng(7).standard_normal((1, SHAPE[1], *SIZE))
    grad = cuproi.deform_roi_pool_box_backward(g, x, rois, None, SIZE, 1.0, 2)

    def forward(r):
        return cuproi.deform_roi_pool(x, r, None, SIZE, 1.0, 2)

    np.testing.assert_allclose(
        grad, calculus.right_box_grad(forward, g, rois), rtol=1e-5, atol=1e-5
    )


def test_list_boxes_get_concatenated_rows():
    x, rois, g, _, _ = data(np.float64)
    order = np.argsort(rois[:, 0], kind="stable")
    ordered, g = rois[order], g[order]
    per_image = [ordered[ordered[:, 0] == i, 1:] for i in range(2)]
    np.testing.assert_array_equal(
        cuproi.roi_align_box_backward(g, x, per_image, SIZE, 0.7, 2, True),
        cuproi.roi_align_box_backward(g, x, ordered, SIZE, 0.7, 2, True),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_is_order_independent(dtype):
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    x, rois, g, offset, mask = data(dtype, k=30)
    order = np.random.default_rng(8).permutation(len(rois))
    p = [np.ascontiguousarray(a[order]) for a in (rois, g, offset, mask)]
    align = host.bind("roi_align_box_backward")
    a = align(g, x, rois, 0.7, -1, False, deterministic=True)
    b = align(p[1], x, p[0], 0.7, -1, False, deterministic=True)
    np.testing.assert_array_equal(a[order], b)
    np.testing.assert_allclose(a, align(g, x, rois, 0.7, -1, False), **tolerance(dtype, a))
    deform = host.bind("deform_roi_pool_box_backward")
    a = deform(g, x, rois, offset, 0.7, 2, 0.1, mask, deterministic=True)
    b = deform(p[1], x, p[0], p[2], 0.7, 2, 0.1, p[3], deterministic=True)
    np.testing.assert_array_equal(a[order], b)


def test_validation():
    x, rois, g, offset, mask = data(np.float64)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        cuproi.roi_align_box_backward(g[:, :2], x, rois, SIZE)
    with pytest.raises(IndexError, match="batch index 5"):
        bad = rois.copy()
        bad[0, 0] = 5
        cuproi.roi_align_box_backward(g, x, bad, SIZE)
    with pytest.raises(ValueError, match="pool_mode must be"):
        cuproi.roi_align_box_backward(g, x, rois, SIZE, pool_mode="min")
    with pytest.raises(ValueError, match="offset must have shape"):
        cuproi.deform_roi_pool_box_backward(g, x, rois, offset[:, :1], SIZE)
    with pytest.raises(ValueError, match="mask must have shape"):
        cuproi.deform_roi_pool_box_backward(g, x, rois, offset, SIZE, mask=mask[:3])
    with pytest.raises(TypeError, match="input must be float16"):
        cuproi.roi_align_box_backward(g, x.astype(np.int64), rois, SIZE)
