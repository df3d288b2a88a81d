"""Precise RoI Pooling: both backends (the NumPy/SciPy one and the CUDA kernels run on the host)
against the float64 cell-by-cell oracle of tests/oracles/prroi_pool.py, the adjoint identity, the
box gradient against central differences of the oracle, deterministic sums, the int64 entry points,
chunking, and the validation of the public functions."""

import functools

import host
import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import prroi_pool as prroi_oracle
from roi_op_tester import box_zoo

import cuproi
import cuproi.prroi_pool
from cuproi import _cpu
from cuproi._cpu import _sampling
from cuproi._cuda import _launch
from cuproi._validate import compute_dtype

SHAPE = (2, 3, 10, 12)
SIZES = [(3, 4), (1, 1), (2, 2)]
SCALES = [1.0, 0.5, 0.7]


def features(dtype, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def grad(dtype, k, size, seed=3):
    return np.random.default_rng(seed).standard_normal((k, SHAPE[1], *size)).astype(dtype)


def rois_for(boxes, dtype):
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol * scale
    )


@functools.cache
def _oracle(name, dtype, size, scale):
    """Oracle results, cached across backends (the loops are slow)."""
    coord = compute_dtype(dtype).type
    boxes = box_zoo(scale)
    if name.endswith("backward"):
        g = grad(dtype, len(boxes), size).astype(np.float64)
        return prroi_oracle.prroi_pool_backward(g, boxes, SHAPE, size, scale, coord)
    x = features(dtype).astype(np.float64)
    return prroi_oracle.prroi_pool(x, boxes, size, scale, coord)


@pytest.fixture(params=["cpu", "host-kernels"])
def ops(request):
    """A backend with prroi_pool, prroi_pool_backward and prroi_pool_box_backward."""
    if request.param == "cpu":
        return _cpu
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    return host_backend()


# ---- against the oracle ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("size", SIZES)
def test_forward(backend, dtype, scale, size):
    """Inside, outside, partly outside, degenerate, flipped and huge boxes (box_zoo)."""
    out = backend.prroi_pool(features(dtype), rois_for(box_zoo(scale), dtype), size, scale)
    assert out.dtype == dtype and out.shape == (12, SHAPE[1], *size)
    assert np.isfinite(out).all()
    assert_close(out, _oracle("prroi_pool", dtype, size, scale), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.7])
@pytest.mark.parametrize("size", [(3, 4), (2, 2)])
def test_backward(backend, dtype, scale, size):
    boxes = box_zoo(scale)
    g = grad(dtype, len(boxes), size)
    got = backend.prroi_pool_backward(g, rois_for(boxes, dtype), SHAPE, scale)
    assert got.dtype == dtype and got.shape == SHAPE
    assert_close(got, _oracle("prroi_pool_backward", dtype, size, scale), dtype)


@pytest.mark.parametrize("scale", [1.0, 0.7])
@pytest.mark.parametrize("size", [(3, 4), (2, 2)])
def test_adjoint(backend, scale, size):
    """<A x, g> == <x, A^T g>: the backward is the exact transpose of the forward."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(SHAPE)
    rois = rois_for(box_zoo(scale), np.float64)
    g = rng.standard_normal((len(rois), SHAPE[1], *size))
    lhs = np.vdot(backend.prroi_pool(x, rois, size, scale), g)
    rhs = np.vdot(x, backend.prroi_pool_backward(g, rois, SHAPE, scale))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_float16(backend):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    size = (3, 4)
    x = features(np.float16)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32
    out = backend.prroi_pool(x, rois, size, 0.5)
    assert out.dtype == np.float16
    expected = prroi_oracle.prroi_pool(x.astype(np.float64), boxes, size, 0.5, np.float32)
    assert_close(out, expected, np.float16)
    g = grad(np.float16, len(boxes), size)
    got = backend.prroi_pool_backward(g, rois, SHAPE, 0.5)
    assert got.dtype == np.float16
    expected = prroi_oracle.prroi_pool_backward(
        g.astype(np.float64), boxes, SHAPE, size, 0.5, np.float32
    )
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=4e-3, atol=1e-2)
    box = backend.prroi_pool_box_backward(g, x, rois, 0.5)
    assert box.dtype == np.float32 and box.shape == (len(boxes), 5)
    want = backend.prroi_pool_box_backward(g.astype(np.float32), x.astype(np.float32), rois, 0.5)
    np.testing.assert_allclose(box, want, rtol=1e-5, atol=1e-5)


# ---- the semantics ---------------------------------------------------------------------------


def test_exact_integral_of_a_bilinear_surface(backend):
    """On x * y the average over [a, b] x [c, d] inside the map is ((a + b) / 2) ((c + d) / 2);
    in the last cell the surface falls to 0 at x = W (zero padding, no clamping)."""
    h, w = 6, 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (yy * xx)[None, None]
    rois = np.array([[0, 0.3, 1.2, 5.4, 4.7], [0, 7.0, 0.0, 8.0, 2.0]])
    out = backend.prroi_pool(x, rois, (1, 1), 1.0)
    np.testing.assert_allclose(out[0, 0, 0, 0], (0.3 + 5.4) / 2 * (1.2 + 4.7) / 2, rtol=1e-13)
    # Column 7 holds 7 * y; over x in [7, 8] the surface is 7 * y * (8 - x): half of it.
    np.testing.assert_allclose(out[1, 0, 0, 0], 7 * 1.0 * 0.5, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_area_bins_give_zero(backend, dtype):
    x = features(dtype)
    rois = rois_for(
        [[0, 4.0, 4.0, 4.0, 4.0], [1, 3.0, 2.5, 9.0, 2.5], [0, 7.5, 5.5, 2.5, 1.5]], dtype
    )
    out = backend.prroi_pool(x, rois, (2, 2), 1.0)
    np.testing.assert_array_equal(out, 0)
    g = np.ones_like(out)
    np.testing.assert_array_equal(backend.prroi_pool_backward(g, rois, SHAPE, 1.0), 0)
    np.testing.assert_array_equal(backend.prroi_pool_box_backward(g, x, rois, 1.0), 0)


def test_empty_inputs(backend):
    x = features(np.float32)
    none = np.zeros((0, 5), np.float32)
    assert backend.prroi_pool(x, none, (2, 2), 1.0).shape == (0, SHAPE[1], 2, 2)
    g = np.zeros((0, SHAPE[1], 2, 2), np.float32)
    got = backend.prroi_pool_backward(g, none, SHAPE, 1.0)
    assert got.shape == SHAPE and not got.any()
    assert backend.prroi_pool_box_backward(g, x, none, 1.0, deterministic=True).shape == (0, 5)
    empty = np.zeros((2, 0, 4, 4), np.float32)  # no channels
    rois = rois_for(box_zoo(1.0), np.float32)
    assert backend.prroi_pool(empty, rois, (2, 2), 1.0).shape == (12, 0, 2, 2)


# ---- box gradients ---------------------------------------------------------------------------


def _smooth_boxes(k=8, seed=0):
    """Boxes of positive size (no clamp), inside, partly outside and beyond the map."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-3, [11, 9], (k, 2))
    size = rng.uniform(0.7, 8, (k, 2))
    return np.column_stack([rng.integers(0, 2, k), corner, corner + size])


def _central_differences(x, boxes, g, size, scale, eps=1e-6):
    """d <oracle(boxes), g> / d boxes by central differences of the float64 oracle."""
    out = np.zeros((len(boxes), 5))
    for k in range(len(boxes)):
        for j in range(1, 5):
            plus, minus = boxes[k : k + 1].copy(), boxes[k : k + 1].copy()
            plus[0, j] += eps
            minus[0, j] -= eps
            f = [prroi_oracle.prroi_pool(x, b, size, scale) for b in (plus, minus)]
            out[k, j] = np.vdot(f[0][0] - f[1][0], g[k]) / (2 * eps)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.7])
@pytest.mark.parametrize("size", [(2, 3), (1, 1)])
def test_box_gradient_matches_central_differences(ops, dtype, scale, size):
    boxes = _smooth_boxes()
    x = features(np.float64)
    g = grad(np.float64, len(boxes), size)
    want = _central_differences(x, boxes, g, size, scale)
    got = ops.prroi_pool_box_backward(
        g.astype(dtype), x.astype(dtype), rois_for(boxes, dtype), scale
    )
    assert got.shape == (len(boxes), 5) and got.dtype == compute_dtype(dtype)
    assert (got[:, 0] == 0).all()
    rtol, atol = (1e-6, 1e-6) if dtype == np.float64 else (1e-3, 1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max())


@pytest.mark.parametrize(
    "dtype, corner, size",
    [
        (np.float64, (2.3, 1.5), (5.6, 4.7)),
        (np.float32, (2.3, 1.5), (5.6, 4.7)),
        # Tiny boxes: the derivatives are differences of edge and bin averages over the bin
        # size, which lost every digit when computed as such (1e261 at 1e-200).
        (np.float32, (2.3, 1.5), (1e-6, 2e-6)),
        (np.float64, (2.3, 1.5), (1e-12, 1e-13)),
        (np.float64, (1e-190, 1e-190), (1e-200, 3e-200)),  # on the first pixel's falling hat
    ],
)
def test_ramp_and_its_box_gradient(backend, dtype, corner, size):
    """On f = x + 2 y the average is f at the bin centre, whatever the bin's size: summed over
    a 2 x 3 grid of bins, d / d x1 = d / d x2 = 3 and d / d y1 = d / d y2 = 2 * 3."""
    y, x = np.mgrid[:10, :12]
    f = (x + 2.0 * y)[None, None].astype(dtype)
    (x1, y1), (w, h) = corner, size
    rois = np.array([[0, x1, y1, x1 + w, y1 + h]], compute_dtype(dtype))
    assert (rois[0, 3:] > rois[0, 1:3]).all()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    box = rois[0].astype(np.float64)
    cy = box[2] + (np.arange(2) + 0.5) / 2 * (box[4] - box[2])
    cx = box[1] + (np.arange(3) + 0.5) / 3 * (box[3] - box[1])
    out = backend.prroi_pool(f, rois, (2, 3), 1.0)
    np.testing.assert_allclose(out[0, 0], cx + 2 * cy[:, None], rtol=tol, atol=tol)
    g = np.ones((1, 1, 2, 3), dtype)
    got = backend.prroi_pool_box_backward(g, f, rois, 1.0)
    np.testing.assert_allclose(got, [[0, 3.0, 6.0, 3.0, 6.0]], rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "dtype, y1, y2", [(np.float32, -1e-40, 2e-40), (np.float64, -1e-309, 2e-309)]
)
def test_subnormal_bins_across_a_peak(backend, dtype, y1, y2):
    """Bins of subnormal height across the first row's peak: their shares of the hat's pieces
    were computed times 1 / height, which overflows (the output was inf), and are now divided
    by it. The oracle's (float64) area of a bin stays a nonzero number here."""
    ct = compute_dtype(dtype).type
    rois = np.array([[1, 0.5, y1, 3.5, y2]], ct)
    x = features(dtype)
    g = grad(dtype, 1, (2, 3))
    want = prroi_oracle.prroi_pool(x, rois, (2, 3), 1.0, coord_dtype=ct)
    out = backend.prroi_pool(x, rois, (2, 3), 1.0)
    assert np.isfinite(out).all()
    assert_close(out, want, dtype)
    got = backend.prroi_pool_backward(g, rois, SHAPE, 1.0)
    assert_close(
        got, prroi_oracle.prroi_pool_backward(g, rois, SHAPE, (2, 3), coord_dtype=ct), dtype
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_bin_at_the_foot_of_a_hat(backend, dtype):
    """A bin [d, 3d/2]^2 with d half an ulp of 1: pixels (0, 0) to (1, 1) share it with weights
    1 - c and c along each axis, c = 5d/4 its centre, to float precision. For pixel 1 the bin
    lies at the foot of the hat, t = d - 1; its end t + d/2 is not a float, and the weight,
    computed from that rounded end, was off by 1.5 times itself."""
    ct = compute_dtype(dtype).type
    d = float(np.finfo(ct).eps) / 2
    rois = np.array([[0, d, d, 1.5 * d, 1.5 * d]], ct)
    c = 1.25 * d
    g = np.ones((1, 1, 1, 1), dtype)
    got = backend.prroi_pool_backward(g, rois, (1, 1, 4, 5), 1.0)
    want = np.zeros((4, 5))
    want[:2, :2] = np.outer([1 - c, c], [1 - c, c])
    np.testing.assert_allclose(got[0, 0], want, rtol=4 * d, atol=0)


def test_box_gradient_is_zero_for_clamped_boxes(backend):
    """A flipped box has width max(x2 - x1, 0) = 0: every output is 0 around it."""
    x = features(np.float64)
    rois = np.array([[0, 7.5, 5.5, 2.5, 1.5], [1, 7.5, 1.5, 2.5, 5.5]])
    g = np.ones((2, SHAPE[1], 2, 2))
    np.testing.assert_array_equal(backend.prroi_pool_box_backward(g, x, rois, 1.0), 0)


def test_box_gradient_deterministic_matches(ops):
    boxes = _smooth_boxes()
    x = features(np.float64)
    g = grad(np.float64, len(boxes), (2, 3))
    a = ops.prroi_pool_box_backward(g, x, boxes, 0.7)
    b = ops.prroi_pool_box_backward(g, x, boxes, 0.7, deterministic=True)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ---- chunking, deterministic sums and the int64 entry points ---------------------------------


def test_cpu_chunks_give_the_same_result(monkeypatch):
    """A tiny budget splits the boxes into many chunks: the same values."""
    size = (3, 4)
    x = features(np.float64)
    rois = rois_for(box_zoo(0.7), np.float64)
    g = grad(np.float64, len(rois), size)

    def run():
        return [
            _cpu.prroi_pool(x, rois, size, 0.7),
            _cpu.prroi_pool_backward(g, rois, SHAPE, 0.7),
            _cpu.prroi_pool_box_backward(g, x, rois, 0.7),
        ]

    whole = run()
    chunks = _sampling.chunks
    seen = []

    def small(cost, budget=None):
        parts = list(chunks(cost, 40))
        seen.append(len(parts))
        return iter(parts)

    monkeypatch.setattr(_sampling, "chunks", small)
    split = run()
    assert seen and max(seen) > 3
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


def _overlapping(dtype, k=24, seed=0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [9, 7], (k, 2))
    size = rng.uniform(0.5, 8, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size]).astype(dtype)
    g = rng.standard_normal((k, SHAPE[1], 3, 4)).astype(dtype)
    return rois, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_matches_oracle(backend, dtype):
    rois, g = _overlapping(dtype)
    got = backend.prroi_pool_backward(g, rois, SHAPE, 0.5, deterministic=True)
    want = prroi_oracle.prroi_pool_backward(g, rois, SHAPE, (3, 4), 0.5, dtype)
    assert got.dtype == dtype
    assert_close(got, want, dtype)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_kernels_sum_independently_of_order(dtype):
    b = host_backend()
    rois, g = _overlapping(dtype)
    x = features(dtype)
    order = np.random.default_rng(1).permutation(len(rois))
    shuffled = np.ascontiguousarray(rois[order]), np.ascontiguousarray(g[order])

    def run(r, gg, det):
        return (
            b.prroi_pool_backward(gg, r, SHAPE, 0.5, deterministic=det),
            b.prroi_pool_box_backward(gg, x, r, 0.5, deterministic=det),
        )

    first, first_box = run(rois, g, True)
    again, again_box = run(*shuffled, True)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_box[order], again_box)  # box rows follow their boxes
    # The default floating-point atomics do depend on the order: the test can fail.
    plain, _ = run(rois, g, False)
    reordered, _ = run(*shuffled, False)
    assert not np.array_equal(plain, reordered)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
def test_int64_index_variants(monkeypatch):
    """The _i64 entry points give the same results as the int32 ones (forced on small arrays)."""
    x = features(np.float64)
    rois = rois_for(box_zoo(0.7), np.float64)
    g = np.random.default_rng(0).standard_normal((len(rois), SHAPE[1], 2, 3))

    def run():
        b = host_backend()
        return [
            b.prroi_pool(x, rois, (2, 3), 0.7),
            b.prroi_pool_backward(g, rois, SHAPE, 0.7),
            b.prroi_pool_backward(g, rois, SHAPE, 0.7, deterministic=True),
            b.prroi_pool_box_backward(g, x, rois, 0.7, deterministic=True),
        ]

    narrow = run()
    calls = []
    launch = host.launch
    monkeypatch.setattr(_launch, "LARGE", 0)
    monkeypatch.setattr(host, "launch", lambda *a, **k: (calls.append(a[1]), launch(*a, **k)))
    wide = run()
    assert calls and all(name.endswith("_i64") for name in calls)
    for a, b in zip(narrow, wide, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
def test_kernels_skip_a_bad_batch_index():
    """The defensive check: a box naming no image reads nothing and writes zeros."""
    b = host_backend()
    x = features(np.float32)
    rois = np.array([[5, 1.0, 1.0, 6.0, 6.0], [-1, 1.0, 1.0, 6.0, 6.0]], np.float32)
    assert not b.prroi_pool(x, rois, (2, 2), 1.0).any()
    g = np.ones((2, SHAPE[1], 2, 2), np.float32)
    assert not b.prroi_pool_backward(g, rois, SHAPE, 1.0).any()
    assert not b.prroi_pool_box_backward(g, x, rois, 1.0).any()


# ---- the public functions --------------------------------------------------------------------

N, H, W = 2, 6, 7
OUT = (2, 3)
C = 3
BOXES = np.array([[0, 0.5, 1.0, 4.0, 3.5], [1, 1.0, 0.0, 5.5, 4.5]], np.float32)


def _x(dtype=np.float32):
    return np.random.default_rng(0).standard_normal((N, C, H, W)).astype(dtype)


def _g(k=2, size=OUT, dtype=np.float32):
    return np.ones((k, C, *size), dtype)


def test_public_functions_equal_the_backend():
    x = _x(np.float64)
    rois = BOXES.astype(np.float64)
    np.testing.assert_array_equal(
        cuproi.prroi_pool(x, BOXES, OUT, 0.5), _cpu.prroi_pool(x, rois, OUT, 0.5)
    )
    g = _g(dtype=np.float64)
    np.testing.assert_array_equal(
        cuproi.prroi_pool_backward(g, BOXES, x.shape, OUT, 0.5, deterministic=True),
        _cpu.prroi_pool_backward(g, rois, x.shape, 0.5),
    )
    np.testing.assert_array_equal(
        cuproi.prroi_pool_box_backward(g, x, BOXES, OUT, 0.5, deterministic=True),
        _cpu.prroi_pool_box_backward(g, x, rois, 0.5),
    )


def test_defaults_and_box_list():
    x = _x()
    per_image = [BOXES[:1, 1:], BOXES[1:, 1:]]
    np.testing.assert_array_equal(
        cuproi.prroi_pool(x, per_image, OUT), cuproi.prroi_pool(x, BOXES, OUT, 1.0)
    )
    grads = cuproi.prroi_pool_backward(_g(), per_image, x.shape, OUT)
    assert grads.shape == x.shape and grads.dtype == np.float32
    box = cuproi.prroi_pool_box_backward(_g(), x, per_image, OUT)
    np.testing.assert_array_equal(box, cuproi.prroi_pool_box_backward(_g(), x, BOXES, OUT))
    assert cuproi.prroi_pool(x, BOXES, 2).shape == (2, C, 2, 2)  # an int means (n, n)
    # float16 features: the box gradient is in float32, grad_output in any float dtype.
    half = cuproi.prroi_pool_box_backward(_g(), x.astype(np.float16), BOXES, OUT)
    assert half.dtype == np.float32


def test_forward_validation():
    f = cuproi.prroi_pool
    with pytest.raises(IndexError, match="batch index 2 but the input holds 2 images"):
        f(_x(), np.array([[2, 0, 0, 1, 1]], np.float32), OUT)
    with pytest.raises(ValueError, match="non-finite"):
        f(_x(), np.array([[0, np.nan, 0, 1, 1]], np.float32), OUT)
    with pytest.raises(ValueError, match=r"\(K, 4\) array has no batch index"):
        f(_x(), BOXES[:, 1:], OUT)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        f(_x().astype(np.int32), BOXES, OUT)
    with pytest.raises(ValueError, match="4-D array"):
        f(_x()[0], BOXES, OUT)
    with pytest.raises(ValueError, match="output_size must be positive"):
        f(_x(), BOXES, (0, 3))
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        f(_x(), BOXES, OUT, -1.0)
    with pytest.raises(TypeError, match="must be an array"):
        f(_x(), "boxes", OUT)


@pytest.mark.parametrize("shape", [(2, C, 3, 3), (2, 4, *OUT), (3, C, *OUT)])
def test_grad_output_must_match(shape):
    g = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 3\)"):
        cuproi.prroi_pool_backward(g, BOXES, (N, C, H, W), OUT)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 3\)"):
        cuproi.prroi_pool_box_backward(g, _x(), BOXES, OUT)


def test_backward_validation():
    f = cuproi.prroi_pool_backward
    with pytest.raises(IndexError, match="batch index 3"):
        f(_g(k=1), np.array([[3, 0, 0, 1, 1]], np.float32), (N, C, H, W), OUT)
    with pytest.raises(ValueError, match="4 non-negative ints"):
        f(_g(), BOXES, (N, C, H), OUT)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        f(_g().astype(np.int64), BOXES, (N, C, H, W), OUT)
    with pytest.raises(TypeError, match="positional"):
        f(_g(), BOXES, (N, C, H, W), OUT, 1.0, True)  # deterministic is keyword-only
    b = cuproi.prroi_pool_box_backward
    with pytest.raises(IndexError, match="batch index 3"):
        b(_g(k=1), _x(), np.array([[3, 0, 0, 1, 1]], np.float32), OUT)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        b(_g(), _x().astype(np.int32), BOXES, OUT)
    with pytest.raises(TypeError, match="positional"):
        b(_g(), _x(), BOXES, OUT, 1.0, True)


def test_inputs_are_not_written_and_strided_inputs_work():
    x = _x(np.float64)
    strided = np.asfortranarray(x)
    boxes = BOXES.copy()
    before = x.copy(), boxes.copy()
    out = cuproi.prroi_pool(strided, boxes, OUT, 0.5)
    np.testing.assert_array_equal(out, cuproi.prroi_pool(x, boxes, OUT, 0.5))
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(boxes, before[1])


# ---- random boxes: the two backends agree ---------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coordinate = st.one_of(
    st.floats(-15, 25, allow_nan=False, width=32),
    st.sampled_from([0.0, 0.5, -0.5, 4.0, 9.5, 10.0, 12.0, -1.0, 1e4, -1e4, 1e30]),
)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 1), _coordinate, _coordinate, _coordinate, _coordinate),
        min_size=1,
        max_size=6,
    ),
    size=st.sampled_from([(1, 1), (2, 3), (3, 2)]),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_backends_agree_on_random_boxes(boxes, size, scale, dtype):
    """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
    hb = host_backend()
    x = features(dtype)
    rois = rois_for(np.array(boxes, np.float64), dtype)
    g = grad(dtype, len(rois), size)
    pairs = [
        (b.prroi_pool(x, rois, size, scale) for b in (_cpu, hb)),
        (b.prroi_pool_backward(g, rois, SHAPE, scale) for b in (_cpu, hb)),
        (b.prroi_pool_box_backward(g, x, rois, scale) for b in (_cpu, hb)),
    ]
    pairs = [[np.asarray(a) for a in pair] for pair in pairs]
    # The box gradient divides differences of averages by the bin size: in float32 its
    # rounding error grows like eps / bin size, so it is compared on bins of 0.05 cells or more.
    extent = (rois[:, 3:] - rois[:, 1:3]) * rois.dtype.type(scale) / np.array(size[::-1])
    wide = (extent >= 0.05).all(1) | (extent <= 0).any(1)
    pairs[2] = [a[wide] for a in pairs[2]]
    for i, (cpu, kernels) in enumerate(pairs):
        assert np.isfinite(cpu).all()
        # Box gradients scale like features / bin size: relative to the largest.
        scale_of = max(1.0, np.abs(cpu).max()) if i == 2 and cpu.size else 1.0
        assert_close(cpu, kernels.astype(np.float64), dtype, scale_of)
