"""multi_scale_roi_align (torchvision's MultiScaleRoIAlign) on every backend against the float64
loop oracle of tests/oracles/multi_scale_roi_align.py: the shared checks of roi_op_tester on a
P2-P5 pyramid, then what is particular to a pyramid (the level rule and its steps, the level the
kernels read, canonical sizes, half precision, one level is roi_align, levels without boxes, eight
levels, the validation of levels and scales)."""

import numpy as np
import pytest
from conftest import CUPY
from oracles import multi_scale_roi_align as multi_scale_oracle
from pyramids import IMAGE, SCALES, SHAPES, SIZE, C, N, boxes_zoo, pyramid, thresholds
from roi_op_tester import RoIOpTester, assert_close

import cuproi
from cuproi import _cpu
from cuproi._cpu.multi_scale_roi_align import box_levels
from cuproi._validate import compute_dtype
from cuproi.multi_scale_roi_align import MAX_LEVELS


def rois_for(boxes, dtype):
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


# ---- the shared checks ------------------------------------------------------------------------


def levels(x):
    """The pyramid's (N, C, H_l, W_l) levels: views of the packed features ``x``."""
    ends = np.cumsum([h * w for *_, h, w in SHAPES])
    return [
        x[..., end - h * w : end].reshape(*x.shape[:2], h, w)
        for (*_, h, w), end in zip(SHAPES, ends, strict=True)
    ]


def packed(grads):
    """Per-level (N, C, H_l, W_l) arrays laid end to end: (N, C, 1, sum of H_l * W_l)."""
    xp = CUPY.get_array_module(grads[0])
    return xp.concatenate([g.reshape(*g.shape[:2], 1, g.shape[2] * g.shape[3]) for g in grads], -1)


def arguments(case):
    """(output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level)."""
    scales = case.get("scales", SCALES)
    return SIZE, scales, case["ratio"], case["aligned"], *case.get("canonical", (224, 4))


def with_arguments(backward, **changes):
    """The forward (or the backward) on the valid inputs ``v`` with ``changes``: values, or
    functions of the valid ones."""

    def call(v):
        args = {"boxes": v.boxes, "output_size": SIZE, "spatial_scales": SCALES}
        if backward:
            args |= {"grad_output": v.g, "input_shapes": [a.shape for a in levels(v.x)]}
        else:
            args["features"] = levels(v.x)
        for name, change in changes.items():
            args[name] = change(args[name]) if callable(change) else change
        op = cuproi.multi_scale_roi_align_backward if backward else cuproi.multi_scale_roi_align
        return op(**args)

    return call


# Pyramids, scales and level rules refused: (label, changes to the valid arguments, exception,
# message), of the forward then of the backward. The checks every op shares are
# test_validation.py's.
BAD_FORWARD = [
    ("no level", {"features": []}, ValueError, "1 to 8 levels"),
    ("nine levels", {"features": [np.zeros((1, 1, 4, 4))] * 9}, ValueError, "1 to 8 levels"),
    ("levels of two dtypes", {"features": lambda x: [*x[:2], x[2].astype(np.float32), x[3]]},
     TypeError, r"features\[2\] is float32"),
    ("levels of two channel counts",
     {"features": lambda x: [x[0], np.zeros((2, 3, 64, 80)), *x[2:]]},
     ValueError, r"features\[1\] has \(2, 3\)"),
    ("a level of 3 dimensions", {"features": lambda x: [*x[:3], x[3][0]]}, ValueError,
     r"features\[3\] must be a 4-D array"),
    ("a scale missing", {"spatial_scales": SCALES[:3]}, ValueError, "one scale per level"),
    ("one scale", {"spatial_scales": 0.25}, TypeError, "sequence of floats"),
    ("a level skipped", {"spatial_scales": (1 / 4, 1 / 8, 1 / 32, 1 / 64)}, ValueError, "halve"),
    ("coarsest first", {"spatial_scales": SCALES[::-1]}, ValueError, "finest first"),
    ("a zero scale", {"spatial_scales": (1 / 4, 1 / 8, 0.0, 1 / 32)}, ValueError, "positive"),
    ("a NaN scale", {"spatial_scales": (1 / 4, np.nan, 1 / 16, 1 / 32)}, ValueError, "finite"),
]  # fmt: skip
BAD_BACKWARD = [
    ("levels of two channel counts",
     {"input_shapes": lambda s: [s[0], (2, 3, 8, 8)], "spatial_scales": SCALES[:2]},
     ValueError, r"input_shapes\[1\] has \(2, 3\)"),
    ("a scale missing", {"spatial_scales": SCALES[:2]}, ValueError, "one scale per level"),
    ("one shape", {"input_shapes": lambda s: s[0]},
     TypeError, "input_shapes must be a list with one"),
]  # fmt: skip


class TestMultiScaleRoIAlign(RoIOpTester):
    """The pyramid goes through the shared checks as one array, its levels flattened and laid end
    to end (``packed``): the forward cuts it into the levels the public functions take (strided
    views), the backward lays the levels' gradients end to end again. The adjoint identity is
    then ``<forward(x), g> == sum over levels <x_l, grad_l>``."""

    shape = (N, C, 1, sum(h * w for *_, h, w in SHAPES))
    size = SIZE
    forward_cases = [
        {"ratio": ratio, "aligned": aligned} for ratio in (-1, 2) for aligned in (False, True)
    ] + [
        # The canonical arguments reach the level rule.
        {"ratio": 2, "aligned": False, "canonical": (56, 3)},
        # Levels from the rounded exponents; sampling at the scales as given.
        {"ratio": 2, "aligned": True, "scales": (0.26, 0.124, 1 / 16, 0.031)},
    ]
    backward_cases = [
        {"ratio": -1, "aligned": aligned, "deterministic": deterministic}
        for aligned in (False, True)
        for deterministic in (False, True)
    ]
    adjoint_cases = [{"ratio": -1, "aligned": False}, {"ratio": 2, "aligned": True}]

    def boxes(self, case):
        return boxes_zoo()

    def forward(self, x, boxes, case):
        return cuproi.multi_scale_roi_align(levels(x), boxes, *arguments(case))

    def backward(self, g, x, boxes, case, **options):
        options = {"deterministic": case.get("deterministic", False), **options}
        shapes = [s.shape for s in levels(x)]
        args = arguments(case)
        return packed(cuproi.multi_scale_roi_align_backward(g, boxes, shapes, *args, **options))

    def oracle(self, x, boxes, case, coord_dtype):
        return multi_scale_oracle.multi_scale_roi_align(
            levels(x), boxes.astype(coord_dtype), *arguments(case), coord_dtype=coord_dtype
        )

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        shapes = [s.shape for s in levels(x)]
        grads = multi_scale_oracle.multi_scale_roi_align_backward(
            g, boxes.astype(coord_dtype), shapes, *arguments(case), coord_dtype=coord_dtype
        )
        return packed(grads)

    invalid = [
        (f"{kind} {label}", with_arguments(kind == "backward", **changes), *raises)
        for kind, rows in (("forward", BAD_FORWARD), ("backward", BAD_BACKWARD))
        for label, changes, *raises in rows
    ]


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


def constant_pyramid(dtype, shapes=SHAPES):
    """Level l is the constant 2**l: a box pooled inside the map reads its level back."""
    return [np.full(s, 2.0**i, dtype) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_pick_the_same_levels(on, dtype):
    """The level each backend samples (read back from constant maps) is the oracle's."""
    boxes = boxes_zoo()
    inside = (boxes[:, 1:] >= 0).all(1) & (boxes[:, [3]] <= IMAGE[1]).all(1)
    inside &= (boxes[:, 4] <= IMAGE[0]) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])
    rois = rois_for(boxes[inside], dtype)
    x = [on.put(a) for a in constant_pyramid(dtype)]
    out = on.get(cuproi.multi_scale_roi_align(x, on.put(rois), (2, 2), SCALES, 2, True))
    got = np.round(np.log2(out.astype(np.float64))).astype(np.int64)
    want = multi_scale_oracle.box_levels(rois, SCALES)
    assert (got == want[:, None, None, None]).all()


def test_eight_levels(kernels_on):
    """The most levels the fused kernel takes, against the NumPy backend."""
    scales = [2.0 ** -(i + 1) for i in range(MAX_LEVELS)]
    shapes = [(1, 1, 2048 >> (i + 1), 2048 >> (i + 1)) for i in range(MAX_LEVELS)]
    x = constant_pyramid(np.float64, shapes)
    side = 2.0 ** np.arange(1, 12)
    rois = np.column_stack([np.zeros((len(side), 3)), side, side])
    t = thresholds(np.float64, 32, 3, scales)
    want = _cpu.multi_scale_roi_align(x, rois, (1, 1), scales, 1, True, t)
    put = kernels_on.put
    got = cuproi.multi_scale_roi_align([put(a) for a in x], put(rois), 1, scales, 1, True, 32, 3)
    got = kernels_on.get(got)
    np.testing.assert_array_equal(got, want)
    assert len(set(np.round(np.log2(got[:, 0, 0, 0])))) == MAX_LEVELS


# ---- values and gradients -----------------------------------------------------------------


def test_float16(on):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    x = pyramid(np.float16)
    rois = rois_for(boxes_zoo(), np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    out = cuproi.multi_scale_roi_align([on.put(a) for a in x], on.put(rois), SIZE, SCALES, 2, True)
    out = on.get(out)
    assert out.dtype == np.float16
    want = multi_scale_oracle.multi_scale_roi_align(
        [a.astype(np.float64) for a in x], rois, SIZE, SCALES, 2, True, coord_dtype=np.float32
    )
    assert_close(out, want, np.float16)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float16)
    grads = cuproi.multi_scale_roi_align_backward(
        on.put(g), on.put(rois), SHAPES, SIZE, SCALES, 2, True
    )
    want = multi_scale_oracle.multi_scale_roi_align_backward(
        g, rois, SHAPES, SIZE, SCALES, 2, True, coord_dtype=np.float32
    )
    for got, w in zip(grads, want, strict=True):
        got = on.get(got)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), w, rtol=1e-2, atol=1e-2)


def test_single_level_is_roi_align(on):
    x = on.put(pyramid(np.float64)[1])
    rois = on.put(rois_for(boxes_zoo(), np.float64))
    out = cuproi.multi_scale_roi_align([x], rois, SIZE, [1 / 8], 2, True)
    np.testing.assert_array_equal(
        on.get(out), on.get(cuproi.roi_align(x, rois, SIZE, 1 / 8, 2, True))
    )
    g = on.put(np.random.default_rng(2).standard_normal(out.shape))
    (grad,) = cuproi.multi_scale_roi_align_backward(g, rois, [x.shape], SIZE, [1 / 8], 2, True)
    want = cuproi.roi_align_backward(g, rois, x.shape, SIZE, 1 / 8, 2, True)
    np.testing.assert_allclose(on.get(grad), on.get(want), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("deterministic", [False, True])
def test_levels_without_boxes_get_zeros(on, deterministic):
    """Boxes of P2 only: the other levels' gradients are zeros; no boxes: every level's."""
    det = {"deterministic": deterministic}
    small = rois_for(boxes_zoo()[:2], np.float32)  # both on P2
    g = np.ones((2, C, *SIZE), np.float32)
    for k in (2, 0):
        grads = cuproi.multi_scale_roi_align_backward(
            on.put(g[:k]), on.put(small[:k]), SHAPES, SIZE, SCALES, 2, True, **det
        )
        grads = [on.get(a) for a in grads]
        assert [a.shape for a in grads] == SHAPES
        assert grads[0].any() == (k > 0) and not any(a.any() for a in grads[1:])
