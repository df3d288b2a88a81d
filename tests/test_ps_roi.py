"""Position-sensitive RoI Align and RoI Pool (R-FCN): both backends (the NumPy/SciPy one and the
CUDA kernels run on the host) against the float64 loop oracles of tests/oracles/ps_roi_*.py, the
adjoint identity, torchvision's known defects (0/0, unequal clipping) fixed, deterministic sums, the
int64 entry points, chunking, and the validation of the public functions."""

import functools

import host
import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import ps_roi_align as ps_align_oracle
from oracles import ps_roi_pool as ps_pool_oracle
from roi_op_tester import RoIOpTester, box_zoo

import cuproi
import cuproi.ps_roi_align
import cuproi.ps_roi_pool
from cuproi._cpu import _sampling
from cuproi._cuda import _launch
from cuproi._validate import compute_dtype

C_OUT = 2
SIZES = [(3, 4), (1, 1), (2, 2)]


def shape_for(size, c_out=C_OUT):
    return (2, c_out * size[0] * size[1], 10, 12)


def features(dtype, size, seed=0):
    return np.random.default_rng(seed).standard_normal(shape_for(size)).astype(dtype)


def rois_for(boxes, dtype):
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


@functools.cache
def _oracle(name, dtype, size, scale, *args):
    """Oracle results, cached (the loops are slow)."""
    coord = compute_dtype(dtype).type
    boxes = box_zoo(scale)
    oracle = ps_align_oracle if name.startswith("ps_roi_align") else ps_pool_oracle
    if name.endswith("backward"):
        g = grad(dtype, len(boxes), size).astype(np.float64)
        return getattr(oracle, name)(
            g, boxes, shape_for(size), size, scale, *args, coord_dtype=coord
        )
    x = features(dtype, size).astype(np.float64)  # the rounded features the backend sees
    return getattr(oracle, name)(x, boxes, size, scale, *args, coord_dtype=coord)


def grad(dtype, k, size, seed=3):
    return np.random.default_rng(seed).standard_normal((k, C_OUT, *size)).astype(dtype)


# ---- against the oracles ---------------------------------------------------------------------


class TestPSRoIAlign(RoIOpTester):
    """Position-sensitive RoI Align: C = C_OUT * PH * PW input channels."""

    forward_cases = [
        {"size": size, "scale": scale, "ratio": ratio}
        for size in SIZES
        for scale in (1.0, 0.5, 0.7)
        for ratio in (-1, 0, 1, 2)
    ]
    backward_cases = [
        {"size": size, "scale": scale, "ratio": ratio}
        for size in ((3, 4), (2, 2))
        for scale in (1.0, 0.7)
        for ratio in (-1, 2)
    ]
    adjoint_cases = [
        {"size": size, "scale": 0.7, "ratio": ratio}
        for size in ((3, 4), (2, 2))
        for ratio in (-1, 1, 2)
    ]
    test_validation = None  # the validation tests below

    def input_shape(self, case):
        return shape_for(case["size"])

    def output_tail(self, case):
        return (C_OUT, *case["size"])

    def forward(self, x, boxes, case):
        return cuproi.ps_roi_align(x, boxes, case["size"], case["scale"], case["ratio"])

    def backward(self, g, x, boxes, case, **options):
        args = (x.shape, case["size"], case["scale"], case["ratio"])
        return cuproi.ps_roi_align_backward(g, boxes, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        args = (case["size"], case["scale"], case["ratio"])
        return ps_align_oracle.ps_roi_align(x, boxes, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (x.shape, case["size"], case["scale"], case["ratio"])
        return ps_align_oracle.ps_roi_align_backward(g, boxes, *args, coord_dtype=coord_dtype)

    def assert_forward(self, out, expected, dtype):
        assert np.isfinite(out).all()
        assert_close(out, expected, dtype)


class TestPSRoIPool(TestPSRoIAlign):
    forward_cases = [
        {"size": size, "scale": scale, "ratio": 0}
        for size in (*SIZES, (7, 5))
        for scale in (1.0, 0.5, 0.7)
    ]
    backward_cases = [
        {"size": size, "scale": scale, "ratio": 0}
        for size in ((3, 4), (2, 2))
        for scale in (1.0, 0.7)
    ]
    # Also in the bins that reach the last row and column (one clipping for both).
    adjoint_cases = [
        {"size": size, "scale": scale, "ratio": 0}
        for size in ((3, 4), (7, 5))
        for scale in (1.0, 0.7)
    ]

    def forward(self, x, boxes, case):
        return cuproi.ps_roi_pool(x, boxes, case["size"], case["scale"])

    def backward(self, g, x, boxes, case, **options):
        args = (x.shape, case["size"], case["scale"])
        return cuproi.ps_roi_pool_backward(g, boxes, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        args = (case["size"], case["scale"])
        return ps_pool_oracle.ps_roi_pool(x, boxes, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (x.shape, case["size"], case["scale"])
        return ps_pool_oracle.ps_roi_pool_backward(g, boxes, *args, coord_dtype=coord_dtype)

    def assert_forward(self, out, expected, dtype):
        assert_close(out, expected, dtype)


def test_float16(backend):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    size = (3, 4)
    x = features(np.float16, size)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32
    x64, f32 = x.astype(np.float64), np.float32
    out = backend.ps_roi_align(x, rois, size, 0.5, 2)
    assert out.dtype == np.float16
    expected = ps_align_oracle.ps_roi_align(x64, boxes, size, 0.5, 2, coord_dtype=f32)
    assert_close(out, expected, np.float16)
    out = backend.ps_roi_pool(x, rois, size, 0.5)
    assert out.dtype == np.float16
    assert_close(
        out, ps_pool_oracle.ps_roi_pool(x64, boxes, size, 0.5, coord_dtype=f32), np.float16
    )
    g = grad(np.float16, len(boxes), size)
    g64 = g.astype(np.float64)
    got = backend.ps_roi_align_backward(g, rois, x.shape, 0.5, 2)
    assert got.dtype == np.float16
    expected = ps_align_oracle.ps_roi_align_backward(g64, boxes, x.shape, size, 0.5, 2, f32)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=4e-3, atol=1e-2)
    got = backend.ps_roi_pool_backward(g, rois, x.shape, 0.5)
    assert got.dtype == np.float16
    expected = ps_pool_oracle.ps_roi_pool_backward(g64, boxes, x.shape, size, 0.5, f32)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=4e-3, atol=1e-2)


# ---- the semantics that differ from torchvision ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_size_box_gives_zero_not_nan(backend, dtype):
    """torchvision divides by gh * gw = 0 here (NaN); cuproi divides by max(gh * gw, 1)."""
    x = features(dtype, (2, 2))
    rois = rois_for(
        [[0, 4.0, 4.0, 4.0, 4.0], [1, 3.0, 2.5, 9.0, 2.5], [0, 7.5, 5.5, 2.5, 1.5]], dtype
    )
    out = backend.ps_roi_align(x, rois, (2, 2), 1.0, -1)
    np.testing.assert_array_equal(out, 0)
    grad_in = backend.ps_roi_align_backward(np.ones_like(out), rois, x.shape, 1.0, -1)
    np.testing.assert_array_equal(grad_in, 0)
    # With a fixed sampling_ratio the samples collapse onto one point: its value.
    point = backend.ps_roi_align(x, rois[:1], (2, 2), 1.0, 2)
    np.testing.assert_allclose(
        point[0, 0, 0, 0],
        x[0, 0, 3, 3] * 0.25 + x[0, 0, 3, 4] * 0.25 + x[0, 0, 4, 3] * 0.25 + x[0, 0, 4, 4] * 0.25,
        rtol=1e-6,
    )


def test_ps_roi_pool_reads_the_last_row_and_column(backend):
    """Bins reaching the map's end average up to row H - 1 and column W - 1 (torchvision's
    forward stops one short), and the backward spreads over exactly those cells."""
    n, c, h, w = 1, 4, 6, 6
    x = np.arange(n * c * h * w, dtype=np.float64).reshape(n, c, h, w)
    rois = np.array([[0, 2.0, 2.0, 6.0, 6.0]])
    out = backend.ps_roi_pool(x, rois, (2, 2), 1.0)
    np.testing.assert_array_equal(out[0, 0, 1, 1], x[0, 3, 4:6, 4:6].mean())
    got = backend.ps_roi_pool_backward(np.ones_like(out), rois, x.shape, 1.0)
    expected = np.zeros((h, w))
    expected[4:6, 4:6] = 0.25
    np.testing.assert_array_equal(got[0, 3], expected)
    # torchvision's forward clipping, for the record: one cell only.
    tv = ps_pool_oracle.ps_roi_pool(x, rois, 2, 1.0, clip_last=True)
    assert tv[0, 0, 1, 1] == x[0, 3, 4, 4]


def test_channel_mapping(backend):
    """Output channel c, bin (ph, pw) reads input channel (c * PH + ph) * PW + pw."""
    ph, pw, c_out = 2, 3, 3
    x = np.broadcast_to(
        np.arange(c_out * ph * pw, dtype=np.float32)[None, :, None, None],
        (1, c_out * ph * pw, 5, 7),
    ).copy()
    rois = np.array([[0, 0.0, 0.0, 7.0, 5.0]], np.float32)
    expected = np.arange(c_out * ph * pw, dtype=np.float32).reshape(1, c_out, ph, pw)
    np.testing.assert_allclose(backend.ps_roi_align(x, rois, (ph, pw), 1.0, 2), expected, rtol=1e-6)
    np.testing.assert_allclose(backend.ps_roi_pool(x, rois, (ph, pw), 1.0), expected, rtol=1e-6)


def test_empty_inputs(backend):
    x = features(np.float32, (2, 2))
    none = np.zeros((0, 5), np.float32)
    assert backend.ps_roi_align(x, none, (2, 2), 1.0, -1).shape == (0, C_OUT, 2, 2)
    assert backend.ps_roi_pool(x, none, (2, 2), 1.0).shape == (0, C_OUT, 2, 2)
    g = np.zeros((0, C_OUT, 2, 2), np.float32)
    for got in (
        backend.ps_roi_align_backward(g, none, x.shape, 1.0, -1),
        backend.ps_roi_pool_backward(g, none, x.shape, 1.0),
    ):
        assert got.shape == x.shape and not got.any()
    empty = np.zeros((2, 0, 4, 4), np.float32)  # no channels
    rois = rois_for(box_zoo(1.0), np.float32)
    assert backend.ps_roi_align(empty, rois, (2, 2), 1.0, -1).shape == (12, 0, 2, 2)
    assert backend.ps_roi_pool(empty, rois, (2, 2), 1.0).shape == (12, 0, 2, 2)


def test_cpu_chunks_give_the_same_result(monkeypatch):
    """A tiny budget splits the boxes into many chunks: the same values, bit for bit."""
    from cuproi import _cpu

    size = (3, 4)
    x = features(np.float64, size)
    rois = rois_for(box_zoo(0.7), np.float64)
    g = grad(np.float64, len(rois), size)

    def run():
        return [
            _cpu.ps_roi_align(x, rois, size, 0.7, -1),
            _cpu.ps_roi_align_backward(g, rois, x.shape, 0.7, -1),
            _cpu.ps_roi_pool(x, rois, size, 0.7),
            _cpu.ps_roi_pool_backward(g, rois, x.shape, 0.7),
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


def test_cpu_backward_in_runs_of_pixels(monkeypatch):
    """The CPU backward writes its gradient a run of pixels at a time: many runs, one short."""
    from cuproi import _cpu
    from cuproi._cpu import _cells

    monkeypatch.setattr(_cells, "BLOCK", 7)  # 120 pixels: 17 runs of 7, then 1
    size, scale = (3, 4), 0.7
    rois = rois_for(box_zoo(scale), np.float64)
    g = grad(np.float64, len(rois), size)
    got = _cpu.ps_roi_align_backward(g, rois, shape_for(size), scale, 2)
    assert_close(got, _oracle("ps_roi_align_backward", np.float64, size, scale, 2), np.float64)
    got = _cpu.ps_roi_pool_backward(g, rois, shape_for(size), scale)
    assert_close(got, _oracle("ps_roi_pool_backward", np.float64, size, scale), np.float64)


# ---- deterministic sums and the int64 entry points (host kernels) ---------------------------


def _overlapping(dtype, k=24, seed=0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [9, 7], (k, 2))
    size = rng.uniform(0.5, 8, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size]).astype(dtype)
    g = rng.standard_normal((k, C_OUT, 3, 4)).astype(dtype)
    return rois, g


def _gradients(b, rois, g, deterministic):
    shape = shape_for((3, 4))
    det = {"deterministic": deterministic}
    return [
        b.ps_roi_align_backward(g, rois, shape, 0.5, 2, **det),
        b.ps_roi_align_backward(g, rois, shape, 0.5, -1, **det),
        b.ps_roi_pool_backward(g, rois, shape, 0.5, **det),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_matches_oracle(backend, dtype):
    rois, g = _overlapping(dtype)
    shape = shape_for((3, 4))
    expected = [
        ps_align_oracle.ps_roi_align_backward(g, rois, shape, (3, 4), 0.5, 2, dtype),
        ps_align_oracle.ps_roi_align_backward(g, rois, shape, (3, 4), 0.5, -1, dtype),
        ps_pool_oracle.ps_roi_pool_backward(g, rois, shape, (3, 4), 0.5, dtype),
    ]
    for got, want in zip(_gradients(backend, rois, g, True), expected, strict=True):
        assert got.dtype == dtype
        assert_close(got, want, dtype)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_kernels_sum_independently_of_order(dtype):
    b = host_backend()
    rois, g = _overlapping(dtype)
    order = np.random.default_rng(1).permutation(len(rois))
    shuffled = np.ascontiguousarray(rois[order]), np.ascontiguousarray(g[order])
    first = _gradients(b, rois, g, True)
    again = _gradients(b, *shuffled, True)
    for a, c in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, c)
    # The default floating-point atomics do depend on the order: the test can fail.
    plain = _gradients(b, rois, g, False)
    reordered = _gradients(b, *shuffled, False)
    assert not all(np.array_equal(a, c) for a, c in zip(plain, reordered, strict=True))


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
def test_int64_index_variants(monkeypatch):
    """The _i64 entry points give the same results as the int32 ones (forced on small arrays)."""
    x = features(np.float64, (2, 3))
    rois = rois_for(box_zoo(0.7), np.float64)
    g = np.random.default_rng(0).standard_normal((len(rois), C_OUT, 2, 3))

    def run():
        b = host_backend()
        return [
            b.ps_roi_align(x, rois, (2, 3), 0.7, -1),
            b.ps_roi_align_backward(g, rois, x.shape, 0.7, 2),
            b.ps_roi_align_backward(g, rois, x.shape, 0.7, 2, deterministic=True),
            b.ps_roi_pool(x, rois, (2, 3), 0.7),
            b.ps_roi_pool_backward(g, rois, x.shape, 0.7),
            b.ps_roi_pool_backward(g, rois, x.shape, 0.7, deterministic=True),
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
    x = features(np.float32, (2, 2))
    rois = np.array([[5, 1.0, 1.0, 6.0, 6.0], [-1, 1.0, 1.0, 6.0, 6.0]], np.float32)
    assert not b.ps_roi_align(x, rois, (2, 2), 1.0, 2).any()
    assert not b.ps_roi_pool(x, rois, (2, 2), 1.0).any()
    g = np.ones((2, C_OUT, 2, 2), np.float32)
    assert not b.ps_roi_align_backward(g, rois, x.shape, 1.0, 2).any()
    assert not b.ps_roi_pool_backward(g, rois, x.shape, 1.0).any()


# ---- the public functions --------------------------------------------------------------------

N, H, W = 2, 6, 7
PS_OUT = (2, 3)
C = 2 * PS_OUT[0] * PS_OUT[1]
BOXES = np.array([[0, 0.5, 1.0, 4.0, 3.5], [1, 1.0, 0.0, 5.5, 4.5]], np.float32)


def _x(dtype=np.float32, channels=C):
    return np.random.default_rng(0).standard_normal((N, channels, H, W)).astype(dtype)


def _g(k=2, c_out=2, size=PS_OUT, dtype=np.float32):
    return np.ones((k, c_out, *size), dtype)


def test_public_functions_equal_the_backend():
    from cuproi import _cpu

    x = _x(np.float64)
    rois = BOXES.astype(np.float64)
    np.testing.assert_array_equal(
        cuproi.ps_roi_align(x, BOXES, PS_OUT, 0.5, 2),
        _cpu.ps_roi_align(x, rois, PS_OUT, 0.5, 2),
    )
    np.testing.assert_array_equal(
        cuproi.ps_roi_pool(x, BOXES, PS_OUT, 0.5), _cpu.ps_roi_pool(x, rois, PS_OUT, 0.5)
    )
    g = _g(dtype=np.float64)
    np.testing.assert_array_equal(
        cuproi.ps_roi_align_backward(g, BOXES, x.shape, PS_OUT, 0.5, 2, deterministic=True),
        _cpu.ps_roi_align_backward(g, rois, x.shape, 0.5, 2),
    )
    np.testing.assert_array_equal(
        cuproi.ps_roi_pool_backward(g, BOXES, x.shape, PS_OUT, 0.5, deterministic=True),
        _cpu.ps_roi_pool_backward(g, rois, x.shape, 0.5),
    )


def test_defaults_and_box_list():
    x = _x()
    per_image = [BOXES[:1, 1:], BOXES[1:, 1:]]
    np.testing.assert_array_equal(
        cuproi.ps_roi_align(x, per_image, PS_OUT), cuproi.ps_roi_align(x, BOXES, PS_OUT, 1.0, -1)
    )
    np.testing.assert_array_equal(
        cuproi.ps_roi_pool(x, per_image, PS_OUT), cuproi.ps_roi_pool(x, BOXES, PS_OUT, 1.0)
    )
    grads = cuproi.ps_roi_align_backward(_g(), per_image, x.shape, PS_OUT)
    assert grads.shape == x.shape and grads.dtype == np.float32
    # An int output_size means (n, n): 2 x 2 needs a multiple of 4 channels.
    assert cuproi.ps_roi_pool(_x(channels=8), BOXES, 2).shape == (2, 2, 2, 2)


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
@pytest.mark.parametrize("channels", [5, 7, 13])
def test_channels_must_be_a_multiple_of_the_bins(op, channels):
    with pytest.raises(
        ValueError, match=rf"{channels} channels, which is not a multiple of output_size 2 x 3 = 6"
    ):
        getattr(cuproi, op)(_x(channels=channels), BOXES, PS_OUT)


@pytest.mark.parametrize("op", ["ps_roi_align_backward", "ps_roi_pool_backward"])
def test_backward_input_shape_channels(op):
    with pytest.raises(ValueError, match=r"input_shape has 13 channels, which is not a multiple"):
        getattr(cuproi, op)(_g(), BOXES, (N, 13, H, W), PS_OUT)


@pytest.mark.parametrize("op", ["ps_roi_align_backward", "ps_roi_pool_backward"])
@pytest.mark.parametrize(
    "shape",
    [(2, C, *PS_OUT), (2, 3, *PS_OUT), (3, 2, *PS_OUT), (2, 2, 3, 2), (2, 2, 2, 2)],
)
def test_grad_output_must_match(op, shape):
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 2, 2, 3\)"):
        getattr(cuproi, op)(np.ones(shape, np.float32), BOXES, (N, C, H, W), PS_OUT)


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
def test_forward_validation(op):
    f = getattr(cuproi, op)
    with pytest.raises(IndexError, match="batch index 2 but the input holds 2 images"):
        f(_x(), np.array([[2, 0, 0, 1, 1]], np.float32), PS_OUT)
    with pytest.raises(ValueError, match="non-finite"):
        f(_x(), np.array([[0, np.nan, 0, 1, 1]], np.float32), PS_OUT)
    with pytest.raises(ValueError, match=r"\(K, 4\) array has no batch index"):
        f(_x(), BOXES[:, 1:], PS_OUT)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        f(_x().astype(np.int32), BOXES, PS_OUT)
    with pytest.raises(ValueError, match="4-D array"):
        f(_x()[0], BOXES, PS_OUT)
    with pytest.raises(ValueError, match="output_size must be positive"):
        f(_x(), BOXES, (0, 3))
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        f(_x(), BOXES, PS_OUT, -1.0)
    with pytest.raises(TypeError, match="must be an array"):
        f(_x(), "boxes", PS_OUT)


def test_sampling_ratio_validation():
    with pytest.raises(TypeError, match="sampling_ratio must be an int"):
        cuproi.ps_roi_align(_x(), BOXES, PS_OUT, 1.0, 1.5)
    with pytest.raises(ValueError, match="sampling_ratio must be at most"):
        cuproi.ps_roi_align_backward(_g(), BOXES, _x().shape, PS_OUT, 1.0, 10**6)


@pytest.mark.parametrize("op", ["ps_roi_align_backward", "ps_roi_pool_backward"])
def test_backward_validation(op):
    f = getattr(cuproi, op)
    with pytest.raises(IndexError, match="batch index 3"):
        f(_g(k=1), np.array([[3, 0, 0, 1, 1]], np.float32), (N, C, H, W), PS_OUT)
    with pytest.raises(ValueError, match="4 non-negative ints"):
        f(_g(), BOXES, (N, C, H), PS_OUT)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        f(_g().astype(np.int64), BOXES, (N, C, H, W), PS_OUT)
    args = (_g(), BOXES, (N, C, H, W), PS_OUT, 1.0) + ((-1,) if "align" in op else ())
    with pytest.raises(TypeError, match="positional"):
        f(*args, True)  # deterministic is keyword-only


def test_inputs_are_not_written_and_strided_inputs_work():
    x = _x(np.float64)
    strided = np.asfortranarray(x)
    boxes = BOXES.copy()
    before = x.copy(), boxes.copy()
    out = cuproi.ps_roi_align(strided, boxes, PS_OUT, 0.5)
    np.testing.assert_array_equal(out, cuproi.ps_roi_align(x, boxes, PS_OUT, 0.5))
    np.testing.assert_array_equal(
        cuproi.ps_roi_pool(strided, boxes.astype(np.int64), PS_OUT),
        cuproi.ps_roi_pool(x, boxes.astype(np.int64).astype(np.float64), PS_OUT),
    )
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(boxes, before[1])


# ---- random boxes: the two backends agree ---------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_coordinate = st.one_of(
    st.floats(-15, 25, allow_nan=False, width=32),
    st.sampled_from([0.0, 0.5, -0.5, 4.0, 9.5, 10.0, 12.0, -1.0, 1e4, -1e4]),
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
    ratio=st.integers(-1, 3),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_backends_agree_on_random_boxes(boxes, size, scale, ratio, dtype):
    """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
    from cuproi import _cpu

    hb = host_backend()
    x = features(dtype, size)
    rois = rois_for(np.array(boxes, np.float64), dtype)
    g = grad(dtype, len(rois), size)
    pairs = [
        (b.ps_roi_align(x, rois, size, scale, ratio) for b in (_cpu, hb)),
        (b.ps_roi_align_backward(g, rois, x.shape, scale, ratio) for b in (_cpu, hb)),
        (b.ps_roi_pool(x, rois, size, scale) for b in (_cpu, hb)),
        (b.ps_roi_pool_backward(g, rois, x.shape, scale) for b in (_cpu, hb)),
    ]
    for cpu, kernels in pairs:
        assert np.isfinite(cpu).all()
        assert_close(cpu, kernels.astype(np.float64), dtype)
