"""Self-tests of the float64 loop oracles in tests/oracles.

These validate the oracles themselves (hand-computed literals, adjoint identities, finite
differences); they do not touch cuproi.
"""

import numpy as np
import pytest
from oracles import calculus, sampling
from oracles import deform_roi_pool as deform_oracle
from oracles import prroi_pool as prroi_oracle
from oracles import ps_roi_align as ps_align_oracle
from oracles import ps_roi_pool as ps_pool_oracle
from oracles import roi_align as align_oracle
from oracles import roi_align_rotated as rotated_oracle
from oracles import roi_pool as pool_oracle

# 4x4 "arange" map: A[y, x] = 4*y + x.  Bilinear interpolation of a linear
# function is exact, so inside [0, 3] x [0, 3] every sample value is 4*y + x;
# in the replicate bands the coordinate is clamped to 0 or 3 first.
A4 = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
# a box of Deformable RoI Pool's literals: aligned start 0, rw = rh = 2
D = [0, 0.5, 0.5, 2.5, 2.5]
# a bilinear surface that is not linear: 0, 1 on row 0 and 10, 30 on row 1
B2 = np.array([[0.0, 1.0], [10.0, 30.0]])


def _random_problem(rng, K, shape=(2, 2, 5, 6), spread=2.0):
    """Random features of ``shape`` and ``K`` random boxes on them, some flipped or tiny."""
    N, _, H, W = shape
    x = rng.standard_normal(shape)
    b = rng.integers(0, N, K)
    x1 = rng.uniform(-spread, W + spread - 1, K)
    y1 = rng.uniform(-spread, H + spread - 1, K)
    x2 = x1 + rng.uniform(-0.5, W * 0.8, K)
    y2 = y1 + rng.uniform(-0.5, H * 0.8, K)
    return x, np.stack([b, x1, y1, x2, y2], axis=1).astype(np.float64)


# ---- bilinear / bilinear_grad ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("img", "y", "x", "want"),
    [
        (A4[0, 0], 1.5, 2.25, 8.25),  # 4*1.5 + 2.25
        (A4[0, 0], 1.0, 2.0, 6.0),  # exact pixel
        (A4[0, 0], -0.5, 1.5, 1.5),  # y band -> y = 0
        (A4[0, 0], 3.5, 3.5, 15.0),  # both upper bands -> (3, 3)
        (A4[0, 0], -1.0, 2.0, 2.0),  # y = -1 is still in range
        (A4[0, 0], 4.0, 4.0, 15.0),  # y = H, x = W in range
        (A4[0, 0], 4.0001, 0.0, 0.0),  # beyond H -> 0
        (A4[0, 0], 0.0, -1.0001, 0.0),  # beyond -1 -> 0
        (A4[0, 0], float("nan"), 1.0, 0.0),  # NaN fails the range test
        # 0.75*0.5*0 + 0.75*0.5*1 + 0.25*0.5*10 + 0.25*0.5*30 = 0.375 + 5
        (B2, 0.25, 0.5, 5.375),
        (B2, 1.5, 0.5, 20.0),  # upper band (H-1 = 1): y -> 1, row 1 interpolated: 10 + 0.5*20
    ],
)
def test_bilinear_literals(img, y, x, want):
    np.testing.assert_allclose(sampling.bilinear(img, y, x), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("img", "y", "x", "want"),
    [
        (A4[0, 0], 1.5, 2.25, (4.0, 1.0)),
        # exact interior integer coordinates: right derivative, not zero
        (A4[0, 0], 1.5, 1.0, (4.0, 1.0)),
        (A4[0, 0], 1.0, 1.5, (4.0, 1.0)),
        (A4[0, 0], 0.0, 0.0, (4.0, 1.0)),
        # y bands: d/dy = 0 but d/dx is the edge row's slope (1), NOT zero
        (A4[0, 0], 3.5, 1.25, (0.0, 1.0)),
        (A4[0, 0], -0.5, 1.25, (0.0, 1.0)),
        (A4[0, 0], 3.0, 1.25, (0.0, 1.0)),  # y = H-1 flattened
        # x bands: d/dx = 0, d/dy is the edge column's slope (4)
        (A4[0, 0], 1.5, -0.5, (4.0, 0.0)),
        (A4[0, 0], 1.5, 3.5, (4.0, 0.0)),
        (A4[0, 0], 1.5, 3.0, (4.0, 0.0)),
        # out of range
        (A4[0, 0], -1.5, 1.0, (0.0, 0.0)),
        (A4[0, 0], 1.0, 4.5, (0.0, 0.0)),
        # dy = (1-lx)(v10-v00) + lx(v11-v01), dx = (1-ly)(v01-v00) + ly(v11-v10)
        (B2, 0.25, 0.5, (0.5 * 10 + 0.5 * 29, 0.75 + 5.0)),
        # upper y band: ly = 0 on row 1, dx = 30 - 10 (mmcv's unclamped formula gives 0 here)
        (B2, 1.5, 0.5, (0.0, 20.0)),
        (B2, -0.5, 0.5, (0.0, 1.0)),  # lower y band: row 0 slope
    ],
)
def test_bilinear_grad_literals(img, y, x, want):
    np.testing.assert_allclose(sampling.bilinear_grad(img, y, x), want, rtol=1e-14, atol=0)


def test_bilinear_grad_is_right_derivative():
    """bilinear_grad == one-sided forward difference everywhere except at the jumps y=H, x=W."""
    rng = np.random.default_rng(11)
    H, W = 5, 6
    img = rng.standard_normal((H, W))
    ys = [-1.0, -0.6, 0.0, 0.3, 1.0, 2.7, 3.0, 4.0, 4.5]
    xs = [-1.0, -0.2, 0.0, 1.0, 2.5, 4.999, 5.0, 5.5]
    h = 1e-7
    for y in ys:
        for x in xs:
            f0 = sampling.bilinear(img, y, x)
            fd_x = (sampling.bilinear(img, y, x + h) - f0) / h
            fd_y = (sampling.bilinear(img, y + h, x) - f0) / h
            dy, dx = sampling.bilinear_grad(img, y, x)
            assert dx == pytest.approx(fd_x, abs=1e-6), (y, x)
            assert dy == pytest.approx(fd_y, abs=1e-6), (y, x)


# ---- hand-computed forwards of RoI Align and Deformable RoI Pool on A4 ---------------------------


def _on_a4(op, box, size, offset=None, **kw):
    rois = np.array([box], dtype=np.float64)
    if op == "roi_align":
        return align_oracle.roi_align(A4, rois, size, **kw)[0, 0]
    offset = None if offset is None else np.reshape(offset, (1, 2, 1, 1))
    return deform_oracle.deform_roi_pool(A4, rois, offset, size, **kw)[0, 0]


@pytest.mark.parametrize(
    ("op", "box", "size", "kw", "want"),
    [
        # not aligned, sr=2: rw = rh = 2, samples at 0.5, 1.5 per axis -> 2.5, 3.5, 6.5, 7.5
        ("roi_align", [0, 0, 0, 2, 2], 1, dict(sampling_ratio=2), 5.0),
        # aligned: start -0.5, samples at 0.0 and 1.0 -> 0, 1, 4, 5
        ("roi_align", [0, 0, 0, 2, 2], 1, dict(sampling_ratio=2, aligned=True), 2.5),
        # sr=1: single sample at the bin centre (1, 1) (not aligned), (0.5, 0.5) aligned
        ("roi_align", [0, 0, 0, 2, 2], 1, dict(sampling_ratio=1), 5.0),
        ("roi_align", [0, 0, 0, 2, 2], 1, dict(sampling_ratio=1, aligned=True), 2.5),
        # spatial_scale 0.5 on a box (0,0)-(4,4) is the same box (0,0)-(2,2)
        ("roi_align", [0, 0, 0, 4, 4], 1, dict(spatial_scale=0.5, sampling_ratio=2), 5.0),
        # adaptive: rw = 3, rh = 2, bh = 2, bw = 1.5, gh = gw = 2, y samples 1, 2 -> mean 4y = 6;
        # pw=0: x = 0.875, 1.625 -> 1.25 ; pw=1: x = 2.375, 3.125 (band -> 3) -> 2.6875
        ("roi_align", [0, 0.5, 0.5, 3.5, 2.5], (1, 2), {}, [[7.25, 8.6875]]),
        # adaptive gh = gw = 2, samples pw*2 + {0.5, 1.5}: x means 1.0 and (2.5 + 3) / 2 = 2.75
        ("roi_align", [0, 0, 0, 4, 4], 2, {}, [[5.0, 6.75], [12.0, 13.75]]),
        # not aligned, tiny box: rw = rh = max(0.2, 1) = 1, sample at 1.5 -> 7.5
        ("roi_align", [0, 1, 1, 1.2, 1.2], 1, dict(sampling_ratio=1), 7.5),
        # aligned: no clamp, start 0.5, rw = 0.2, sample at 0.6 -> 4*0.6 + 0.6
        ("roi_align", [0, 1, 1, 1.2, 1.2], 1, dict(sampling_ratio=1, aligned=True), 3.0),
        # not aligned, flipped box (2,2)-(1,1): width forced to 1 starting at 2 -> sample 2.5
        ("roi_align", [0, 2, 2, 1, 1], 1, dict(sampling_ratio=1), 12.5),
        # aligned + adaptive, zero-size box: gh = gw = ceil(0) = 0 -> no samples -> 0
        ("roi_align", [0, 1, 1, 1, 1], 1, dict(aligned=True), 0.0),
        # aligned + adaptive, flipped box: gh = gw = ceil(-1) = -1 -> no samples -> 0
        ("roi_align", [0, 2, 2, 1, 1], 1, dict(aligned=True), 0.0),
        # aligned + sr=2, flipped: start 1.5, bw = -1, samples 1.25, 0.75 per axis -> mean 5*1.0
        ("roi_align", [0, 2, 2, 1, 1], 1, dict(sampling_ratio=2, aligned=True), 5.0),
        # x samples -3 (out of range -> 0) and -1 (clamped to 0), y samples 0.5, 1.5:
        # (2 + 6 + 0 + 0) over count 4 (NOT over the 2 in-range samples)
        ("roi_align", [0, -4, 0, 0, 2], 1, dict(sampling_ratio=2), 2.0),
        # beyond the bottom edge: y samples 3 (row 3) and 5 (out) -> (12.5 + 13.5 + 0 + 0) / 4
        ("roi_align", [0, 0, 2, 2, 6], 1, dict(sampling_ratio=2), 6.5),
        # no min size: the tiny box's sample is at 0.5 + 0.1 = 0.6 (aligned RoI Align's)
        ("deform", [0, 1.0, 1.0, 1.2, 1.2], 1, dict(sampling_ratio=1), 3.0),
        # aligned start 0, rw = rh = 2, sr=1 -> sample (1, 1)
        ("deform", D, 1, dict(sampling_ratio=1), 5.0),
        # offset x = 0.5: start shifts by 0.1*2*0.5 = 0.1 -> x = 1.1
        ("deform", D, 1, dict(sampling_ratio=1, offset=[0.5, 0]), 5.1),
        # plus offset y = -1: y start -0.2 -> y = 0.8 -> 4*0.8 + 1.1
        ("deform", D, 1, dict(sampling_ratio=1, offset=[0.5, -1]), 4.3),
        # gamma = 1, offset (1, -1): x start 2 -> x = 3; y start -2 -> y = -1 (in range, clamped)
        ("deform", D, 1, dict(sampling_ratio=1, gamma=1, offset=[1, -1]), 3),
        # gamma = 1, offset y = -1.1: y = -1.2 -> out of range -> 0
        ("deform", D, 1, dict(sampling_ratio=1, gamma=1, offset=[0, -1.1]), 0),
        # upper y band: aligned y 3.2..4.2, sample y = 3.7 clamped to 3, x = 1 -> 13
        ("deform", [0, 0.5, 3.7, 2.5, 4.7], 1, dict(sampling_ratio=1), 13.0),
    ],
)
def test_forward_literals(op, box, size, kw, want):
    np.testing.assert_allclose(_on_a4(op, box, size, **kw), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("box", "kw", "g", "want"),
    [
        # not aligned, sr=1: one sample at (1, 1) -> all weight on pixel (1, 1)
        ([0, 0, 0, 2, 2], dict(sampling_ratio=1), 3.0, [((1, 1), 3.0)]),
        # aligned, sr=1: sample (0.5, 0.5) -> 3/4 on each of the 4 pixels
        ([0, 0, 0, 2, 2], dict(sampling_ratio=1, aligned=True), 3.0, [(np.s_[:2, :2], 0.75)]),
        # the out-of-range samples scatter nothing, the in-range ones g/4 * weights: samples
        # (0.5, -1 -> 0) and (1.5, -1 -> 0) reach rows 0/1 and 1/2 of column 0, halves each
        (
            [0, -4, 0, 0, 2],
            dict(sampling_ratio=2),
            1.0,
            [((0, 0), 0.125), ((1, 0), 0.25), ((2, 0), 0.125)],
        ),
    ],
)
def test_roi_align_backward_literals(box, kw, g, want):
    rois = np.array([box], dtype=np.float64)
    gi = align_oracle.roi_align_backward(np.full((1, 1, 1, 1), g), rois, (1, 1, 4, 4), 1, **kw)
    expected = np.zeros((4, 4))
    for at, v in want:
        expected[at] = v
    np.testing.assert_array_equal(gi[0, 0], expected)


@pytest.mark.parametrize(
    ("box", "sr", "g", "want"),
    [
        # a sample at the integer point (1, 1): right derivatives dx = A[1,2]-A[1,1] = 1, dy = 4;
        # grad_offset = g * gamma*rw/count * (dx, dy) = 0.2 * (1, 4)
        (D, 1, 1.0, [0.2, 0.8]),
        # upper y band (y = 3.7 clamped to 3): dx = edge row slope 1 -> 2 * 0.1*2*1 ; dy = 0
        ([0, 0.5, 3.7, 2.5, 4.7], 1, 2.0, [0.4, 0.0]),
        # 2 samples per axis, all interior, count 4: 0.2/4 * (4 * 1, 4 * 4)
        (D, 2, 1.0, [0.2, 0.8]),
    ],
)
def test_deform_grad_offset_literals(box, sr, g, want):
    _, go = deform_oracle.deform_roi_pool_backward(
        np.full((1, 1, 1, 1), g), A4, np.array([box]), np.zeros((1, 2, 1, 1)), 1, sampling_ratio=sr
    )
    np.testing.assert_allclose(go[0, :, 0, 0], want, rtol=1e-14, atol=0)


def test_roi_align_batch_index_and_channels():
    x = np.zeros((2, 2, 4, 4))
    x[0, 0] = A4[0, 0]
    x[0, 1] = 2 * A4[0, 0]
    x[1, 0] = 100 + A4[0, 0]
    x[1, 1] = -A4[0, 0]
    rois = np.array([[1, 0, 0, 2, 2], [0, 0, 0, 2, 2], [1.0, 0, 0, 2, 2]])
    out = align_oracle.roi_align(x, rois, 1, sampling_ratio=2)
    np.testing.assert_allclose(out[:, :, 0, 0], [[105, -5], [5, 10], [105, -5]], rtol=1e-14)
    assert out.dtype == np.float64 and out.shape == (3, 2, 1, 1)


# ---- coordinate dtype ------------------------------------------------------------------------


def test_roi_align_coord_dtype_float32():
    # Coordinates evaluated in float32 with the documented operation order.
    x = np.tile(np.arange(8, dtype=np.float64), (8, 1))[None, None]  # value = column index
    rois = np.array([[0, 0.1, 0.3, 2.1, 2.2]])
    f = np.float32
    sx = f(0.1) * f(1.0) - f(0.0)
    ex = f(2.1) * f(1.0) - f(0.0)
    rw = ex - sx  # 2.0 in float32 arithmetic
    bw = rw / f(1)
    xs = (sx + f(0) * bw) + ((f(0) + f(0.5)) * bw) / f(1)
    out32 = align_oracle.roi_align(x, rois, 1, sampling_ratio=1, coord_dtype=np.float32)
    out64 = align_oracle.roi_align(x, rois, 1, sampling_ratio=1)
    assert out32[0, 0, 0, 0] == pytest.approx(float(xs), rel=0, abs=1e-14)
    assert out64[0, 0, 0, 0] == pytest.approx(0.1 + 1.0, rel=0, abs=1e-14)
    assert out32[0, 0, 0, 0] != out64[0, 0, 0, 0]
    # dyadic boxes: every operation is exact in float32 too -> identical results
    rng = np.random.default_rng(5)
    xr = rng.standard_normal((1, 2, 6, 7))
    rois = np.array([[0, 0.5, 0.25, 4.75, 3.5], [0, -1.5, 2.0, 3.0, 6.5]])
    for aligned in (False, True):
        a = align_oracle.roi_align(
            xr, rois, 2, sampling_ratio=2, aligned=aligned, coord_dtype=np.float32
        )
        b = align_oracle.roi_align(xr, rois, 2, sampling_ratio=2, aligned=aligned)
        np.testing.assert_array_equal(a, b)


def test_coord_dtype_float32_operation_order():
    """Sample x positions follow (sx + pw*bw) + ((ix + 0.5)*bw)/gw rounded step by step in
    float32, and the deform shift is sx + ((gamma*rw)*off), not e.g. (ix+0.5)*(bw/gw)."""
    f = np.float32
    H, W = 3, 12
    colmap = np.tile(np.arange(W, dtype=np.float64), (H, 1))[None, None]  # value = column
    rng = np.random.default_rng(3)
    n_alt = 0
    n_alt_def = 0
    for _ in range(40):
        x1 = rng.uniform(1.0, 3.0)  # every sample stays inside [0, W-1]
        w = rng.uniform(0.5, 4.0)
        off_x = rng.uniform(-1.0, 1.0)
        rois = np.array([[0, x1, 0.7, x1 + w, 1.3]])
        offset = np.zeros((1, 2, 1, 2))
        offset[0, 0] = off_x
        # roi_align aligned, output (1, 2), sampling_ratio 3: mean of the 3 x positions
        sx = f(x1) * f(1.0) - f(0.5)
        ex = f(x1 + w) * f(1.0) - f(0.5)
        rw = ex - sx
        bw = rw / f(2)
        sxd = sx + (f(0.1) * rw) * f(off_x)
        exp_a, exp_d = [], []
        for pw in range(2):
            xa = [(sx + f(pw) * bw) + ((f(ix) + f(0.5)) * bw) / f(3) for ix in range(3)]
            xb = [(sx + f(pw) * bw) + (f(ix) + f(0.5)) * (bw / f(3)) for ix in range(3)]
            xd = [(sxd + f(pw) * bw) + ((f(ix) + f(0.5)) * bw) / f(3) for ix in range(3)]
            n_alt += sum(a != b for a, b in zip(xa, xb, strict=False))
            exp_a.append(np.mean([float(v) for v in xa]))
            exp_d.append(np.mean([float(v) for v in xd]))
        sxd_alt = sx + f(0.1) * (rw * f(off_x))
        n_alt_def += sxd_alt != sxd
        out = align_oracle.roi_align(colmap, rois, (1, 2), 1.0, 3, True, coord_dtype=np.float32)
        np.testing.assert_allclose(out[0, 0, 0], exp_a, rtol=0, atol=1e-13)
        out = deform_oracle.deform_roi_pool(
            colmap, rois, offset, (1, 2), 1.0, 3, 0.1, coord_dtype=np.float32
        )
        np.testing.assert_allclose(out[0, 0, 0], exp_d, rtol=0, atol=1e-13)
    assert n_alt > 0 and n_alt_def > 0  # the checks above discriminate the operation order


# ---- adjoint identities of the ops linear in their features ----------------------------------


def _adjoint_case(name, rng):
    """(forward(x) and backward(g) of one linear oracle, its features) on random boxes."""
    x, rois = _random_problem(rng, 5, (2, 12 if name.startswith("ps_") else 2, 5, 6))  # C_out 2
    rois[:, 1:] *= 2.0  # with spatial_scale 0.5
    if name == "roi_align_rotated":  # [b, cx, cy, w, h, angle]
        rois[:, 3:] = np.abs(rois[:, 3:] - rois[:, 1:3])
        rois = np.c_[rois, rng.uniform(-180, 180, len(rois))]
    return x, rois


@pytest.mark.parametrize("coord_dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("module", "name", "args"),
    [(align_oracle, "roi_align", (r, a)) for r in (-1, 0, 1, 2, 3) for a in (False, True)]
    + [
        (ps_align_oracle, "ps_roi_align", (-1,)),
        (ps_align_oracle, "ps_roi_align", (2,)),
        (ps_pool_oracle, "ps_roi_pool", ()),
        (prroi_oracle, "prroi_pool", ()),
        (rotated_oracle, "roi_align_rotated", (0, True, False)),
        (rotated_oracle, "roi_align_rotated", (2, False, True)),
    ],
)
def test_adjoint(module, name, args, coord_dtype):
    """<g, A x> == <A^T g, x> for the forward and backward oracles of every linear op."""
    rng = np.random.default_rng(100 + sum(map(int, args)) + 10 * len(name))
    x, rois = _adjoint_case(name, rng)
    y = getattr(module, name)(x, rois, (2, 3), 0.5, *args, coord_dtype=coord_dtype)
    g = rng.standard_normal(y.shape)
    backward = getattr(module, name + "_backward")
    gx = backward(g, rois, x.shape, (2, 3), 0.5, *args, coord_dtype=coord_dtype)
    lhs = np.sum(y * g)
    assert lhs == pytest.approx(np.sum(x * gx), rel=1e-12, abs=1e-12)
    assert abs(lhs) > 1e-3  # non-trivial


def test_deform_backward_grad_input_adjoint():
    rng = np.random.default_rng(41)
    x, rois = _random_problem(rng, 5)
    for sr in (0, 2):
        off = rng.uniform(-0.5, 0.5, (5, 2, 2, 3))
        y = deform_oracle.deform_roi_pool(x, rois, off, (2, 3), 1.0, sr, 0.15)
        g = rng.standard_normal(y.shape)
        gx, go = deform_oracle.deform_roi_pool_backward(g, x, rois, off, (2, 3), 1.0, sr, 0.15)
        assert go.shape == off.shape
        assert np.sum(y * g) == pytest.approx(np.sum(x * gx), rel=1e-12, abs=1e-12)
        # with offset None: grad_offset is None and grad_input is roi_align's (aligned)
        gx0, go0 = deform_oracle.deform_roi_pool_backward(g, x, rois, None, (2, 3), 1.0, sr, 0.15)
        assert go0 is None
        np.testing.assert_allclose(
            gx0,
            align_oracle.roi_align_backward(g, rois, x.shape, (2, 3), 1.0, sr, True),
            rtol=1e-13,
            atol=1e-13,
        )


# ---- roi_pool --------------------------------------------------------------------------------

M = np.array([[1, 5, 2, 0], [3, 4, 9, 9], [7, 0, 6, 8], [2, 8, 1, 3]], dtype=np.float64)
ONES = np.ones((4, 4))
NAN_ROW = [np.nan, 7.0, 2.0]


@pytest.mark.parametrize(
    ("x", "box", "size", "kw", "want", "want_argmax"),
    [
        # rw = rh = 3 - 0 + 1 = 4, 2x2 bins of size 2 -> the four quadrants; argmax: 5 at (0,1);
        # the 9s at (1,2) and (1,3) tie -> the first one, 6; 8 at (3,1) -> 13; 8 at (2,3) -> 11
        (M, [0, 0, 0, 3, 3], 2, {}, [[5, 9], [8, 8]], [[1, 6], [13, 11]]),
        # spatial_scale 0.5 on (0,0)-(6,6) is the same integer box
        (M, [0, 0, 0, 6, 6], 2, dict(spatial_scale=0.5), [[5, 9], [8, 8]], [[1, 6], [13, 11]]),
        # 0.5 rounds to 1 (C round), 1.49 to 1 -> the single pixel (1,1)
        # (numpy's banker's rounding would give 0 and pick max(M[0:2,0:2]) = 5)
        (M, [0, 0.5, 0.5, 1.49, 1.49], 1, {}, 4, 5),
        (M, [0, 2.5, 2.5, 3, 3], 1, {}, 3, 15),  # 2.5 -> 3: the single pixel (3, 3)
        # 0.5 - 2**-30 rounds to 0 in float64 (M[0:2, 0:2]) but is 0.5 in float32, rounded to 1
        (M, [0, 0.5 - 2.0**-30, 0.5 - 2.0**-30, 1, 1], 1, {}, 5, 1),
        (M, [0, 0.5 - 2.0**-30, 0.5 - 2.0**-30, 1, 1], 1, dict(coord_dtype=np.float32), 4, 5),
        # fully outside: hstart = hend = H after clamping -> empty: 0 and argmax -1
        (M, [0, 10, 10, 12, 12], 2, {}, 0, -1),
        # rw = 6, bin_w = 3: pw=0 [-4, -1) clamps to the empty [0, 0); pw=1 [-1, 2) -> [0, 2),
        # rows [0, 4): max of M[:, 0:2] = 8 at (3, 1)
        (M, [0, -4, 0, 1, 3], (1, 2), {}, [[0, 8]], [[-1, 13]]),
        (ONES, [0, 1, 1, 3, 3], 1, {}, 1, 1 * 4 + 1),  # ties: the first element of the bin
        (ONES, [0, 1, 1, 3, 3], 3, {}, 1, [[5, 6, 7], [9, 10, 11], [13, 14, 15]]),
        # overlapping bins: rw = 3, bin_w = 1.5: [0, 2) and [1, 3) both see the 5 at (0, 1)
        (M, [0, 0, 0, 2, 0], (1, 2), {}, [[5, 5]], [[1, 1]]),
        (np.full((2, 3), -np.inf), [0, 0, 0, 2, 1], 1, {}, -np.inf, 0),
        ([[1.0, np.nan, 5.0], NAN_ROW], [0, 0, 0, 2, 1], 1, {}, np.nan, 1),  # the first NaN, kept
        ([[np.nan, 9.0, 5.0], NAN_ROW], [0, 0, 0, 2, 1], 1, {}, np.nan, 0),
        ([[-np.inf, -np.inf, -3.0], NAN_ROW], [0, 0, 0, 2, 0], 1, {}, -3.0, 2),  # row 0 only
    ],
)
def test_roi_pool_literals(x, box, size, kw, want, want_argmax):
    x = np.reshape(x, (1, 1, *np.shape(x)))
    out, am = pool_oracle.roi_pool(x, np.array([box], dtype=np.float64), size, **kw)
    assert out.dtype == np.float64 and am.dtype == np.int64
    np.testing.assert_array_equal(out[0, 0], want)
    np.testing.assert_array_equal(am[0, 0], want_argmax)


def test_c_round_half_away_from_zero():
    values = (0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994)
    assert [sampling.c_round(v) for v in values] == [1, 2, 3, -1, -2, -3, 0]


def test_roi_pool_backward_literal_overlap():
    # both bins of the overlapping box above chose (0, 1): their gradients add up there
    gi = pool_oracle.roi_pool_backward(
        np.array([[[[2.0, 3.0]]]]), np.array([[0, 0, 0, 2, 0.0]]), [[[[1, 1]]]], (1, 1, 4, 4)
    )
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 0, 1] = 5.0
    np.testing.assert_array_equal(gi, expected)


def test_roi_pool_backward_matches_argmax_definition():
    rng = np.random.default_rng(7)
    x, rois = _random_problem(rng, 6, (2, 3, 6, 7))
    out, am = pool_oracle.roi_pool(x, rois, (2, 3))
    g = rng.standard_normal(out.shape)
    gi = pool_oracle.roi_pool_backward(g, rois, am, x.shape)
    expected = np.zeros(x.shape)
    for k, c, ph, pw in np.ndindex(am.shape):
        b, a = int(rois[k, 0]), am[k, c, ph, pw]
        if a < 0:  # an empty bin: argmax -1 and out 0
            assert a == -1 and out[k, c, ph, pw] == 0.0
        else:  # argmax points at the max value
            assert x[b, c].flat[a] == out[k, c, ph, pw]
            expected[b, c].reshape(-1)[a] += g[k, c, ph, pw]
    assert (am >= 0).any() and (am == -1).any()
    np.testing.assert_allclose(gi, expected, rtol=1e-15, atol=0)
    # directional finite difference (distinct random values -> argmax locally constant)
    d = rng.standard_normal(x.shape)
    eps = 1e-7
    fp = np.sum(g * pool_oracle.roi_pool(x + eps * d, rois, (2, 3))[0])
    fm = np.sum(g * pool_oracle.roi_pool(x - eps * d, rois, (2, 3))[0])
    assert (fp - fm) / (2 * eps) == pytest.approx(np.sum(gi * d), rel=1e-6)


# ---- deform_roi_pool -------------------------------------------------------------------------


def test_deform_none_equals_roi_align_aligned():
    rng = np.random.default_rng(21)
    x, rois = _random_problem(rng, 6)
    rois[:, 1:] *= 2.0
    for sr in (0, 1, 2):
        d = deform_oracle.deform_roi_pool(x, rois, None, (2, 3), 0.5, sr)
        a = align_oracle.roi_align(x, rois, (2, 3), 0.5, sr, aligned=True)
        np.testing.assert_array_equal(d, a)
        d0 = deform_oracle.deform_roi_pool(x, rois, np.zeros((6, 2, 2, 3)), (2, 3), 0.5, sr)
        np.testing.assert_array_equal(d0, d)
    # boxes of size >= 1: also equal under sampling_ratio=-1 style adaptive grids
    big = np.array([[0, 0.3, 0.2, 4.1, 3.9], [1, 1.0, 1.5, 5.5, 4.0]])
    np.testing.assert_array_equal(
        deform_oracle.deform_roi_pool(x, big, None, 2),
        align_oracle.roi_align(x, big, 2, sampling_ratio=-1, aligned=True),
    )
    # no min size: a tiny box matches aligned=True (unclamped) exactly, and its value is the
    # sample at 0.5 + 0.1 = 0.6, not the clamped aligned=False sample at 1.5
    tiny = np.array([[0, 1.0, 1.0, 1.2, 1.2]])
    d = deform_oracle.deform_roi_pool(x, tiny, None, 1, sampling_ratio=1)[0, 0, 0, 0]
    assert d == align_oracle.roi_align(x, tiny, 1, sampling_ratio=1, aligned=True)[0, 0, 0, 0]
    assert d == pytest.approx(sampling.bilinear(x[0, 0], 0.6, 0.6), rel=1e-12)


def test_deform_offset_equals_shifted_box():
    """Per-bin shift by gamma*rw*off equals roi_align(aligned) on the shifted box (1x1 output)."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((1, 3, 6, 7))
    for _ in range(5):
        x1, y1 = rng.uniform(-1, 4, 2)
        w, h = rng.uniform(1, 4, 2)
        ox, oy = rng.uniform(-1, 1, 2)
        rois = np.array([[0, x1, y1, x1 + w, y1 + h]])
        off = np.array([[[[ox]], [[oy]]]])
        d = deform_oracle.deform_roi_pool(x, rois, off, 1, sampling_ratio=2, gamma=0.2)
        shift = [0, 0.2 * w * ox, 0.2 * h * oy, 0.2 * w * ox, 0.2 * h * oy]
        a = align_oracle.roi_align(x, rois + shift, 1, sampling_ratio=2, aligned=True)
        np.testing.assert_allclose(d, a, rtol=1e-12, atol=1e-12)


def test_deform_grad_offset_finite_differences():
    rng = np.random.default_rng(2024)
    N, C, H, W = 2, 2, 5, 6
    x = rng.standard_normal((N, C, H, W))
    # boxes chosen so that samples fall outside the map, in all four replicate bands
    # (-1 < y < 0, H-1 < y < H, -1 < x < 0, W-1 < x < W) and in the interior
    rois = np.array(
        [
            [0, -1.3, -1.1, 7.2, 6.3],  # whole map plus margin
            [1, 4.6, 4.2, 6.1, 5.4],  # bottom-right corner
            [1, 1.3, 0.7, 4.1, 3.9],  # interior
            [0, 2.2, -0.4, 3.3, 0.6],  # straddles the top edge
            [1, -0.2, 1.1, 0.9, 4.4],  # straddles the left edge
        ]
    )
    K = rois.shape[0]
    PH, PW = 3, 3
    gamma = 0.1
    for sr in (0, 2):
        for _ in range(500):
            off = rng.uniform(-0.4, 0.4, (K, 2, PH, PW))
            bins = sampling.align_points(
                rois, (PH, PW), 1.0, sr, True, False, np.float64, off, gamma
            )
            pts = np.array([p for *_, points, _ in bins for p in points])
            if np.abs(pts - np.round(pts)).min() > 1e-3:  # away from the kinks at integers
                break
        else:
            pytest.fail("could not draw smooth offsets")
        y, xx = pts[:, 0], pts[:, 1]
        yint = (y > 0) & (y < H - 1)
        xint = (xx > 0) & (xx < W - 1)
        assert np.any((y > -1) & (y < 0) & xint)  # lower y band, x interior
        assert np.any((y > H - 1) & (y < H) & xint)  # upper y band
        assert np.any((xx > -1) & (xx < 0) & yint)  # lower x band
        assert np.any((xx > W - 1) & (xx < W) & yint)  # upper x band
        assert np.any((y < -1) | (y > H) | (xx < -1) | (xx > W))  # out of range
        assert np.any(yint & xint)

        g = rng.standard_normal((K, C, PH, PW))
        _, go = deform_oracle.deform_roi_pool_backward(g, x, rois, off, (PH, PW), 1.0, sr, gamma)

        def loss(o, g=g, sr=sr):
            return np.sum(g * deform_oracle.deform_roi_pool(x, rois, o, (PH, PW), 1.0, sr, gamma))

        eps = 1e-6
        fd = np.zeros_like(off)
        for idx in np.ndindex(off.shape):
            step = np.zeros_like(off)
            step[idx] = eps
            fd[idx] = (loss(off + step) - loss(off - step)) / (2 * eps)
        np.testing.assert_allclose(go, fd, rtol=1e-6, atol=1e-8)
        assert np.count_nonzero(np.abs(go) > 1e-6) > K * PH * PW  # non-trivial


def test_prroi_box_gradient_leibniz_rule_against_differences():
    """The PrRoI oracle's analytic box gradient equals central differences of its forward.

    Boxes inside the map, over its edges and partly off it (where the surface falls to 0 over
    the last cell), at two scales; the two computations share only the forward's cells.
    """
    rng = np.random.default_rng(77)
    x = rng.standard_normal((2, 3, 6, 7))
    rois = np.array(
        [
            [0, 1.3, 0.7, 4.6, 3.9],  # inside
            [1, -2.4, -1.7, 3.2, 2.6],  # over the top-left corner, partly off the map
            [0, 4.1, 3.3, 8.9, 7.4],  # over the bottom-right corner
            [1, 0.2, 2.2, 6.6, 2.9],  # wide and flat
        ]
    )
    for scale, size in ((1.0, (2, 3)), (0.7, (3, 2))):
        g = rng.standard_normal((len(rois), 3, *size))
        want = prroi_oracle.prroi_pool_box_backward(g, x, rois, size, scale)

        def forward(boxes, scale=scale, size=size):
            return prroi_oracle.prroi_pool(x, boxes, size, scale)

        differences = calculus.numeric_box_grad(forward, g, rois)
        np.testing.assert_allclose(want, differences, rtol=1e-7, atol=1e-7)
        assert (want[:, 0] == 0).all() and np.count_nonzero(np.abs(want[:, 1:]) > 1e-3) == 16
