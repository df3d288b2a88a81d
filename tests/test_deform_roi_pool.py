"""Deformable RoI Pool (mmcv.ops.deform_roi_pool) and its modulated form (DCNv2, mmcv's
ModulatedDeformRoIPoolPack: ``mask=``) on every backend against the float64 loop oracles of
tests/oracles/deform_roi_pool.py: the shared checks of roi_op_tester and its box-gradient checks
without offsets, with offsets and with a mask, then what is particular to the offsets and the mask
(their gradients against the oracle and against finite differences, half precision, a mask of
ones, box gradients where samples sit on integers)."""

import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from hypothesis import strategies as st
from oracles import calculus
from oracles import deform_roi_pool as deform_oracle
from roi_op_tester import (
    SHAPE,
    BoxGradientChecks,
    RoIOpTester,
    assert_close,
    box_zoo,
    features,
    on_random_boxes,
    rois_for,
)

import cuproi
from cuproi._validate import compute_dtype

SIZE = (3, 4)
GAMMA = 0.1


class TestDeformRoIPool(BoxGradientChecks, RoIOpTester):
    """Without a mask: the forward, the gradients of the features and the offsets, and the box
    backward against the oracle."""

    size = SIZE
    forward_cases = [
        {"scale": scale, "ratio": ratio, "offset": offset}
        for scale in (1.0, 0.7)
        for ratio in (0, 1, 2)
        for offset in (False, True)
    ]
    backward_cases = [{"scale": 0.7, "ratio": ratio, "offset": True} for ratio in (0, 2)]
    adjoint_cases = backward_cases
    box_cases = [
        {"scale": 0.7, "ratio": ratio, "offset": offset}
        for ratio in (2, 0)
        for offset in (False, True)
    ]
    grids = {"test_grad_offset_matches_oracle": backward_cases}
    test_validation = None  # test_validation.py checks every argument of every function

    def extras(self, boxes, case, dtype):
        if not case["offset"]:
            return {"offset": None}
        offset = np.random.default_rng(1).normal(0, 2, (len(boxes), 2, *SIZE))
        return {"offset": offset.astype(compute_dtype(dtype))}

    def args(self, case):
        """The arguments after the offset: output size, scale, sampling ratio and gamma."""
        return SIZE, case["scale"], case["ratio"], GAMMA

    def forward(self, x, boxes, case, offset, mask=None, **options):
        return cuproi.deform_roi_pool(x, boxes, offset, *self.args(case), mask, **options)

    def backward(self, g, x, boxes, case, **extras):
        return self.backwards(g, x, boxes, case, **extras)[0]

    def backwards(self, g, x, boxes, case, offset, mask=None, **options):
        """The public backward's three gradients (features, offsets, mask; None where absent)."""
        args = (offset, *self.args(case), mask)
        return cuproi.deform_roi_pool_backward(g, x, boxes, *args, **options)

    def gradients(self, g, x, boxes, case, **extras):
        return tuple(a for a in self.backwards(g, x, boxes, case, **extras) if a is not None)

    def box_backward(self, g, x, boxes, case, offset, mask=None, **options):
        args = (offset, *self.args(case), mask)
        return cuproi.deform_roi_pool_box_backward(g, x, boxes, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype, offset, mask=None):
        out = deform_oracle.deform_roi_pool(
            x, boxes, offset, *self.args(case), coord_dtype=coord_dtype
        )
        return out if mask is None else out * mask  # DCNv2: the mask scales each bin

    def oracle_gradients(self, g, x, boxes, case, coord_dtype, offset, mask=None):
        """The oracle's gradients of the features and the offsets: with a mask, those of the
        unmodulated op for the gradient times the mask."""
        g = g if mask is None else g * mask
        return deform_oracle.deform_roi_pool_backward(
            g, x, boxes, offset, *self.args(case), coord_dtype=coord_dtype
        )

    def oracle_backward(self, g, x, boxes, case, coord_dtype, **extras):
        return self.oracle_gradients(g, x, boxes, case, coord_dtype, **extras)[0]

    def oracle_box_backward(self, g, x, boxes, case, coord_dtype, offset, mask=None):
        return deform_oracle.deform_roi_pool_box_grad(g, x, boxes, offset, *self.args(case), mask)

    def wide_inputs(self, on, dtype, case):
        """The float64 oracle's (g, x, boxes, extras) and the backend's (g, x, rois, extras)."""
        boxes, (x, _, extras), (xd, rois, extras_d) = self.inputs(on, dtype, case)
        g = self.gradient(dtype, len(boxes), case)
        wide = {k: None if v is None else v.astype(np.float64) for k, v in extras.items()}
        wide = (g.astype(np.float64), x.astype(np.float64), boxes, wide)
        return wide, (on.put(g), xd, rois, extras_d)

    def test_grad_offset_matches_oracle(self, on, dtype, case):
        """The offsets' gradient, with and without ``deterministic=True``, within 10 times the
        dtype's tolerance; None without offsets."""
        wide, (g, x, rois, extras) = self.wide_inputs(on, dtype, case)
        _, want = self.oracle_gradients(*wide[:3], case, compute_dtype(dtype).type, **wide[3])
        rtol, atol = TOLERANCE[np.dtype(dtype)]
        for deterministic in (False, True):
            grads = self.backwards(g, x, rois, case, **extras, deterministic=deterministic)
            got = on.get(grads[1])
            assert got.dtype == extras["offset"].dtype and got.shape == extras["offset"].shape
            np.testing.assert_allclose(got, want, rtol=10 * rtol, atol=10 * atol)
        assert self.backwards(g, x, rois, case, **{**extras, "offset": None})[1] is None

    @on_random_boxes(
        scale=st.sampled_from([1.0, 0.5, 0.25]), ratio=st.integers(0, 3), offset=st.booleans()
    )
    def test_backends_agree_on_random_boxes(self, boxes, case, dtype):
        """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
        self.assert_backends_agree(boxes, case, dtype)


class TestModulatedDeformRoIPool(TestDeformRoIPool):
    """With a mask (DCNv2): the forward, the three gradients and the box backward against the
    oracle, with and without offsets."""

    forward_cases = [
        {"scale": 0.7, "ratio": ratio, "offset": offset}
        for ratio in (2, 0)
        for offset in (True, False)
    ]
    backward_cases = forward_cases
    adjoint_cases = forward_cases[:1]
    box_cases = [{"scale": 0.7, "ratio": ratio, "offset": True} for ratio in (2, 0)]
    grids = {"test_grad_offset_matches_oracle": [c for c in forward_cases if c["offset"]]}
    # Hypothesis runs a test in one class only; test_hypothesis.py compares masked backends.
    test_backends_agree_on_random_boxes = None

    def extras(self, boxes, case, dtype):
        mask = np.random.default_rng(2).uniform(0, 1, (len(boxes), 1, *SIZE))
        return {**super().extras(boxes, case, dtype), "mask": mask.astype(compute_dtype(dtype))}

    def test_grad_mask_matches_oracle(self, on, dtype, case):
        """The mask's gradient, with and without ``deterministic=True``, in the mask's dtype: the
        sum over the channels of the output's gradient times the unmodulated op."""
        (g, x, boxes, extras), (gd, xd, rois, extras_d) = self.wide_inputs(on, dtype, case)
        args = (extras["offset"], *self.args(case))
        want = deform_oracle.deform_roi_pool_mask_grad(g, x, boxes, *args)
        rtol, atol = TOLERANCE[np.dtype(dtype)]
        for deterministic in (False, True):
            grads = self.backwards(gd, xd, rois, case, **extras_d, deterministic=deterministic)
            got = on.get(grads[2])
            assert got.dtype == extras_d["mask"].dtype and got.shape == extras["mask"].shape
            np.testing.assert_allclose(got, want, rtol=rtol, atol=10 * atol)


@pytest.mark.parametrize(
    "tester, case",
    [
        (TestDeformRoIPool(), {"scale": 0.5, "ratio": 0, "offset": False}),
        (TestModulatedDeformRoIPool(), TestModulatedDeformRoIPool.adjoint_cases[0]),
    ],
    ids=["plain", "offset-and-mask"],
)
def test_float16(on, tester, case):
    """float16 features, float32 boxes, offsets and mask, float32 accumulation: the forward and
    the mask's gradient (10 times the tolerance) against the oracle on the same halves."""
    x, rois, extras, g = tester.host_inputs(np.float16, case)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    assert all(v is None or v.dtype == np.float32 for v in extras.values())
    put = {k: on.put(v) for k, v in extras.items()}
    out = on.get(tester.forward(on.put(x), on.put(rois), case, **put))
    assert out.dtype == np.float16
    x64, g64, boxes = x.astype(np.float64), g.astype(np.float64), rois.astype(np.float64)
    assert_close(out, tester.oracle(x64, boxes, case, np.float32, **extras), np.float16)
    if "mask" in extras:
        grad_mask = on.get(tester.backwards(on.put(g), on.put(x), on.put(rois), case, **put)[2])
        args = (extras["offset"], *tester.args(case))
        want = deform_oracle.deform_roi_pool_mask_grad(g64, x64, boxes, *args)
        rtol, atol = TOLERANCE[np.dtype(np.float16)]
        np.testing.assert_allclose(grad_mask, want, rtol=10 * rtol, atol=10 * atol)


def test_mask_gradient_is_an_exact_finite_difference():
    """The output is linear in the mask: a central difference is exact up to rounding."""
    tester, case = TestModulatedDeformRoIPool(), TestModulatedDeformRoIPool.adjoint_cases[0]
    x, rois, extras, g = tester.host_inputs(np.float64, case)
    grad_mask = tester.backwards(g, x, rois, case, **extras)[2]
    mask, eps = extras.pop("mask"), 1e-3
    for k, ph, pw in [(0, 0, 0), (3, 1, 2), (11, 2, 3)]:
        plus, minus = mask.copy(), mask.copy()
        plus[k, 0, ph, pw] += eps
        minus[k, 0, ph, pw] -= eps
        f = [np.vdot(g, tester.forward(x, rois, case, mask=m, **extras)) for m in (plus, minus)]
        assert grad_mask[k, 0, ph, pw] == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-9)


def test_mask_of_ones_is_the_plain_op_and_none_keeps_the_tuple():
    tester, case = TestDeformRoIPool(), TestDeformRoIPool.adjoint_cases[0]
    x, rois, extras, g = tester.host_inputs(np.float64, case)
    ones = np.ones((len(rois), 1, *SIZE))
    np.testing.assert_array_equal(
        tester.forward(x, rois, case, mask=ones, **extras), tester.forward(x, rois, case, **extras)
    )
    plain = tester.backwards(g, x, rois, case, **extras)
    assert len(plain) == 3 and plain[2] is None
    masked = tester.backwards(g, x, rois, case, mask=ones, **extras)
    for a, b in zip(masked[:2], plain[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # A float32 mask with float64 features: the mask's gradient has the mask's dtype.
    single = tester.backwards(g, x, rois, case, mask=ones.astype(np.float32), **extras)
    assert single[2].dtype == np.float32


def test_integer_box_positions_take_the_right_derivative():
    """Every sample exactly on a cell: the box gradient is the derivative from the right, not 0
    as in DCN."""
    x = features(np.float64, seed=6, shape=(2, 3, 9, 11))
    rois = np.array([[0, 2.5, 1.5, 8.5, 5.5]])  # 2x3 bins, 2 samples a bin: all on integers
    g = np.random.default_rng(7).standard_normal((1, x.shape[1], 2, 3))
    grad = cuproi.deform_roi_pool_box_backward(g, x, rois, None, (2, 3), 1.0, 2)

    def forward(r):
        return cuproi.deform_roi_pool(x, r, None, (2, 3), 1.0, 2)

    right = calculus.right_box_grad(forward, g, rois)
    np.testing.assert_allclose(grad, right, rtol=1e-5, atol=1e-5)


def smooth_offsets(boxes, scale, ratio, gamma, seed, pooled=(3, 4), margin=1e-3):
    """Offsets for which no sample sits within `margin` of a kink of the bilinear surface (an
    integer position, or the -1 / size edges), so central differences are exact enough."""
    rng = np.random.default_rng(seed)
    _, _, h, w = SHAPE
    ph_, pw_ = pooled
    for _ in range(1000):
        offset = rng.normal(0, 1.5, (len(boxes), 2, ph_, pw_))
        ok = True
        for k, (_, x1, y1, x2, y2) in enumerate(boxes):
            sx, sy = x1 * scale - 0.5, y1 * scale - 0.5
            rw, rh = x2 * scale - 0.5 - sx, y2 * scale - 0.5 - sy
            gh = ratio if ratio > 0 else int(np.ceil(rh / ph_))
            gw = ratio if ratio > 0 else int(np.ceil(rw / pw_))
            for p in range(ph_):
                for q in range(pw_):
                    ys = (
                        sy
                        + gamma * rh * offset[k, 1, p, q]
                        + (p + (np.arange(gh) + 0.5) / gh) * rh / ph_
                    )
                    xs = (
                        sx
                        + gamma * rw * offset[k, 0, p, q]
                        + (q + (np.arange(gw) + 0.5) / gw) * rw / pw_
                    )
                    for v, size in ((ys, h), (xs, w)):
                        kinks = np.concatenate([np.round(v), [-1.0, size]])
                        if (np.abs(v[:, None] - kinks[None, :]).min(1) < margin).any():
                            ok = False
        if ok:
            return offset
    raise RuntimeError("no smooth offsets found")


@pytest.mark.parametrize("ratio", [0, 2])
def test_grad_offset_finite_differences(backend, ratio):
    """grad_offset is the derivative of the backend's own forward (float64, smooth points,
    including samples in the edge bands of boxes that straddle the map's border)."""
    boxes = box_zoo(1.0)[[0, 2, 3, 9, 10]]
    rois = rois_for(boxes, np.float64)
    rng = np.random.default_rng(9)
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((len(boxes), 3, 3, 4))
    offset = smooth_offsets(boxes, 1.0, ratio, 0.1, seed=10)
    _, grad_offset, _ = backend.deform_roi_pool_backward(g, x, rois, offset, 1.0, ratio, 0.1)
    eps = 1e-7
    numeric = np.zeros_like(offset)
    for i in np.ndindex(offset.shape):
        plus, minus = offset.copy(), offset.copy()
        plus[i] += eps
        minus[i] -= eps
        f = [
            np.vdot(g, backend.deform_roi_pool(x, rois, o, (3, 4), 1.0, ratio, 0.1))
            for o in (plus, minus)
        ]
        numeric[i] = (f[0] - f[1]) / (2 * eps)
    np.testing.assert_allclose(grad_offset, numeric, rtol=1e-5, atol=1e-7)
    assert np.abs(grad_offset).max() > 0.1  # the check is not vacuous


@pytest.mark.parametrize("shape, k", [((2, 3, 5, 6), 0), ((2, 0, 5, 6), 3)])
def test_empty_boxes_or_channels(backend, shape, k):
    x = np.ones(shape, np.float32)
    rois = rois_for(box_zoo(1.0)[:k], np.float32)
    offset = np.zeros((k, 2, 2, 3), np.float32)
    bins = (k, shape[1], 2, 3)
    g = np.ones(bins, np.float32)
    assert backend.deform_roi_pool(x, rois, offset, (2, 3), 1.0, 0, 0.1).shape == bins
    grad, grad_offset, _ = backend.deform_roi_pool_backward(g, x, rois, offset, 1.0, 0, 0.1)
    assert grad.shape == shape and not grad.any()
    assert grad_offset.shape == offset.shape and not grad_offset.any()


def test_backwards_that_read_the_features_take_a_gradient_of_another_dtype(monkeypatch):
    """The kernels read grad_output and the features as one type: a float32 gradient for
    float64 features is cast first, not misread (the public layer on the host-run kernels)."""
    x = features(np.float64)
    boxes = box_zoo(0.7)
    rng = np.random.default_rng(5)
    offset = rng.normal(0, 0.5, (len(boxes), 2, 3, 4))
    g = rng.standard_normal((len(boxes), SHAPE[1], 3, 4)).astype(np.float32)

    def calls():
        return [
            *cuproi.deform_roi_pool_backward(g, x, boxes, offset, (3, 4), 0.7, 2)[:2],
            cuproi.deform_roi_pool_box_backward(g, x, boxes, offset, (3, 4), 0.7, 2),
            cuproi.roi_align_box_backward(g, x, boxes, (3, 4), 0.7, 2, True),
            cuproi.roi_align_backward(
                g, boxes, x.shape, (3, 4), 0.7, 2, True, pool_mode="max", input=x
            ),
            cuproi.prroi_pool_box_backward(g, x, boxes, (3, 4), 0.7),
        ]

    expected = calls()  # the NumPy backend
    monkeypatch.setattr(cuproi, "_cpu", host_backend())
    for got, want in zip(calls(), expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
