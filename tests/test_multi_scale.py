"""multi_scale_roi_align: level assignment (boundaries included), values, per-level gradients,
the adjoint identity, determinism and validation, on the CPU backend and on the CUDA kernels run
on the host, against the float64 loop oracle of tests/oracles/multi_scale_roi_align.py."""

import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import multi_scale_roi_align as multi_scale_oracle

import cuproi
from cuproi import _pyramid
from cuproi._cpu.multi_scale_roi_align import box_levels
from cuproi._cuda import _launch
from cuproi._validate import compute_dtype
from cuproi.multi_scale_roi_align import MAX_LEVELS

# Two 512x640 images through a P2-P5 pyramid (strides 4 to 32).
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE = (512, 640)
N, C = 2, 2
SHAPES = [(N, C, int(IMAGE[0] * s), int(IMAGE[1] * s)) for s in SCALES]
SIZE = (3, 4)
# Sides (pixels) at which torchvision's LevelMapper steps from one level to the next with the
# default canonical_scale=224, canonical_level=4 and k_min = 2: 112 (P2 -> P3), 224, 448.
STEPS = [112.0, 224.0, 448.0]


def pyramid(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def boxes_zoo():
    """Boxes of every level, on and around the level steps, degenerate and outside ones."""
    rows = [
        [0, 10.0, 20.0, 30.0, 45.0],  # small: P2
        [1, 100.0, 50.0, 180.0, 170.0],  # ~98 px: P2
        [0, 40.0, 60.0, 240.0, 200.0],  # ~167 px: P3
        [1, 0.0, 0.0, 300.0, 260.0],  # ~279 px: P4
        [0, 30.0, 10.0, 530.0, 500.0],  # ~495 px: P5
        [1, -100.0, -50.0, 900.0, 700.0],  # huge, beyond the image: P5 (clamped)
        [0, 5.0, 5.0, 5.0, 5.0],  # a point: area 0 -> P2
        [1, 50.0, 60.0, 250.0, 60.0],  # zero height -> P2
        [0, 300.0, 280.0, 100.0, 60.0],  # flipped on both axes: area > 0 -> by its size (P3)
        [1, 300.0, 20.0, 100.0, 260.0],  # flipped on one axis: area < 0 -> P2
        [0, 600.0, 480.0, 700.0, 560.0],  # partly outside the image
    ]
    for step in STEPS:  # w = step, h = step * f: area = step**2 * f around the step
        for f in (1.0, 1 - 1e-6, 1 - 2e-6, 1 + 1e-6, 1 - 1e-9, 0.999, 1.001):
            rows.append([len(rows) % 2, 20.0, 30.0, 20.0 + step, 30.0 + step * f])
    return np.array(rows)


def rois_for(boxes, dtype):
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


def thresholds(dtype, canonical_scale=224, canonical_level=4, scales=SCALES):
    canonical = (canonical_scale, canonical_level)
    return _pyramid.level_rule(scales, len(scales), np.dtype(dtype), *canonical)[1]


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ---- level assignment -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_levels_match_torchvision_rule(dtype):
    rois = rois_for(boxes_zoo(), dtype)
    want = multi_scale_oracle.box_levels(rois, SCALES)
    np.testing.assert_array_equal(box_levels(rois, thresholds(dtype)), want)
    assert set(want) == {0, 1, 2, 3}


def test_level_steps_and_the_eps_outside_the_log():
    """On a step: the coarser level; 1e-6 short (within eps): still coarser; 2e-6: finer."""
    rows = boxes_zoo()[11:]
    levels = box_levels(rois_for(rows, np.float32), thresholds(np.float32)).reshape(3, 7)
    #                 f = 1, 1-1e-6, 1-2e-6, 1+1e-6, 1-1e-9, 0.999, 1.001
    np.testing.assert_array_equal(
        levels, [[1, 1, 0, 1, 1, 0, 1], [2, 2, 1, 2, 2, 1, 2], [3, 3, 2, 3, 3, 2, 3]]
    )


@pytest.mark.parametrize("canonical", [(224, 4), (56, 3), (100, 2), (224, 6), (500.5, 5)])
def test_levels_with_other_canonical_sizes(canonical):
    rng = np.random.default_rng(3)
    side = np.exp(rng.uniform(np.log(2), np.log(3000), (400, 2)))
    rois = np.column_stack([np.zeros(400), np.zeros((400, 2)), side]).astype(np.float64)
    want = multi_scale_oracle.box_levels(rois, SCALES, *canonical)
    np.testing.assert_array_equal(box_levels(rois, thresholds(np.float64, *canonical)), want)


def constant_pyramid(dtype):
    """Level l is the constant 2**l: a box pooled inside the map reads its level back."""
    return [np.full(s, 2.0**i, dtype) for i, s in enumerate(SHAPES)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_pick_the_same_levels(backend, dtype):
    """The level each backend samples (read back from constant maps) is the oracle's."""
    boxes = boxes_zoo()
    inside = (boxes[:, 1:] >= 0).all(1) & (boxes[:, [3]] <= IMAGE[1]).all(1)
    inside &= (boxes[:, 4] <= IMAGE[0]) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])
    rois = rois_for(boxes[inside], dtype)
    out = backend.multi_scale_roi_align(
        constant_pyramid(dtype), rois, (2, 2), SCALES, 2, True, thresholds(dtype)
    )
    got = np.round(np.log2(out.astype(np.float64))).astype(np.int64)
    want = multi_scale_oracle.box_levels(rois, SCALES)
    assert (got == want[:, None, None, None]).all()


# ---- values and gradients -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_forward_matches_oracle(backend, dtype, aligned, ratio):
    x = pyramid(dtype)
    rois = rois_for(boxes_zoo(), dtype)
    out = backend.multi_scale_roi_align(x, rois, SIZE, SCALES, ratio, aligned, thresholds(dtype))
    assert out.dtype == dtype and out.shape == (len(rois), C, *SIZE)
    want = multi_scale_oracle.multi_scale_roi_align(
        [a.astype(np.float64) for a in x],
        rois,
        SIZE,
        SCALES,
        ratio,
        aligned,
        coord_dtype=compute_dtype(dtype).type,
    )
    assert_close(out, want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_matches_oracle(backend, dtype, aligned, deterministic):
    rois = rois_for(boxes_zoo(), dtype)
    g = np.random.default_rng(1).standard_normal((len(rois), C, *SIZE)).astype(dtype)
    grads = backend.multi_scale_roi_align_backward(
        g, rois, SHAPES, SCALES, -1, aligned, thresholds(dtype), deterministic=deterministic
    )
    want = multi_scale_oracle.multi_scale_roi_align_backward(
        g, rois, SHAPES, SIZE, SCALES, -1, aligned, coord_dtype=compute_dtype(dtype).type
    )
    assert len(grads) == len(SHAPES)
    for got, w, shape in zip(grads, want, SHAPES, strict=True):
        assert got.dtype == dtype and got.shape == shape
        assert_close(got, w, dtype)


def test_float16_on_host_kernels():
    b = host_backend()
    x = pyramid(np.float16)
    rois = rois_for(boxes_zoo(), np.float16)
    out = b.multi_scale_roi_align(x, rois, SIZE, SCALES, 2, True, thresholds(np.float16))
    assert out.dtype == np.float16
    want = multi_scale_oracle.multi_scale_roi_align(
        [a.astype(np.float64) for a in x], rois, SIZE, SCALES, 2, True, coord_dtype=np.float32
    )
    assert_close(out, want, np.float16)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float16)
    grads = b.multi_scale_roi_align_backward(
        g, rois, SHAPES, SCALES, 2, True, thresholds(np.float16)
    )
    want = multi_scale_oracle.multi_scale_roi_align_backward(
        g, rois, SHAPES, SIZE, SCALES, 2, True, coord_dtype=np.float32
    )
    for got, w in zip(grads, want, strict=True):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), w, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adjoint_identity(backend, dtype):
    """<forward(x), g> == sum over levels <x_l, backward(g)_l>."""
    x = pyramid(dtype, seed=4)
    rois = rois_for(boxes_zoo(), dtype)
    t = thresholds(dtype)
    out = backend.multi_scale_roi_align(x, rois, SIZE, SCALES, -1, False, t)
    g = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    grads = backend.multi_scale_roi_align_backward(g, rois, SHAPES, SCALES, -1, False, t)
    lhs = np.vdot(out.astype(np.float64), g.astype(np.float64))
    pairs = zip(x, grads, strict=True)
    rhs = sum(np.vdot(a.astype(np.float64), b.astype(np.float64)) for a, b in pairs)
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(lhs, rhs, rtol=rtol)


def test_backends_agree_to_rounding():
    x = pyramid(np.float32)
    rois = rois_for(boxes_zoo(), np.float32)
    t = thresholds(np.float32)
    host = host_backend()
    from cuproi import _cpu

    a = _cpu.multi_scale_roi_align(x, rois, SIZE, SCALES, -1, False, t)
    b = host.multi_scale_roi_align(x, rois, SIZE, SCALES, -1, False, t)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_single_level_is_roi_align(backend):
    x = pyramid(np.float64)[1]
    rois = rois_for(boxes_zoo(), np.float64)
    out = backend.multi_scale_roi_align([x], rois, SIZE, [1 / 8], 2, True, ())
    np.testing.assert_array_equal(out, backend.roi_align(x, rois, SIZE, 1 / 8, 2, True))
    g = np.random.default_rng(2).standard_normal(out.shape)
    (grad,) = backend.multi_scale_roi_align_backward(g, rois, [x.shape], [1 / 8], 2, True, ())
    np.testing.assert_allclose(
        grad, backend.roi_align_backward(g, rois, x.shape, 1 / 8, 2, True), rtol=1e-13, atol=1e-13
    )


def test_empty_levels_and_no_boxes(backend):
    x = pyramid(np.float32)
    t = thresholds(np.float32)
    small = rois_for(boxes_zoo()[:2], np.float32)  # both on P2
    g = np.ones((2, C, *SIZE), np.float32)
    grads = backend.multi_scale_roi_align_backward(g, small, SHAPES, SCALES, 2, True, t)
    assert grads[0].any() and not any(a.any() for a in grads[1:])
    none = np.zeros((0, 5), np.float32)
    out = backend.multi_scale_roi_align(x, none, SIZE, SCALES, 2, True, t)
    assert out.shape == (0, C, *SIZE)
    grads = backend.multi_scale_roi_align_backward(
        np.zeros((0, C, *SIZE), np.float32), none, SHAPES, SCALES, 2, True, t, deterministic=True
    )
    assert [a.shape for a in grads] == SHAPES and not any(a.any() for a in grads)


# ---- the public functions -------------------------------------------------------------------


def test_public_api_equals_oracle_and_accepts_box_lists():
    x = pyramid(np.float64)
    boxes = boxes_zoo()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(N)]
    flat = np.concatenate([boxes[boxes[:, 0] == i] for i in range(N)])
    out = cuproi.multi_scale_roi_align(x, per_image, SIZE, SCALES, 2, True)
    np.testing.assert_array_equal(out, cuproi.multi_scale_roi_align(x, flat, SIZE, SCALES, 2, True))
    assert_close(
        out, multi_scale_oracle.multi_scale_roi_align(x, flat, SIZE, SCALES, 2, True), np.float64
    )
    g = np.random.default_rng(0).standard_normal(out.shape)
    grads = cuproi.multi_scale_roi_align_backward(g, per_image, SHAPES, SIZE, SCALES, 2, True)
    want = multi_scale_oracle.multi_scale_roi_align_backward(g, flat, SHAPES, SIZE, SCALES, 2, True)
    for a, w in zip(grads, want, strict=True):
        assert_close(a, w, np.float64)


def test_canonical_arguments_reach_the_rule():
    x = pyramid(np.float64)
    boxes = boxes_zoo()
    out = cuproi.multi_scale_roi_align(
        x, boxes, SIZE, SCALES, 2, False, canonical_scale=56, canonical_level=3
    )
    want = multi_scale_oracle.multi_scale_roi_align(x, boxes, SIZE, SCALES, 2, False, 56, 3)
    assert_close(out, want, np.float64)


def test_approximate_scales_sample_at_their_value():
    """Levels come from the rounded exponents; sampling uses the scales as given."""
    x = pyramid(np.float64)
    scales = [0.26, 0.124, 1 / 16, 0.031]
    boxes = boxes_zoo()[:6]
    out = cuproi.multi_scale_roi_align(x, boxes, SIZE, scales, 2, True)
    want = multi_scale_oracle.multi_scale_roi_align(x, boxes, SIZE, scales, 2, True)
    assert_close(out, want, np.float64)


# ---- determinism and index width on the host kernels ----------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_backward_is_order_independent(dtype):
    b = host_backend()
    rng = np.random.default_rng(7)
    k = 48
    side = np.exp(rng.uniform(np.log(20), np.log(500), (k, 2)))
    corner = rng.uniform(0, 100, (k, 2))
    boxes = np.column_stack([rng.integers(0, N, k), corner, corner + side]).astype(dtype)
    g = rng.standard_normal((k, C, *SIZE)).astype(dtype)
    t = thresholds(dtype)
    order = rng.permutation(k)

    def grads(rois, g, deterministic):
        return b.multi_scale_roi_align_backward(
            g, rois, SHAPES, SCALES, 2, True, t, deterministic=deterministic
        )

    first = grads(boxes, g, True)
    again = grads(np.ascontiguousarray(boxes[order]), np.ascontiguousarray(g[order]), True)
    for a, c in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, c)
    plain = grads(boxes, g, False)
    shuffled = grads(np.ascontiguousarray(boxes[order]), np.ascontiguousarray(g[order]), False)
    assert not all(np.array_equal(a, c) for a, c in zip(plain, shuffled, strict=True))


def test_int64_index_variants(monkeypatch):
    import host

    x = pyramid(np.float64)
    rois = rois_for(boxes_zoo()[:12], np.float64)
    t = thresholds(np.float64)
    g = np.random.default_rng(3).standard_normal((len(rois), C, *SIZE))

    def run():
        b = host_backend()
        return [
            b.multi_scale_roi_align(x, rois, SIZE, SCALES, -1, False, t),
            *b.multi_scale_roi_align_backward(g, rois, SHAPES, SCALES, -1, False, t),
            *b.multi_scale_roi_align_backward(
                g, rois, SHAPES, SCALES, -1, False, t, deterministic=True
            ),
        ]

    narrow = run()
    calls = []
    launch = host.launch
    monkeypatch.setattr(_launch, "LARGE", 0)
    monkeypatch.setattr(host, "launch", lambda *a, **k: (calls.append(a[1]), launch(*a, **k)))
    wide = run()
    assert calls and all(name.endswith("_i64") for name in calls)
    for a, c in zip(narrow, wide, strict=True):
        np.testing.assert_array_equal(a, c)


def test_eight_levels_on_host_kernels():
    """The most levels the fused kernel takes, against the CPU backend."""
    from cuproi import _cpu

    scales = [2.0 ** -(i + 1) for i in range(MAX_LEVELS)]
    shapes = [(1, 1, 2048 >> (i + 1), 2048 >> (i + 1)) for i in range(MAX_LEVELS)]
    x = [np.full(s, 2.0**i) for i, s in enumerate(shapes)]
    side = 2.0 ** np.arange(1, 12)
    rois = np.column_stack([np.zeros(len(side)), np.zeros(len(side)), np.zeros(len(side))])
    rois = np.column_stack([rois, side, side])
    t = thresholds(np.float64, 32, 3, scales)
    a = _cpu.multi_scale_roi_align(x, rois, (1, 1), scales, 1, True, t)
    b = host_backend().multi_scale_roi_align(x, rois, (1, 1), scales, 1, True, t)
    np.testing.assert_array_equal(a, b)
    assert len(set(np.round(np.log2(b[:, 0, 0, 0])))) == MAX_LEVELS


# ---- validation -------------------------------------------------------------------------------


def _call(**changes):
    args = {
        "features": pyramid(np.float32),
        "boxes": boxes_zoo()[:3],
        "output_size": SIZE,
        "spatial_scales": SCALES,
    }
    args.update(changes)
    return cuproi.multi_scale_roi_align(**args)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"features": np.zeros((2, 2, 8, 8))}, TypeError, "features must be a list"),
        ({"features": []}, ValueError, "1 to 8 levels"),
        ({"features": [np.zeros((1, 1, 4, 4), np.float32)] * 9}, ValueError, "1 to 8 levels"),
        ({"spatial_scales": SCALES[:3]}, ValueError, "one scale per level"),
        ({"spatial_scales": 0.25}, TypeError, "sequence of floats"),
        ({"spatial_scales": [1 / 4, 1 / 8, 1 / 32, 1 / 64]}, ValueError, "halve"),
        ({"spatial_scales": [1 / 32, 1 / 16, 1 / 8, 1 / 4]}, ValueError, "finest first"),
        ({"spatial_scales": [1 / 4, 1 / 8, 0.0, 1 / 32]}, ValueError, "positive"),
        ({"spatial_scales": [1 / 4, np.nan, 1 / 16, 1 / 32]}, ValueError, "finite"),
        ({"canonical_scale": 0}, ValueError, "canonical_scale must be positive"),
        ({"canonical_scale": np.inf}, ValueError, "canonical_scale must be finite"),
        ({"canonical_level": 4.5}, TypeError, "canonical_level must be an int"),
        ({"boxes": np.array([[2, 0, 0, 5, 5]])}, IndexError, "batch index 2"),
        ({"boxes": np.array([[0, 0, 0, np.inf, 5]])}, ValueError, "non-finite"),
        ({"boxes": np.zeros((3, 4))}, ValueError, r"\(K, 5\)"),
        ({"output_size": 0}, ValueError, "output_size must be positive"),
    ],
)
def test_validation(changes, error, message):
    with pytest.raises(error, match=message):
        _call(**changes)


def test_levels_must_share_dtype_batch_and_channels():
    x = pyramid(np.float32)
    with pytest.raises(TypeError, match=r"features\[2\] is float64"):
        _call(features=[x[0], x[1], x[2].astype(np.float64), x[3]])
    with pytest.raises(ValueError, match=r"features\[1\] has \(2, 3\)"):
        _call(features=[x[0], np.zeros((2, 3, 64, 80), np.float32), x[2], x[3]])
    with pytest.raises(ValueError, match=r"features\[3\] must be a 4-D array"):
        _call(features=[x[0], x[1], x[2], x[3][0]])


def test_backward_validation():
    g = np.zeros((3, C, *SIZE), np.float32)
    boxes = boxes_zoo()[:3]
    back = cuproi.multi_scale_roi_align_backward
    with pytest.raises(ValueError, match=r"input_shapes\[1\] has \(2, 3\)"):
        back(g, boxes, [SHAPES[0], (2, 3, 8, 8)], SIZE, SCALES[:2])
    with pytest.raises(ValueError, match="one scale per level"):
        back(g, boxes, SHAPES, SIZE, SCALES[:2])
    with pytest.raises(ValueError, match="grad_output must have shape"):
        back(g[:2], boxes, SHAPES, SIZE, SCALES)
    with pytest.raises(TypeError, match="input_shapes must be a list with one"):
        back(g, boxes, SHAPES[0], SIZE, SCALES)
    with pytest.raises(IndexError, match="batch index 5"):
        back(g, np.array([[5, 0, 0, 4, 4]] * 3), SHAPES, SIZE, SCALES)
