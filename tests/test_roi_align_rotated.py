"""Rotated RoI Align: both backends (the NumPy/SciPy one and the CUDA kernels run on the host)
against the float64 loop oracle of tests/oracles/roi_align_rotated.py, the adjoint identity, the
angle convention (0 degrees is roi_align, 90 and 180 degrees are turns of the map, the clockwise
flag, periodicity), deterministic sums, the int64 entry points, chunking, huge boxes, and the
validation of the public functions."""

import functools

import host
import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import roi_align_rotated as rotated_oracle

import cuproi
import cuproi.roi_align_rotated
from cuproi._cpu import _sampling
from cuproi._cuda import _launch
from cuproi._validate import compute_dtype

SHAPE = (2, 3, 10, 12)
SIZES = [(3, 4), (1, 1), (2, 2)]
SCALES = [1.0, 0.5]

# [batch_index, cx, cy, w, h, angle (degrees)]
ZOO = np.array(
    [
        [0, 5.0, 4.0, 6.0, 3.0, 0.0],
        [1, 6.0, 5.0, 7.5, 4.5, 30.0],
        [0, 3.0, 7.0, 4.0, 6.0, 90.0],
        [1, 8.0, 2.0, 5.0, 5.0, -45.0],
        [0, 1.0, 1.0, 3.0, 8.0, 180.0],
        [1, 11.0, 9.0, 6.0, 2.5, 135.5],
        [0, 6.0, 5.0, 0.0, 0.0, 10.0],  # empty
        [1, 6.0, 5.0, -2.0, 3.0, 20.0],  # negative width
        [0, -6.0, 20.0, 4.0, 4.0, 60.0],  # outside the map
        [1, 6.0, 5.0, 30.0, 26.0, 77.0],  # larger than the map
        [0, 12.5, -0.5, 3.0, 3.0, -270.0],  # on the edges
        [1, 5.5, 4.5, 9.0, 7.0, 405.0],
    ]
)


def features(dtype, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def grad(dtype, k, size, channels=SHAPE[1], seed=3):
    return np.random.default_rng(seed).standard_normal((k, channels, *size)).astype(dtype)


def rois_for(boxes, dtype):
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


@functools.cache
def _oracle(name, dtype, size, scale, *args):
    coord = compute_dtype(dtype).type
    boxes = rois_for(ZOO, dtype).astype(np.float64)
    if name.endswith("backward"):
        g = grad(dtype, len(boxes), size).astype(np.float64)
        fn = rotated_oracle.roi_align_rotated_backward
        return fn(g, boxes, SHAPE, size, scale, *args, coord_dtype=coord)
    x = features(dtype).astype(np.float64)
    return rotated_oracle.roi_align_rotated(x, boxes, size, scale, *args, coord_dtype=coord)


# ---- against the oracle ----------------------------------------------------------------------

FLAGS = [(True, False), (True, True), (False, False), (False, True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [0, 1, 2])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("flags", FLAGS)
def test_forward(backend, dtype, ratio, scale, flags):
    size = (3, 4)
    out = backend.roi_align_rotated(
        features(dtype), rois_for(ZOO, dtype), size, scale, ratio, *flags
    )
    assert out.dtype == dtype and out.shape == (len(ZOO), SHAPE[1], *size)
    assert np.isfinite(out).all()
    assert_close(out, _oracle("roi_align_rotated", dtype, size, scale, ratio, *flags), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [0, 2])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("flags", FLAGS)
def test_backward(backend, dtype, ratio, scale, flags):
    size = (3, 4)
    g = grad(dtype, len(ZOO), size)
    got = backend.roi_align_rotated_backward(g, rois_for(ZOO, dtype), SHAPE, scale, ratio, *flags)
    assert got.dtype == dtype and got.shape == SHAPE
    want = _oracle("roi_align_rotated_backward", dtype, size, scale, ratio, *flags)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ratio", [-1, 3])
def test_other_sizes(backend, size, ratio):
    out = backend.roi_align_rotated(
        features(np.float64), rois_for(ZOO, np.float64), size, 0.7, ratio, True, False
    )
    assert_close(out, _oracle("roi_align_rotated", np.float64, size, 0.7, ratio), np.float64)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("ratio", [0, 2])
def test_adjoint(backend, flags, ratio):
    x = features(np.float64)
    rois = rois_for(ZOO, np.float64)
    g = grad(np.float64, len(rois), (3, 4))
    out = backend.roi_align_rotated(x, rois, (3, 4), 0.5, ratio, *flags)
    back = backend.roi_align_rotated_backward(g, rois, SHAPE, 0.5, ratio, *flags)
    np.testing.assert_allclose((out * g).sum(), (x * back).sum(), rtol=1e-12)


def test_float16(backend):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    size = (3, 4)
    x = features(np.float16)
    rois = rois_for(ZOO, np.float16)
    assert rois.dtype == np.float32
    x64, f32 = x.astype(np.float64), np.float32
    out = backend.roi_align_rotated(x, rois, size, 0.5, 2, True, False)
    assert out.dtype == np.float16
    want = rotated_oracle.roi_align_rotated(x64, ZOO, size, 0.5, 2, coord_dtype=f32)
    assert_close(out, want, np.float16)
    g = grad(np.float16, len(rois), size)
    got = backend.roi_align_rotated_backward(g, rois, SHAPE, 0.5, 2, True, False)
    assert got.dtype == np.float16
    want = rotated_oracle.roi_align_rotated_backward(
        g.astype(np.float64), ZOO, SHAPE, size, 0.5, 2, coord_dtype=f32
    )
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=4e-3, atol=1e-2)


def test_empty_inputs(backend):
    x = features(np.float32)
    rois = np.zeros((0, 6), np.float32)
    out = backend.roi_align_rotated(x, rois, (2, 2), 1.0, 0, True, False)
    assert out.shape == (0, SHAPE[1], 2, 2)
    g = np.zeros((0, SHAPE[1], 2, 2), np.float32)
    got = backend.roi_align_rotated_backward(g, rois, SHAPE, 1.0, 0, True, False)
    assert got.shape == SHAPE and not got.any()
    got = backend.roi_align_rotated_backward(
        g, rois, SHAPE, 1.0, 0, True, False, deterministic=True
    )
    assert got.shape == SHAPE and not got.any()


# ---- the angle convention ----------------------------------------------------------------------


def _random_boxes(k, seed, min_size=1.0):
    rng = np.random.default_rng(seed)
    centre = rng.uniform([-1, -1], [13, 11], (k, 2))
    size = rng.uniform(min_size, 9, (k, 2))
    return np.column_stack([rng.integers(0, 2, k), centre, size, np.zeros(k)])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angle_zero_is_roi_align(backend, aligned, ratio, dtype):
    # At least one cell after scaling: not aligned, a smaller box is widened to one cell about
    # its centre here, from its start by roi_align.
    rotated = _random_boxes(16, 1, min_size=2.1)
    cx, cy, w, h = rotated[:, 1:5].T
    boxes = np.column_stack([rotated[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    x = features(dtype)
    got = backend.roi_align_rotated(x, rois_for(rotated, dtype), (3, 4), 0.5, ratio, aligned, False)
    want = backend.roi_align(x, rois_for(boxes, dtype), (3, 4), 0.5, ratio, aligned)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("aligned", [True, False])
def test_angle_180_reverses_the_bins(backend, aligned):
    boxes = _random_boxes(16, 2)
    turned = boxes.copy()
    turned[:, 5] = 180.0
    x = features(np.float64)
    rois = rois_for(boxes, np.float64)
    out = backend.roi_align_rotated(x, rois, (3, 4), 1.0, 2, aligned, False)
    out180 = backend.roi_align_rotated(x, turned, (3, 4), 1.0, 2, aligned, False)
    np.testing.assert_allclose(out180, out[:, :, ::-1, ::-1], rtol=1e-12, atol=1e-12)


def test_angle_90_is_counter_clockwise(backend):
    """90 degrees on X is 180 degrees on X turned counter-clockwise by np.rot90 (see below).

    np.rot90(X)[i, j] = X[j, W - 1 - i]. A 90-degree counter-clockwise box samples X at
    (cy - xx, cx + yy) (pixel-index coordinates), that is rot90(X) at (W - 1 - cx - yy, cy - xx):
    a box centred at (W - 1 - cx, cy) turned by 180 degrees.
    """
    x = features(np.float64)
    width = x.shape[3]
    z = np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    boxes = _random_boxes(16, 3)
    boxes[:, 5] = 90.0
    other = boxes.copy()
    # aligned: index = coordinate - 0.5, so W - 1 - (cx - 0.5) = (W - cx) - 0.5.
    other[:, 1], other[:, 2], other[:, 5] = boxes[:, 2], width - boxes[:, 1], 180.0
    got = backend.roi_align_rotated(x, boxes, (3, 4), 1.0, 2, True, False)
    want = backend.roi_align_rotated(z, other, (3, 4), 1.0, 2, True, False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # The clockwise flag turns the other way: -90 degrees is a different result.
    cw = backend.roi_align_rotated(x, boxes, (3, 4), 1.0, 2, True, True)
    assert not np.allclose(cw, got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clockwise_negates_and_angles_are_periodic(backend, dtype):
    boxes = _random_boxes(12, 4)
    boxes[:, 5] = np.round(np.random.default_rng(5).uniform(-200, 200, len(boxes)) * 8) / 8
    x = features(dtype)
    rois = rois_for(boxes, dtype)
    base = backend.roi_align_rotated(x, rois, (3, 4), 0.5, 0, True, False)
    negated = rois.copy()
    negated[:, 5] = -negated[:, 5]
    np.testing.assert_array_equal(
        backend.roi_align_rotated(x, negated, (3, 4), 0.5, 0, True, True), base
    )
    turned = rois.copy()
    turned[:, 5] = rois[:, 5] + 720  # exact in float32 too for these angles
    assert (turned[:, 5] - 720 == rois[:, 5]).all()
    np.testing.assert_allclose(
        backend.roi_align_rotated(x, turned, (3, 4), 0.5, 0, True, False),
        base,
        *TOLERANCE[np.dtype(dtype)],
    )


def test_rotation_is_exact_at_quarter_turns():
    from cuproi._cpu.roi_align_rotated import rotation

    angles = np.array([0.0, 90.0, 180.0, 270.0, -90.0, 360.0, 450.0, -540.0])
    c, s = rotation(angles, False, np.float64)
    np.testing.assert_array_equal(c, [1, 0, -1, 0, 0, 1, 0, -1])
    np.testing.assert_array_equal(s, [0, 1, 0, -1, -1, 0, 1, 0])
    c, s = rotation(np.array([30.0, -135.0]), False, np.float64)
    np.testing.assert_allclose(c, [np.sqrt(3) / 2, -np.sqrt(0.5)], rtol=1e-15)
    np.testing.assert_allclose(s, [0.5, -np.sqrt(0.5)], rtol=1e-15)
    for a in (30.0, 90.0, -135.0, 1234.5):
        got = np.ravel(rotation(np.array([a]), False, np.float64))
        np.testing.assert_allclose(got, rotated_oracle.rotation(a), rtol=1e-15, atol=1e-16)


# ---- bounded work and memory ----------------------------------------------------------------


def test_huge_boxes_are_cheap_and_backends_agree():
    """Adaptive sampling of a 10**6-cell box: 5 * 10**5 samples per bin axis, but only those
    near the map are visited (both backends), and they agree."""
    from cuproi import _cpu

    hb = host_backend()
    x = features(np.float32)
    boxes = np.array(
        [
            [0, 5.0, 5.0, 1e6, 1e6, 0.0],
            [1, 5.0, 5.0, 1e6, 3e5, 37.0],
            [0, -4e5, 2e5, 1e6, 1e6, 45.0],
            [1, 3e5, 3e5, 7.0, 2e5, 89.0],
        ],
        np.float32,
    )
    g = grad(np.float32, len(boxes), (2, 2))
    for b in (_cpu, hb):
        out = b.roi_align_rotated(x, boxes, (2, 2), 1.0, 0, True, False)
        assert np.isfinite(out).all()
    cpu = _cpu.roi_align_rotated(x, boxes, (2, 2), 1.0, 0, True, False)
    kern = hb.roi_align_rotated(x, boxes, (2, 2), 1.0, 0, True, False)
    assert_close(cpu, kern.astype(np.float64), np.float32)
    cpu = _cpu.roi_align_rotated_backward(g, boxes, SHAPE, 1.0, 0, True, False)
    kern = hb.roi_align_rotated_backward(g, boxes, SHAPE, 1.0, 0, True, False)
    assert_close(cpu, kern.astype(np.float64), np.float32)


def test_many_samples_in_one_box_are_built_in_pieces(monkeypatch):
    """A fixed sampling_ratio of 300 (90000 samples per bin) in one box: the CPU operator is
    built from pieces of samples within the budget, and matches the host kernels."""
    from cuproi import _cpu

    hb = host_backend()
    x = features(np.float64)
    boxes = np.array([[1, 6.0, 5.0, 7.0, 5.0, 33.0]])
    g = grad(np.float64, 1, (2, 2))
    kern = [
        hb.roi_align_rotated(x, boxes, (2, 2), 1.0, 300, True, False),
        hb.roi_align_rotated_backward(g, boxes, SHAPE, 1.0, 300, True, False),
    ]
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 14)
    cpu = [
        _cpu.roi_align_rotated(x, boxes, (2, 2), 1.0, 300, True, False),
        _cpu.roi_align_rotated_backward(g, boxes, SHAPE, 1.0, 300, True, False),
    ]
    for a, b in zip(cpu, kern, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_cpu_chunks_give_the_same_result(monkeypatch):
    from cuproi import _cpu

    x = features(np.float64)
    rois = rois_for(ZOO, np.float64)
    g = grad(np.float64, len(rois), (3, 4))

    def run():
        return [
            _cpu.roi_align_rotated(x, rois, (3, 4), 0.7, 0, True, False),
            _cpu.roi_align_rotated_backward(g, rois, SHAPE, 0.7, 0, True, False),
        ]

    whole = run()
    chunks = _sampling.chunks
    seen = []

    def small(cost, budget=None):
        parts = list(chunks(cost, 200))
        seen.append(len(parts))
        return iter(parts)

    monkeypatch.setattr(_sampling, "chunks", small)
    split = run()
    assert seen and max(seen) > 3
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


# ---- deterministic sums and the int64 entry points (host kernels) ---------------------------


def _overlapping(dtype, k=24, seed=0):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(k, seed, 0.5)
    boxes[:, 5] = rng.uniform(-180, 180, k)
    return boxes.astype(dtype), rng.standard_normal((k, SHAPE[1], 3, 4)).astype(dtype)


def _gradients(b, rois, g, deterministic):
    det = {"deterministic": deterministic}
    return [
        b.roi_align_rotated_backward(g, rois, SHAPE, 0.5, 2, True, False, **det),
        b.roi_align_rotated_backward(g, rois, SHAPE, 0.5, 0, False, True, **det),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_matches_oracle(backend, dtype):
    rois, g = _overlapping(dtype)
    expected = [
        rotated_oracle.roi_align_rotated_backward(
            g, rois, SHAPE, (3, 4), 0.5, 2, True, False, dtype
        ),
        rotated_oracle.roi_align_rotated_backward(
            g, rois, SHAPE, (3, 4), 0.5, 0, False, True, dtype
        ),
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
    x = features(np.float64)
    rois = rois_for(ZOO, np.float64)
    g = grad(np.float64, len(rois), (2, 3))

    def run():
        b = host_backend()
        return [
            b.roi_align_rotated(x, rois, (2, 3), 0.7, 0, True, False),
            b.roi_align_rotated_backward(g, rois, SHAPE, 0.7, 2, False, True),
            b.roi_align_rotated_backward(g, rois, SHAPE, 0.7, 2, True, False, deterministic=True),
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
    b = host_backend()
    x = features(np.float32)
    rois = np.array([[5, 4.0, 4.0, 6.0, 6.0, 30], [-1, 4.0, 4.0, 6.0, 6.0, 0]], np.float32)
    assert not b.roi_align_rotated(x, rois, (2, 2), 1.0, 2, True, False).any()
    g = np.ones((2, SHAPE[1], 2, 2), np.float32)
    assert not b.roi_align_rotated_backward(g, rois, SHAPE, 1.0, 2, True, False).any()


# ---- the public functions --------------------------------------------------------------------

BOXES = np.array([[0, 4.0, 3.0, 5.0, 3.0, 30.0], [1, 6.0, 5.0, 4.0, 6.0, -60.0]], np.float32)


def test_public_functions_equal_the_backend():
    from cuproi import _cpu

    x = features(np.float64)
    rois = BOXES.astype(np.float64)
    np.testing.assert_array_equal(
        cuproi.roi_align_rotated(x, BOXES, (2, 3), 0.5, 2, False, True),
        _cpu.roi_align_rotated(x, rois, (2, 3), 0.5, 2, False, True),
    )
    g = grad(np.float64, 2, (2, 3))
    np.testing.assert_array_equal(
        cuproi.roi_align_rotated_backward(
            g, BOXES, SHAPE, (2, 3), 0.5, 2, False, True, deterministic=True
        ),
        _cpu.roi_align_rotated_backward(g, rois, SHAPE, 0.5, 2, False, True),
    )


def test_defaults_and_box_list():
    x = features(np.float32)
    default = cuproi.roi_align_rotated(x, BOXES, 3)
    explicit = cuproi.roi_align_rotated(x, BOXES, (3, 3), 1.0, 0, True, False)
    np.testing.assert_array_equal(default, explicit)
    listed = cuproi.roi_align_rotated(x, [BOXES[:1, 1:], BOXES[1:, 1:]], 3)
    np.testing.assert_array_equal(listed, default)
    g = grad(np.float32, 2, (3, 3))
    np.testing.assert_array_equal(
        cuproi.roi_align_rotated_backward(g, [BOXES[:1, 1:], BOXES[1:, 1:]], SHAPE, 3),
        cuproi.roi_align_rotated_backward(g, BOXES, SHAPE, 3),
    )
    assert cuproi.roi_align_rotated(x, [], 3).shape == (0, SHAPE[1], 3, 3)


@pytest.mark.parametrize(
    "boxes, error, match",
    [
        (BOXES[:, :5], ValueError, r"\(K, 6\).*axis-aligned"),
        (BOXES[:, :4], ValueError, r"\(K, 6\) array \[batch_index, cx, cy, w, h, angle\]"),
        (BOXES[0], ValueError, r"\(K, 6\)"),
        ([BOXES[:, 1:5]], ValueError, r"boxes\[0\] must be an \(L, 5\)"),
        ([BOXES[:, 1:]] * 3, ValueError, "list of 3 per-image arrays"),
        (np.array([[0.5, 1, 1, 2, 2, 0]]), ValueError, "whole numbers"),
        (np.array([[2, 1, 1, 2, 2, 0]]), IndexError, "holds 2 images"),
        (np.array([[-1, 1, 1, 2, 2, 0]]), IndexError, "batch index -1"),
        (np.array([[0, 1, 1, 2, 2, np.nan]]), ValueError, "non-finite"),
        (np.array([[0, np.inf, 1, 2, 2, 0]]), ValueError, "non-finite"),
        (np.array([[0, 1, 1, 3e6, 2, 0]]), ValueError, "exceed"),
        (np.array([[0, 1, 1, 2, 2, 0]], np.complex64), TypeError, "real numbers"),
    ],
)
def test_box_validation(boxes, error, match):
    x = features(np.float32)
    with pytest.raises(error, match=match):
        cuproi.roi_align_rotated(x, boxes, 2)
    g = grad(np.float32, 1 if np.ndim(boxes) == 2 and len(boxes) == 1 else 2, (2, 2))
    with pytest.raises(error, match=match):
        cuproi.roi_align_rotated_backward(g, boxes, SHAPE, 2)


def test_other_validation():
    x = features(np.float32)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        cuproi.roi_align_rotated(x.astype(np.int32), BOXES, 2)
    with pytest.raises(ValueError, match="4-D"):
        cuproi.roi_align_rotated(x[0], BOXES, 2)
    with pytest.raises(ValueError, match="output_size must be positive"):
        cuproi.roi_align_rotated(x, BOXES, 0)
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        cuproi.roi_align_rotated(x, BOXES, 2, spatial_scale=0.0)
    with pytest.raises(TypeError, match="sampling_ratio must be an int"):
        cuproi.roi_align_rotated(x, BOXES, 2, sampling_ratio=1.5)
    with pytest.raises(ValueError, match="scale 1e-300 is not a positive float32"):
        cuproi.roi_align_rotated(x, BOXES, 2, spatial_scale=1e-300)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 2\)"):
        cuproi.roi_align_rotated_backward(grad(np.float32, 2, (3, 3)), BOXES, SHAPE, 2)
    with pytest.raises(ValueError, match="input_shape"):
        cuproi.roi_align_rotated_backward(grad(np.float32, 2, (2, 2)), BOXES, (2, 3, 10), 2)


def test_inputs_are_not_written_and_strided_inputs_work():
    x = features(np.float64, (2, 3, 10, 24))
    strided = x[:, :, :, ::2]
    boxes = np.asfortranarray(BOXES.astype(np.float64))
    before = x.copy(), boxes.copy()
    np.testing.assert_array_equal(
        cuproi.roi_align_rotated(strided, boxes, 2),
        cuproi.roi_align_rotated(np.ascontiguousarray(strided), BOXES.astype(np.float64), 2),
    )
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(boxes, before[1])


# ---- random boxes: the two backends agree ---------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_value = st.one_of(
    st.floats(-15, 25, allow_nan=False, width=32),
    st.sampled_from([0.0, 0.5, -0.5, 4.0, 9.5, 10.0, 12.0, -1.0, 1e4, -1e4]),
)
_angle = st.one_of(
    st.floats(-720, 720, allow_nan=False, width=32),
    st.sampled_from([0.0, 90.0, -90.0, 180.0, 45.0, 1e6]),
)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 1), _value, _value, _value, _value, _angle),
        min_size=1,
        max_size=6,
    ),
    size=st.sampled_from([(1, 1), (2, 3), (3, 2)]),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    ratio=st.integers(-1, 3),
    flags=st.sampled_from(FLAGS),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_backends_agree_on_random_boxes(boxes, size, scale, ratio, flags, dtype):
    """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
    from cuproi import _cpu

    hb = host_backend()
    x = features(dtype)
    rois = rois_for(np.array(boxes, np.float64), dtype)
    g = grad(dtype, len(rois), size)
    pairs = [
        (b.roi_align_rotated(x, rois, size, scale, ratio, *flags) for b in (_cpu, hb)),
        (b.roi_align_rotated_backward(g, rois, SHAPE, scale, ratio, *flags) for b in (_cpu, hb)),
    ]
    for cpu, kernels in pairs:
        assert np.isfinite(cpu).all()
        assert_close(cpu, kernels.astype(np.float64), dtype)
