"""Property tests (hypothesis) of RoI Align, RoI Pool and Deformable RoI Pooling on random
shapes, scales and a zoo of boxes: inside, partly and wholly outside the map, degenerate,
flipped, tiny and huge (up to ~1e5 times the map, within ``_validate.MAX_COORDINATE``).

Outputs are finite, typed and shaped; the CPU backend equals the float64 loop oracles of
``tests/oracles`` relative to the magnitude of the inputs each entry is made of (see
``assert_close``), roi_pool's argmax exactly (ties: the first maximum in scan order); the
backwards are the adjoints of the forwards; and the CUDA kernels run on the host equal the
CPU backend, with RoI Align's max mode, masks and the box gradients.

The oracles visit every sample, and adaptive sampling on a huge box means millions: above
``ORACLE_BUDGET`` samples an oracle comparison uses a fixed sampling_ratio, and adaptive
sampling on huge boxes is checked for finiteness and CPU-vs-kernel agreement only.
"""

import itertools
import math
from dataclasses import dataclass

import host
import numpy as np
import pytest
from conftest import examples
from hypothesis import example, given
from hypothesis import strategies as st
from oracles import deform_roi_pool as deform_oracle
from oracles import roi_align as align_oracle
from oracles import roi_pool as pool_oracle

import cuproi
from cuproi import _cpu, _validate

MAX = _validate.MAX_COORDINATE
HUGE = 1e5  # huge boxes reach up to this many times the map size
SCALES = (1.0, 0.5, 0.25, 1 / 16, 0.7, 1.3, 2.0, 1 / 3)
RATIOS = (-1, 0, 1, 2, 3)
GAMMAS = (0.1, 0.0, 1.0, -0.3, 0.05, 2.5)
KINDS = ("inside", "partial", "outside", "degenerate", "flipped", "tiny")
# Above this many oracle samples (boxes x channels x bins x samples per bin), compare with a
# fixed sampling_ratio: the oracle costs ~2 us per sample.
ORACLE_BUDGET = 20_000
FIXED_RATIO = 2

needs_compiler = pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler (g++)")


# ---- strategies --------------------------------------------------------------------------------


def coordinate(lo, hi):
    """A float in [lo, hi], often a whole or half number (samples on the kinks of the grid)."""
    whole = st.integers(math.ceil(lo), math.floor(hi)).map(float)
    halves = st.integers(math.ceil(lo * 2), math.floor(hi * 2)).map(lambda v: v / 2)
    floats = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return (
        st.one_of(floats, halves, whole)
        if math.ceil(lo) <= math.floor(hi)
        else st.one_of(floats, halves)
    )


@st.composite
def axis(draw, kind, size):
    """(start, end) of a box along an axis of ``size`` cells, in feature cells."""
    s = float(size)
    if kind == "inside":
        return tuple(sorted((draw(coordinate(0, s)), draw(coordinate(0, s)))))
    if kind == "partial":
        return draw(coordinate(-s - 2, s / 2)), draw(coordinate(s / 2, 2 * s + 2))
    if kind == "outside":
        length = draw(coordinate(0, s))
        if draw(st.booleans()):
            a = draw(coordinate(s + 1.5, 3 * s + 5))
            return a, a + length
        b = draw(coordinate(-3 * s - 5, -1.5))
        return b - length, b
    if kind == "degenerate":
        a = draw(coordinate(-1.5, s + 1.5))
        return a, a
    if kind == "flipped":
        a = draw(coordinate(-1, s + 1))
        return a, a - draw(coordinate(0.01, s))
    if kind == "tiny":
        a = draw(coordinate(-1, s + 1))
        return a, a + draw(st.sampled_from([1e-6, 1e-3, 0.05, 0.3]))
    if kind == "huge":
        reach = st.floats(s, min(HUGE * s, 0.99 * MAX - s), allow_nan=False)
        shape = draw(st.sampled_from(["across", "across", "from inside", "to inside"]))
        a = draw(coordinate(0, s)) if shape == "from inside" else -draw(reach)
        b = draw(coordinate(0, s)) if shape == "to inside" else s + draw(reach)
        if draw(st.sampled_from([False, False, False, True])):  # also flipped huge boxes
            a, b = b, a
        return a, b
    raise AssertionError(kind)


@dataclass
class Problem:
    x: np.ndarray  # (N, C, H, W) float64, distinct values
    rois: np.ndarray  # (K, 5) float64 [b, x1, y1, x2, y2] in image coordinates
    pooled: tuple
    scale: float
    ratio: int
    aligned: bool
    gamma: float
    offset: np.ndarray | None  # (K, 2, PH, PW) float64
    grad: np.ndarray  # (K, C, PH, PW) float64
    huge: bool

    def cast(self, dtype):
        """x, rois, offset, grad as cuproi reads them for ``dtype`` features."""
        ct = coord_dtype(dtype)
        offset = None if self.offset is None else self.offset.astype(ct)
        return self.x.astype(dtype), self.rois.astype(ct), offset, self.grad.astype(dtype)


@st.composite
def problems(draw, huge=False, only_huge=False, ratios=RATIOS, max_boxes=4):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pooled = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(1, max_boxes))
    kinds = st.sampled_from(KINDS + (("huge",) if huge else ()))
    rows, any_huge = [], False
    for i in range(k):
        kx, ky = draw(kinds), draw(kinds)
        if only_huge and i == 0:  # huge along x, and mostly along y too (grid_h * grid_w > 2**31)
            kx, ky = "huge", draw(st.sampled_from(["huge", "huge", ky]))
        any_huge |= "huge" in (kx, ky)
        x1, x2 = draw(axis(kx, w))
        y1, y2 = draw(axis(ky, h))
        index = draw(st.integers(0, n - 1))
        rows.append([index, x1 / scale, y1 / scale, x2 / scale, y2 / scale])
    rois = np.array(rows, np.float64)
    assert (np.abs(rois[:, 1:]) * scale <= MAX).all()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = n * c * h * w
    magnitude = draw(st.sampled_from([1.0, 1.0, 50.0]))
    x = (rng.permutation(size).reshape(n, c, h, w) / size * 2 - 1) * magnitude
    offset_kind = draw(st.sampled_from(["none", "zero", "small", "small", "large"]))
    offset = None
    if offset_kind != "none":
        spread = {"zero": 0.0, "small": 1.0, "large": 20.0}[offset_kind]
        offset = rng.uniform(-spread, spread, (k, 2, *pooled))
    ratio, aligned = draw(st.sampled_from(ratios)), draw(st.booleans())
    gamma, grad = draw(st.sampled_from(GAMMAS)), rng.standard_normal((k, c, *pooled))
    return Problem(x, rois, pooled, scale, ratio, aligned, gamma, offset, grad, any_huge)


# ---- helpers -----------------------------------------------------------------------------------


def oracle_samples(p, ratio, min_one=True):
    """Upper bound on the samples the oracle evaluates (boxes x channels x bins x grid)."""
    ph, pw = p.pooled
    if ratio > 0:
        per_bin = np.full(len(p.rois), ratio * ratio, np.float64)
    else:
        width = (p.rois[:, 3] - p.rois[:, 1]) * p.scale
        height = (p.rois[:, 4] - p.rois[:, 2]) * p.scale
        if min_one:
            width, height = np.maximum(width, 1), np.maximum(height, 1)
        per_bin = np.maximum(np.ceil(height / ph) + 1, 0) * np.maximum(np.ceil(width / pw) + 1, 0)
    return float(per_bin.sum()) * p.x.shape[1] * ph * pw


def affordable_ratio(p, min_one=True):
    """The example's sampling_ratio, or a fixed one when the oracle would take too long."""
    return p.ratio if oracle_samples(p, p.ratio, min_one) <= ORACLE_BUDGET else FIXED_RATIO


def coord_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def tolerance(dtype):
    return 1e-9 if dtype == np.float64 else 1e-5


def mag(a):
    return float(np.abs(a).max(initial=0.0))


def assert_close(actual, expected, rel, bound):
    """|actual - expected| <= rel * max(bound, |expected|), elementwise.

    ``bound`` is the magnitude of the inputs each entry is made of: for an op linear in its
    input, the op applied to the absolute values of that input (the sum of the absolute values
    of the terms each entry adds up). It is what rounding errors scale with, and, unlike a
    bound from the largest input, it stays small for the tiny averages of huge boxes (where a
    wrong divisor would otherwise hide below the tolerance). Entries made of no terms must be
    exactly equal.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    bound = np.maximum(
        np.broadcast_to(np.asarray(bound, np.float64), expected.shape), np.abs(expected)
    )
    error = np.abs(actual - expected)
    bad = ~(error <= rel * bound)  # NaN fails
    if bad.any():
        i = tuple(int(v[0]) for v in np.nonzero(bad))
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} entries differ beyond {rel} of their bound; first "
            f"at {i}: actual {actual[i]!r}, expected {expected[i]!r}, bound {bound[i]!r}; "
            f"largest relative error {float(np.max(error / np.maximum(bound, 1e-300))):.3g}"
        )


def assert_finite(*arrays, computed=()):
    """Every entry finite; where ``computed`` gives an array as computed (float32, for float16
    results), an entry may be infinite where that value lies past its dtype's range."""
    for a, wide in itertools.zip_longest(arrays, computed):
        if a is not None:
            past = False if wide is None else np.abs(wide) > np.finfo(a.dtype).max
            assert (np.isfinite(a) | past).all()


def offset_bound(ones_forward, rois, scale, gamma, x_mag, g):
    """Bound on grad_offset: gamma * box size * (in-map sample fraction) * 2 max|x| * sum|g|.

    The slope of one bilinear sample is at most 2 max|x|; the fraction of a bin's samples that
    fall in the map is the forward of an all-ones map (``ones_forward``, (K, 1, PH, PW)).
    """
    rois = np.asarray(rois, np.float64)
    sizes = np.abs(rois[:, 3:5] - rois[:, 1:3]) * scale + 1  # (K, 2): width, height
    per_bin = ones_forward[:, 0] * 2 * x_mag * np.abs(g).sum(axis=1)  # (K, PH, PW)
    return 2 * abs(gamma) * sizes[:, :, None, None] * per_bin[:, None]


# ---- the ops linear in their input: public functions and oracles alike -----------------------

LINEAR = ("roi_align", "deform_roi_pool")


def forward(op, p, x, rois, offset, ratio, coord_dtype=None):
    """The public forward of ``op`` (of LINEAR), or its oracle when ``coord_dtype`` is given."""
    oracle = {} if coord_dtype is None else {"coord_dtype": coord_dtype}
    if op == "roi_align":
        f = align_oracle.roi_align if oracle else cuproi.roi_align
        return f(x, rois, p.pooled, p.scale, ratio, p.aligned, **oracle)
    f = deform_oracle.deform_roi_pool if oracle else cuproi.deform_roi_pool
    return f(x, rois, offset, p.pooled, p.scale, ratio, p.gamma, **oracle)


def backward(op, p, g, x, rois, offset, ratio, coord_dtype=None):
    """(grad_input, grad_offset) of ``op``, as :func:`forward`; grad_offset None without offsets."""
    oracle = {} if coord_dtype is None else {"coord_dtype": coord_dtype}
    if op == "roi_align":
        f = align_oracle.roi_align_backward if oracle else cuproi.roi_align_backward
        return f(g, rois, x.shape, p.pooled, p.scale, ratio, p.aligned, **oracle), None
    f = deform_oracle.deform_roi_pool_backward if oracle else cuproi.deform_roi_pool_backward
    return f(g, x, rois, offset, p.pooled, p.scale, ratio, p.gamma, **oracle)[:2]


def inputs(op, p, dtype):
    """x, rois, offset (None for an op without), grad as cuproi reads them for ``dtype``."""
    x, rois, offset, g = p.cast(dtype)
    return x, rois, offset if op == "deform_roi_pool" else None, g


# ---- finite, typed, shaped ---------------------------------------------------------------------


# A box 1.4e5 cells high: its grad_offset, about 1.3 * 1.4e5 * 0.5, is past float16's range.
PAST_FLOAT16 = Problem(
    x=np.array([[[[-0.5, 0, -0.25, 0.5], [0.25, -1, -0.75, 0.75]]]]),
    rois=np.array([[0, 0, -71996, 1e-6, 71997]]),
    pooled=(1, 1),
    scale=1.0,
    ratio=1,
    aligned=False,
    gamma=1.0,
    offset=np.zeros((1, 2, 1, 1)),
    grad=np.array([[[[1.304]]]]),
    huge=True,
)


@examples(150)
@given(p=problems(huge=True), dtype=st.sampled_from([np.float16, np.float32, np.float64]))
@example(p=PAST_FLOAT16, dtype=np.float16)
def test_outputs_finite_typed_and_shaped(p, dtype):
    shape = (len(p.rois), p.x.shape[1], *p.pooled)
    x, rois, _, g = p.cast(dtype)
    out, argmax = cuproi.roi_pool(x, rois, p.pooled, p.scale, return_argmax=True)
    grad = cuproi.roi_pool_backward(g, rois, argmax, x.shape)
    assert out.shape == argmax.shape == shape and out.dtype == dtype and argmax.dtype == np.int32
    assert ((argmax >= -1) & (argmax < x.shape[2] * x.shape[3])).all()
    assert grad.shape == x.shape and grad.dtype == dtype
    assert_finite(out, grad)
    for op in LINEAR:
        x, rois, offset, g = inputs(op, p, dtype)
        offset = None if offset is None else offset.astype(dtype)
        out = forward(op, p, x, rois, offset, p.ratio)
        grad, grad_offset = backward(op, p, g, x, rois, offset, p.ratio)
        assert out.shape == shape and out.dtype == dtype
        assert grad.shape == x.shape and grad.dtype == dtype
        if offset is None:
            assert grad_offset is None
        else:
            assert grad_offset.shape == offset.shape and grad_offset.dtype == dtype
        computed = ()
        if dtype == np.float16:  # the gradients of huge boxes may lie past float16's range
            g32, x32, offset32 = (
                None if a is None else a.astype(np.float32) for a in (g, x, offset)
            )
            computed = (None, *backward(op, p, g32, x32, rois, offset32, p.ratio))
        assert_finite(out, grad, grad_offset, computed=computed)


# ---- CPU backend against the oracles -----------------------------------------------------------


def check_against_oracle(op, p, dtype, ratio):
    x, rois, offset, g = inputs(op, p, dtype)
    cd, rel = coord_dtype(dtype), tolerance(dtype)
    out = forward(op, p, x, rois, offset, ratio)
    expected = forward(op, p, x, rois, offset, ratio, cd)
    assert_close(out, expected, rel, forward(op, p, np.abs(x), rois, offset, ratio))

    grad, grad_offset = backward(op, p, g, x, rois, offset, ratio)
    expected, expected_offset = backward(op, p, g, x, rois, offset, ratio, cd)
    bound, _ = backward(op, p, np.abs(g), x, rois, offset, ratio)
    assert_close(grad, expected, rel, bound)
    if offset is None:
        assert grad_offset is None and expected_offset is None
    else:
        ones = forward(op, p, np.ones_like(x[:, :1]), rois, offset, ratio)
        bound = offset_bound(ones, rois, p.scale, p.gamma, mag(x), g)
        assert_close(grad_offset, expected_offset, rel, bound)


@pytest.mark.parametrize("op", LINEAR)
@examples(200)
@given(p=problems(), dtype=st.sampled_from([np.float64, np.float32]))
def test_matches_oracle(op, p, dtype):
    # roi_align makes boxes at least one cell wide unless aligned: so many more samples.
    min_one = op == "roi_align" and not p.aligned
    check_against_oracle(op, p, dtype, affordable_ratio(p, min_one))


@pytest.mark.parametrize("op", LINEAR)
@examples(100)
@given(
    p=problems(huge=True, only_huge=True, ratios=(1, 2, 3)),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_huge_boxes_match_oracle_with_fixed_sampling(op, p, dtype):
    check_against_oracle(op, p, dtype, p.ratio)


def assert_roi_pool_matches_oracle(x, rois, p, dtype):
    """roi_pool, with and without argmax (the CPU's value path), equals the oracle exactly (a
    max is exact), and so does its argmax; returns the oracle's (output, argmax)."""
    out, argmax = cuproi.roi_pool(x, rois, p.pooled, p.scale, return_argmax=True)
    cd = coord_dtype(dtype)
    expected, expected_argmax = pool_oracle.roi_pool(x, rois, p.pooled, p.scale, coord_dtype=cd)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(out.astype(np.float64), expected)
    values = cuproi.roi_pool(x, rois, p.pooled, p.scale)
    np.testing.assert_array_equal(values.astype(np.float64), expected)
    return expected, expected_argmax


@examples(200)
@given(p=problems(huge=True), dtype=st.sampled_from([np.float64, np.float32]))
def test_roi_pool_matches_oracle(p, dtype):
    # RoI Pool visits the cells of each bin clipped to the map: the oracle is cheap for any box.
    # Distinct values: no ties.
    x, rois, _, g = p.cast(dtype)
    _, argmax = assert_roi_pool_matches_oracle(x, rois, p, dtype)
    grad = cuproi.roi_pool_backward(g, rois, argmax, x.shape)
    expected = pool_oracle.roi_pool_backward(g, rois, argmax, x.shape)
    bound = cuproi.roi_pool_backward(np.abs(g), rois, argmax, x.shape)
    assert_close(grad, expected, tolerance(dtype), bound)


@examples(80)
@given(
    p=problems(huge=True), levels=st.integers(1, 3), dtype=st.sampled_from([np.float64, np.float32])
)
def test_roi_pool_ties_first_maximum_wins(p, levels, dtype):
    # Few distinct values: many ties, which the first maximum in scan order (rows, then
    # columns) wins, in the CPU backend as in the oracle (and in the kernels run on the host).
    x, rois, _, _ = p.cast(dtype)
    x = np.round(x / max(mag(x), 1e-300) * levels).astype(dtype)
    expected, expected_argmax = assert_roi_pool_matches_oracle(x, rois, p, dtype)
    if host.COMPILER is not None:
        x, rois = _validate.features(np, x), _validate.boxes(np, rois, len(x), p.scale, x.dtype)
        actual, argmax = host.bind("roi_pool")(x, rois, p.pooled, p.scale, return_argmax=True)
        np.testing.assert_array_equal(argmax, expected_argmax)
        np.testing.assert_array_equal(actual.astype(np.float64), expected)


# ---- adjoint identity --------------------------------------------------------------------------


@pytest.mark.parametrize("op", LINEAR)
@examples(120)
@given(p=problems(huge=True))
def test_adjoint(op, p):
    x, rois, offset, g = inputs(op, p, np.float64)
    lhs = float(np.sum(forward(op, p, x, rois, offset, p.ratio) * g))
    rhs = float(np.sum(x * backward(op, p, g, x, rois, offset, p.ratio)[0]))
    # Both sum the same terms A[i, j] * x[j] * g[i]: their absolute sum bounds the rounding.
    scale = float(np.sum(forward(op, p, np.abs(x), rois, offset, p.ratio) * np.abs(g)))
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs, scale)


# ---- host-run CUDA kernels against the CPU backend ---------------------------------------------


def validated(p, dtype):
    """The arrays the public layer hands to a backend for ``dtype`` features."""
    x, rois, offset, g = p.cast(dtype)
    x = _validate.features(np, x)
    rois = _validate.boxes(np, rois, x.shape[0], p.scale, x.dtype)
    offset = _validate.offset(np, offset, len(rois), p.pooled, x.dtype)
    g = _validate.grad_output(np, g, len(rois), x.shape[1], p.pooled)
    return x, rois, offset, g


def agree(op, args, rel, bound=None, **kwargs):
    """The host kernels' ``op`` equals the CPU backend's on ``args``, finite, of its dtype.

    Within ``rel`` of ``bound``: by default ``op`` on the absolute values of its first argument
    (the input or the gradient it is linear in). Returns the result.
    """
    expected = getattr(_cpu, op)(*args, **kwargs)
    actual = host.bind(op)(*args, **kwargs)
    assert_finite(expected, actual)
    assert actual.dtype == expected.dtype
    if bound is None:
        bound = getattr(_cpu, op)(np.abs(args[0]), *args[1:], **kwargs)
    assert_close(actual, expected, rel, bound)
    return actual


def deform_backward_agrees(p, x, rois, offset, g, rel, mask=None):
    """deform_roi_pool_backward's gradients (of the input, offsets and mask) on both backends."""
    args = (g, x, rois, offset, p.scale, p.ratio, p.gamma)
    expected = _cpu.deform_roi_pool_backward(*args, mask=mask)
    actual = host.bind("deform_roi_pool_backward")(*args, mask=mask)
    assert_finite(*expected, *actual)
    assert actual[0].dtype == expected[0].dtype == x.dtype
    absolute = None if mask is None else np.abs(mask)
    bound = _cpu.deform_roi_pool_backward(np.abs(g), *args[1:], mask=absolute)[0]
    assert_close(actual[0], expected[0], rel, bound)
    if offset is None:
        assert actual[1] is None and expected[1] is None
    else:
        assert actual[1].dtype == expected[1].dtype
        bins = (p.pooled, p.scale, p.ratio, p.gamma, absolute)
        ones = _cpu.deform_roi_pool(np.ones_like(x[:, :1]), rois, offset, *bins)
        bound = offset_bound(ones, rois, p.scale, p.gamma, mag(x), g)
        assert_close(actual[1], expected[1], rel, bound)
    if mask is not None:  # d out / d mask is the bin's average: at most max|x| times its |g|
        assert_close(actual[2], expected[2], rel, mag(x) * np.abs(g).sum(1, keepdims=True))


def compare_backends(p, dtype):
    x, rois, offset, g = validated(p, dtype)
    rel = tolerance(dtype)
    for op, args in [
        ("roi_align", (x, rois, p.pooled, p.scale, p.ratio, p.aligned)),
        ("roi_align_backward", (g, rois, x.shape, p.scale, p.ratio, p.aligned)),
        ("deform_roi_pool", (x, rois, offset, p.pooled, p.scale, p.ratio, p.gamma)),
    ]:
        assert agree(op, args, rel).dtype == dtype
    deform_backward_agrees(p, x, rois, offset, g, rel)

    expected, expected_argmax = _cpu.roi_pool(x, rois, p.pooled, p.scale, return_argmax=True)
    actual, argmax = host.bind("roi_pool")(x, rois, p.pooled, p.scale, return_argmax=True)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(actual, expected)
    assert argmax.dtype == expected_argmax.dtype == np.int32
    assert agree("roi_pool_backward", (g, rois, expected_argmax, x.shape), rel).dtype == dtype


@pytest.mark.slow
@needs_compiler
@examples(300)
@given(p=problems(huge=True), dtype=st.sampled_from([np.float64, np.float32]))
def test_host_kernels_match_cpu(p, dtype):
    compare_backends(p, dtype)


@needs_compiler
@examples(80)
@given(
    p=problems(huge=True, only_huge=True, ratios=(-1, 0)),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_huge_boxes_adaptive_sampling_host_kernels_match_cpu(p, dtype):
    # Millions of samples per bin, nearly all outside the map: finite, and both backends agree.
    compare_backends(p, dtype)


def box_bound(x, g, scale, reach=1.0):
    """Bound on the (K, 5) box gradients, per box: the slope of f along an axis is at most
    2 max|x| per cell, a bin moves by at most ``reach`` times its box edge's move, and
    ``scale`` turns image coordinates into cells."""
    per_box = 2 * mag(x) * np.abs(g).reshape(len(g), -1).sum(1) * scale * reach
    return np.broadcast_to(per_box[:, None], (len(g), 5))


def compare_variants(p, dtype):
    x, rois, offset, g = validated(p, dtype)
    rel = tolerance(dtype)

    # Max mode: the largest bilinear sample of each bin; its gradient goes to that sample's taps.
    agree("roi_align", (x, rois, p.pooled, p.scale, p.ratio, p.aligned, "max"), rel, mag(x))
    args = (g, rois, x.shape, p.scale, p.ratio, p.aligned)
    agree("roi_align_backward", args, rel, np.abs(g).sum(), pool_mode="max", input=x)

    # Modulated: every bin's average times its mask, of any sign and beyond 1 too.
    mask = np.random.default_rng(len(rois)).uniform(-0.5, 1.5, (len(rois), 1, *p.pooled))
    mask = mask.astype(rois.dtype)
    args = (rois, offset, p.pooled, p.scale, p.ratio, p.gamma)
    bound = _cpu.deform_roi_pool(np.abs(x), *args, mask=np.abs(mask))
    agree("deform_roi_pool", (x, *args), rel, bound, mask=mask)
    deform_backward_agrees(p, x, rois, offset, g, rel, mask)

    # Gradients with respect to the boxes (deform's bins also move with their offsets).
    args = (g, x, rois, p.scale, p.ratio, p.aligned)
    agree("roi_align_box_backward", args, rel, box_bound(x, g, p.scale))
    agree("prroi_pool_box_backward", (g, x, rois, p.scale), rel, box_bound(x, g, p.scale))
    reach = 1 + abs(p.gamma) * (0.0 if offset is None else mag(offset))
    args = (g, x, rois, offset, p.scale, p.ratio, p.gamma)
    agree("deform_roi_pool_box_backward", args, rel, box_bound(x, g, p.scale, reach))


@needs_compiler
@examples(150)
@given(p=problems(huge=True), dtype=st.sampled_from([np.float64, np.float32]))
def test_host_kernel_variants_match_cpu(p, dtype):
    compare_variants(p, dtype)
