"""Rotated RoI Align (detectron2 ROIAlignRotated, mmcv RoIAlignRotated) on every backend against
the float64 loop oracle of tests/oracles/roi_align_rotated.py: the shared checks of roi_op_tester
over the aligned and clockwise flags, then what is particular to rotated boxes (the angle
convention: 0 degrees is roi_align, 90 and 180 degrees are turns of the map, the clockwise flag,
periodicity, exact quarter turns; half precision, huge boxes, many samples in one box, the
defaults, (K, 6) boxes)."""

import host
import numpy as np
import pytest
from conftest import TOLERANCE, examples, host_backend
from hypothesis import given
from hypothesis import strategies as st
from oracles import roi_align_rotated as rotated_oracle
from roi_op_tester import SHAPE, RoIOpTester, assert_close, features, rois_for

import cuproi
from cuproi import _cpu
from cuproi._cpu import _sampling

SIZE = (3, 4)
# (aligned, clockwise)
FLAGS = [(True, False), (True, True), (False, False), (False, True)]

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


def arguments(case):
    """(output_size, spatial_scale, sampling_ratio, aligned, clockwise) of ``case``."""
    return case.get("size", SIZE), case["scale"], case["ratio"], case["aligned"], case["clockwise"]


class TestRoIAlignRotated(RoIOpTester):
    size = SIZE
    forward_cases = [
        {"scale": scale, "ratio": ratio, "aligned": aligned, "clockwise": clockwise}
        for scale in (1.0, 0.5)
        for ratio in (0, 1, 2)
        for aligned, clockwise in FLAGS
    ] + [
        {"size": size, "scale": 0.7, "ratio": ratio, "aligned": True, "clockwise": False}
        for size in ((3, 4), (1, 1), (2, 2))
        for ratio in (-1, 3)
    ]
    # At scale 0.5, the deterministic sums.
    backward_cases = [
        {"scale": s, "ratio": ratio, "aligned": aligned, "clockwise": cw, "deterministic": s < 1}
        for s in (1.0, 0.5)
        for ratio in (0, 2)
        for aligned, cw in FLAGS
    ]
    adjoint_cases = [
        {"scale": 0.5, "ratio": ratio, "aligned": aligned, "clockwise": clockwise}
        for ratio in (0, 2)
        for aligned, clockwise in FLAGS
    ]
    test_validation = None  # test_validation.py checks every argument of every function

    def forward(self, x, boxes, case):
        return cuproi.roi_align_rotated(x, boxes, *arguments(case))

    def backward(self, g, x, boxes, case, **options):
        options = {"deterministic": case.get("deterministic", False), **options}
        return cuproi.roi_align_rotated_backward(g, boxes, x.shape, *arguments(case), **options)

    def oracle(self, x, boxes, case, coord_dtype):
        boxes = boxes.astype(coord_dtype)  # the angles too, as the backends read them
        return rotated_oracle.roi_align_rotated(x, boxes, *arguments(case), coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        boxes = boxes.astype(coord_dtype)
        return rotated_oracle.roi_align_rotated_backward(
            g, boxes, x.shape, *arguments(case), coord_dtype=coord_dtype
        )

    def boxes(self, case):
        return ZOO

    def assert_forward(self, out, expected, dtype):
        assert np.isfinite(out).all()
        assert_close(out, expected, dtype)


def rotated(on, x, boxes, *args):
    """The public forward on the backend ``on``, as NumPy."""
    return on.get(cuproi.roi_align_rotated(on.put(x), on.put(boxes), *args))


def test_float16(on):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    x = features(np.float16)
    rois = rois_for(ZOO, np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    x64, f32 = x.astype(np.float64), np.float32
    out = rotated(on, x, rois, SIZE, 0.5, 2, True, False)
    assert out.dtype == np.float16
    want = rotated_oracle.roi_align_rotated(x64, ZOO, SIZE, 0.5, 2, coord_dtype=f32)
    assert_close(out, want, np.float16)
    g = np.random.default_rng(3).standard_normal(out.shape).astype(np.float16)
    got = cuproi.roi_align_rotated_backward(on.put(g), on.put(rois), SHAPE, SIZE, 0.5, 2)
    got = on.get(got)
    assert got.dtype == np.float16
    want = rotated_oracle.roi_align_rotated_backward(
        g.astype(np.float64), ZOO, SHAPE, SIZE, 0.5, 2, coord_dtype=f32
    )
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=4e-3, atol=1e-2)


def test_defaults_and_box_dtype():
    """Defaults: a square output, scale 1, adaptive sampling, aligned, counter-clockwise; float32
    boxes with float64 features are read in float64; an empty list is no boxes."""
    x = features(np.float64)
    boxes = ZOO.astype(np.float32)
    default = cuproi.roi_align_rotated(x, boxes, 3)
    explicit = _cpu.roi_align_rotated(x, boxes.astype(np.float64), (3, 3), 1.0, 0, True, False)
    np.testing.assert_array_equal(default, explicit)
    g = np.random.default_rng(3).standard_normal(default.shape)
    np.testing.assert_array_equal(
        cuproi.roi_align_rotated_backward(g, boxes, SHAPE, 3),
        _cpu.roi_align_rotated_backward(g, ZOO, SHAPE, 1.0, 0, True, False),
    )
    assert cuproi.roi_align_rotated(x, [], 3).shape == (0, SHAPE[1], 3, 3)


# ---- the angle convention ----------------------------------------------------------------------


def random_boxes(k, seed, min_size=1.0):
    """``k`` boxes at angle 0 about the map, at least ``min_size`` wide and high."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform([-1, -1], [13, 11], (k, 2))
    size = rng.uniform(min_size, 9, (k, 2))
    return np.column_stack([rng.integers(0, 2, k), centre, size, np.zeros(k)])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angle_zero_is_roi_align(on, aligned, ratio, dtype):
    # At least one cell after scaling: not aligned, a smaller box is widened to one cell about
    # its centre here, from its start by roi_align.
    boxes = random_boxes(16, 1, min_size=2.1)
    cx, cy, w, h = boxes[:, 1:5].T
    corners = np.column_stack([boxes[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    x = features(dtype)
    got = rotated(on, x, rois_for(boxes, dtype), SIZE, 0.5, ratio, aligned, False)
    want = cuproi.roi_align(on.put(x), on.put(rois_for(corners, dtype)), SIZE, 0.5, ratio, aligned)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(got, on.get(want), rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("aligned", [True, False])
def test_angle_180_reverses_the_bins(on, aligned):
    boxes = random_boxes(16, 2)
    turned = boxes.copy()
    turned[:, 5] = 180.0
    x = features(np.float64)
    out = rotated(on, x, boxes, SIZE, 1.0, 2, aligned, False)
    out180 = rotated(on, x, turned, SIZE, 1.0, 2, aligned, False)
    np.testing.assert_allclose(out180, out[:, :, ::-1, ::-1], rtol=1e-12, atol=1e-12)


def test_angle_90_is_counter_clockwise(on):
    """90 degrees on X is 180 degrees on X turned counter-clockwise by np.rot90 (see below).

    np.rot90(X)[i, j] = X[j, W - 1 - i]. A 90-degree counter-clockwise box samples X at
    (cy - xx, cx + yy) (pixel-index coordinates), that is rot90(X) at (W - 1 - cx - yy, cy - xx):
    a box centred at (W - 1 - cx, cy) turned by 180 degrees.
    """
    x = features(np.float64)
    width = x.shape[3]
    z = np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    boxes = random_boxes(16, 3)
    boxes[:, 5] = 90.0
    other = boxes.copy()
    # aligned: index = coordinate - 0.5, so W - 1 - (cx - 0.5) = (W - cx) - 0.5.
    other[:, 1], other[:, 2], other[:, 5] = boxes[:, 2], width - boxes[:, 1], 180.0
    got = rotated(on, x, boxes, SIZE, 1.0, 2, True, False)
    want = rotated(on, z, other, SIZE, 1.0, 2, True, False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # The clockwise flag turns the other way: -90 degrees is a different result.
    assert not np.allclose(rotated(on, x, boxes, SIZE, 1.0, 2, True, True), got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clockwise_negates_and_angles_are_periodic(on, dtype):
    boxes = random_boxes(12, 4)
    boxes[:, 5] = np.round(np.random.default_rng(5).uniform(-200, 200, len(boxes)) * 8) / 8
    x = features(dtype)
    rois = rois_for(boxes, dtype)
    base = rotated(on, x, rois, SIZE, 0.5, 0, True, False)
    negated = rois.copy()
    negated[:, 5] = -negated[:, 5]
    np.testing.assert_array_equal(rotated(on, x, negated, SIZE, 0.5, 0, True, True), base)
    turned = rois.copy()
    turned[:, 5] = rois[:, 5] + 720  # exact in float32 too for these angles
    assert (turned[:, 5] - 720 == rois[:, 5]).all()
    np.testing.assert_allclose(
        rotated(on, x, turned, SIZE, 0.5, 0, True, False), base, *TOLERANCE[np.dtype(dtype)]
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


def test_huge_boxes_are_cheap_and_backends_agree(kernels_on):
    """Adaptive sampling of a 10**6-cell box: 5 * 10**5 samples per bin axis, but only those
    near the map are visited (the kernels and the NumPy backend), and they agree."""
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
    g = np.random.default_rng(3).standard_normal((len(boxes), SHAPE[1], 2, 2)).astype(np.float32)
    args = ((2, 2), 1.0, 0, True, False)
    out = rotated(kernels_on, x, boxes, *args)
    assert np.isfinite(out).all()
    assert_close(_cpu.roi_align_rotated(x, boxes, *args), out, np.float32)
    put = kernels_on.put
    grad = cuproi.roi_align_rotated_backward(put(g), put(boxes), SHAPE, *args)
    want = _cpu.roi_align_rotated_backward(g, boxes, SHAPE, *args[1:])
    assert_close(want, kernels_on.get(grad).astype(np.float64), np.float32)


def test_many_samples_in_one_box_are_built_in_pieces(kernels_on, monkeypatch):
    """A fixed sampling_ratio of 300 (90000 samples per bin) in one box: the CPU operator is
    built from pieces of samples within the budget, and matches the kernels."""
    x = features(np.float64)
    boxes = np.array([[1, 6.0, 5.0, 7.0, 5.0, 33.0]])
    g = np.random.default_rng(3).standard_normal((1, SHAPE[1], 2, 2))
    put = kernels_on.put
    kernels = [
        rotated(kernels_on, x, boxes, (2, 2), 1.0, 300),
        cuproi.roi_align_rotated_backward(put(g), put(boxes), SHAPE, (2, 2), 1.0, 300),
    ]
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 14)
    cpu = [
        _cpu.roi_align_rotated(x, boxes, (2, 2), 1.0, 300, True, False),
        _cpu.roi_align_rotated_backward(g, boxes, SHAPE, 1.0, 300, True, False),
    ]
    for a, b in zip(cpu, kernels, strict=True):
        np.testing.assert_allclose(a, kernels_on.get(b), rtol=1e-11, atol=1e-12)


# ---- random boxes: the NumPy backend and the host kernels agree ------------------------------

_value = st.one_of(
    st.floats(-15, 25, allow_nan=False, width=32),
    st.sampled_from([0.0, 0.5, -0.5, 4.0, 9.5, 10.0, 12.0, -1.0, 1e4, -1e4]),
)
_angle = st.one_of(
    st.floats(-720, 720, allow_nan=False, width=32),
    st.sampled_from([0.0, 90.0, -90.0, 180.0, 45.0, 1e6]),
)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@examples(40)
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
    hb = host_backend()
    x = features(dtype)
    rois = rois_for(np.array(boxes, np.float64), dtype)
    g = np.random.default_rng(3).standard_normal((len(rois), SHAPE[1], *size)).astype(dtype)
    pairs = [
        (b.roi_align_rotated(x, rois, size, scale, ratio, *flags) for b in (_cpu, hb)),
        (b.roi_align_rotated_backward(g, rois, SHAPE, scale, ratio, *flags) for b in (_cpu, hb)),
    ]
    for cpu, kernels in pairs:
        assert np.isfinite(cpu).all()
        assert_close(cpu, kernels.astype(np.float64), dtype)
