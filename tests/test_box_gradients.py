"""Gradients with respect to the box coordinates of deform_roi_pool_box_backward (offsets,
mask), on both backends, against the analytic float64 oracle of tests/oracles/deform_roi_pool.py
and against finite differences of the float64 forward: central differences at smooth points,
right differences where samples sit exactly on integer positions (where DCN's box gradients
vanish). RoI Align's box gradient: test_roi_align.py."""

import host
import numpy as np
import pytest
from oracles import calculus
from oracles import deform_roi_pool as deform_oracle
from roi_op_tester import BOX_SIZE, box_gradient_inputs, box_tolerance

import cuproi
from cuproi import _cpu


@pytest.fixture(params=["cpu", "host-kernels"])
def ops(request):
    if request.param == "cpu":
        return _cpu
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    names = ("deform_roi_pool_box_backward",)
    return type("HostOps", (), {n: staticmethod(host.bind(n)) for n in names})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, 0])
@pytest.mark.parametrize("extras", ["none", "offset", "offset+mask"])
def test_deform_matches_oracle(ops, dtype, ratio, extras):
    x, rois, g, offset, mask = box_gradient_inputs(dtype)
    offset = None if extras == "none" else offset
    mask = mask if extras == "offset+mask" else None
    got = ops.deform_roi_pool_box_backward(g, x, rois, offset, 0.7, ratio, 0.1, mask)
    want = deform_oracle.deform_roi_pool_box_grad(
        g, x, rois, offset, BOX_SIZE, 0.7, ratio, 0.1, mask
    )
    np.testing.assert_allclose(got, want, **box_tolerance(dtype, want))


@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_central_differences(with_mask):
    x, rois, g, offset, mask = box_gradient_inputs(np.float64, seed=3)
    mask = mask if with_mask else None
    grad = cuproi.deform_roi_pool_box_backward(g, x, rois, offset, BOX_SIZE, 0.7, 2, 0.1, mask)

    def forward(r):
        return cuproi.deform_roi_pool(x, r, offset, BOX_SIZE, 0.7, 2, 0.1, mask)

    np.testing.assert_allclose(
        grad, calculus.numeric_box_grad(forward, g, rois), rtol=1e-5, atol=1e-6
    )


def test_integer_positions_deform():
    x, _, _, _, _ = box_gradient_inputs(np.float64, seed=6)
    rois = np.array([[0, 2.5, 1.5, 8.5, 5.5]])
    g = np.random.default_rng(7).standard_normal((1, x.shape[1], *BOX_SIZE))
    grad = cuproi.deform_roi_pool_box_backward(g, x, rois, None, BOX_SIZE, 1.0, 2)

    def forward(r):
        return cuproi.deform_roi_pool(x, r, None, BOX_SIZE, 1.0, 2)

    np.testing.assert_allclose(
        grad, calculus.right_box_grad(forward, g, rois), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_is_order_independent(dtype):
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    x, rois, g, offset, mask = box_gradient_inputs(dtype, k=30)
    order = np.random.default_rng(8).permutation(len(rois))
    p = [np.ascontiguousarray(a[order]) for a in (rois, g, offset, mask)]
    deform = host.bind("deform_roi_pool_box_backward")
    a = deform(g, x, rois, offset, 0.7, 2, 0.1, mask, deterministic=True)
    b = deform(p[1], x, p[0], p[2], 0.7, 2, 0.1, p[3], deterministic=True)
    np.testing.assert_array_equal(a[order], b)


def test_validation():
    x, rois, g, offset, mask = box_gradient_inputs(np.float64)
    with pytest.raises(ValueError, match="offset must have shape"):
        cuproi.deform_roi_pool_box_backward(g, x, rois, offset[:, :1], BOX_SIZE)
    with pytest.raises(ValueError, match="mask must have shape"):
        cuproi.deform_roi_pool_box_backward(g, x, rois, offset, BOX_SIZE, mask=mask[:3])
