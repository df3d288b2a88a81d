"""RoI Align (avg and max mode, the box gradient) on every backend against the float64 loop
oracles of tests/oracles/roi_align.py: the shared checks of roi_op_tester, then what is
particular to RoI Align (half precision, huge boxes, max-mode ties, NaN and empty bins, box
gradients against the oracle and finite differences)."""

import importlib

import host
import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import calculus
from oracles import roi_align as align_oracle
from roi_op_tester import (
    BOX_SIZE,
    SHAPE,
    BoxGradientChecks,
    RoIOpTester,
    assert_close,
    box_gradient_inputs,
    box_tolerance,
    box_zoo,
    features,
    rois_for,
)

import cuproi

SIZE = (3, 4)


def grid(**axes):
    """Every combination of the values of ``axes``, as dicts."""
    cases = [{}]
    for name, values in axes.items():
        cases = [{**c, name: v} for c in cases for v in values]
    return cases


class TestRoIAlign(BoxGradientChecks, RoIOpTester):
    size = SIZE
    box_cases = grid(scale=[0.7], ratio=[2, -1], aligned=[False, True])
    forward_cases = grid(scale=[1.0, 0.5, 0.7], ratio=[-1, 0, 1, 2, 3], aligned=[False, True])
    backward_cases = grid(scale=[1.0, 0.7], ratio=[-1, 2], aligned=[False, True])
    adjoint_cases = grid(scale=[0.7], ratio=[-1, 1, 2], aligned=[False, True])
    pool_mode = "avg"
    invalid = [  # the rest: test_validation.py, for every function
        (
            "max backward without input",
            lambda v: cuproi.roi_align_backward(
                v.g, v.boxes, v.x.shape, SIZE, 0.7, 2, True, pool_mode="max"
            ),
            ValueError,
            "needs input=",
        ),
    ]

    def forward(self, x, boxes, case, **options):
        return cuproi.roi_align(
            x, boxes, SIZE, case["scale"], case["ratio"], case["aligned"], **options
        )

    def backward(self, g, x, boxes, case, **options):
        return cuproi.roi_align_backward(
            g, boxes, x.shape, SIZE, case["scale"], case["ratio"], case["aligned"], **options
        )

    def oracle(self, x, boxes, case, coord_dtype):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"])
        return align_oracle.roi_align(x, boxes, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"])
        return align_oracle.roi_align_backward(g, boxes, x.shape, *args, coord_dtype=coord_dtype)

    def box_backward(self, g, x, boxes, case, **options):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"])
        return cuproi.roi_align_box_backward(
            g, x, boxes, *args, pool_mode=self.pool_mode, **options
        )

    def oracle_box_backward(self, g, x, boxes, case, coord_dtype):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"], self.pool_mode)
        return align_oracle.roi_align_box_grad(g, x, boxes.astype(coord_dtype), *args)


def max_data(dtype, seed=0, k=12):
    """Features (2, 3, 9, 11), ``k`` random boxes then one far beyond the map, a point and a
    flipped box, and a gradient of the (3, 4) output."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-3, [10, 8], (k, 2))
    size = rng.uniform(0.3, 9, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    rois = np.vstack([rois, [[1, -40, -40, 50, 50], [0, 3, 3, 3, 3], [1, 6, 2, 1, 1]]])
    x = rng.standard_normal((2, 3, 9, 11))
    g = rng.standard_normal((len(rois), 3, *SIZE))
    return x.astype(dtype), rois.astype(dtype), g.astype(dtype)


class TestRoIAlignMax(TestRoIAlign):
    """mmcv's ``pool_mode="max"``: the oracle computes in float64 on the rounded boxes."""

    shape = (2, 3, 9, 11)
    forward_cases = grid(scale=[0.7], ratio=[2, -1], aligned=[False, True])
    backward_cases = forward_cases
    adjoint_cases = forward_cases
    box_cases = grid(scale=[0.7], ratio=[2], aligned=[False, True])
    pool_mode = "max"
    test_validation = None  # TestRoIAlign's table covers both modes

    def boxes(self, case):
        return max_data(np.float64)[1]

    def forward(self, x, boxes, case, **options):
        return super().forward(x, boxes, case, pool_mode="max", **options)

    def backward(self, g, x, boxes, case, **options):
        return super().backward(g, x, boxes, case, pool_mode="max", input=x, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"])
        return align_oracle.roi_align_max(x, boxes.astype(coord_dtype), *args)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (SIZE, case["scale"], case["ratio"], case["aligned"])
        return align_oracle.roi_align_max_backward(g, x, boxes.astype(coord_dtype), *args)


# ---- half precision and huge boxes -------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
def test_float16(on, aligned):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    x = features(np.float16)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    x64 = x.astype(np.float64)
    f32 = np.float32
    out = on.get(cuproi.roi_align(on.put(x), on.put(rois), SIZE, 0.5, 2, aligned))
    assert out.dtype == np.float16
    want = align_oracle.roi_align(x64, boxes, SIZE, 0.5, 2, aligned, coord_dtype=f32)
    assert_close(out, want, np.float16)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(np.float16)
    grad = on.get(cuproi.roi_align_backward(on.put(g), on.put(rois), SHAPE, SIZE, 0.5, 2, aligned))
    assert grad.dtype == np.float16
    expected = align_oracle.roi_align_backward(
        g.astype(np.float64), boxes, SHAPE, SIZE, 0.5, 2, aligned, coord_dtype=f32
    )
    np.testing.assert_allclose(grad.astype(np.float64), expected, rtol=4e-3, atol=1e-2)


def test_float16_max(on):
    x, rois, g = max_data(np.float16)
    rois32 = rois.astype(np.float32)
    rtol, atol = TOLERANCE[np.dtype(np.float16)]
    out = on.get(cuproi.roi_align(on.put(x), on.put(rois32), SIZE, 0.7, 2, True, pool_mode="max"))
    assert out.dtype == np.float16
    np.testing.assert_allclose(
        out, align_oracle.roi_align_max(x, rois32, SIZE, 0.7, 2, True), rtol, atol
    )
    grad = cuproi.roi_align_backward(
        on.put(g), on.put(rois32), x.shape, SIZE, 0.7, 2, True, pool_mode="max", input=on.put(x)
    )
    want = align_oracle.roi_align_max_backward(g, x, rois32, SIZE, 0.7, 2, True)
    np.testing.assert_allclose(on.get(grad), want, rtol, atol)


def _axis_mean(start, bin_size, grid, size, values):
    """Mean over a bin's samples along one axis of values(position) (zero out of range), in
    float64 by brute force over every sample: an independent check of the skipping of samples
    outside the map."""
    pos = start + (np.arange(grid) + 0.5) * bin_size / grid
    inside = (pos >= -1) & (pos <= size)
    return values(np.clip(pos[inside], 0, size - 1)).sum() / grid


@pytest.mark.parametrize("aligned", [False, True])
def test_huge_box_adaptive_sampling(on, aligned):
    """A box of 2**18 cells with adaptive sampling (37k x 37k samples per bin) is bounded by the
    map, not the box, and loses no in-range sample: checked on a map that varies along x only."""
    n, c, h, w = 1, 1, 6, 9
    ramp = np.arange(w, dtype=np.float64)
    x = np.broadcast_to(ramp, (n, c, h, w)).copy()
    big = 2.0**18
    boxes = np.array([[0, -big, -big / 2, big, big / 3], [0, -big, 2.25, 3.5, 4.75]])
    out = on.get(cuproi.roi_align(on.put(x), on.put(boxes), (7, 7), 1.0, -1, aligned))
    shift = 0.5 if aligned else 0.0
    for k, (_, x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = x1 - shift, y1 - shift
        rw, rh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        gh, gw = int(np.ceil(rh / 7)), int(np.ceil(rw / 7))
        for ph in range(7):
            fy = _axis_mean(sy + ph * rh / 7, rh / 7, gh, h, np.ones_like)
            for pw in range(7):
                fx = _axis_mean(sx + pw * rw / 7, rw / 7, gw, w, lambda p: np.interp(p, ramp, ramp))
                assert out[k, 0, ph, pw] == pytest.approx(fy * fx, rel=1e-9, abs=1e-12)


# ---- max mode ----------------------------------------------------------------------------------


def max_pool(on, x, rois, size, ratio, aligned):
    """Max-mode forward and the backward of a gradient of ones, as NumPy arrays."""
    out = cuproi.roi_align(on.put(x), on.put(rois), size, 1.0, ratio, aligned, pool_mode="max")
    grad = cuproi.roi_align_backward(
        on.put(np.ones(out.shape)), on.put(rois), x.shape, size, 1.0, ratio, aligned,
        pool_mode="max", input=on.put(x),
    )  # fmt: skip
    return on.get(out), on.get(grad)


def test_ties_first_sample_in_scan_order_wins(on):
    x = np.ones((1, 1, 6, 6))
    out, grad = max_pool(on, x, np.array([[0, 1.0, 1.0, 5.0, 5.0]]), (1, 1), 2, False)
    assert out.item() == 1.0
    # Samples at (2, 2), (2, 4), (4, 2), (4, 4): the first wins, exactly on cell (2, 2).
    want = np.zeros((6, 6))
    want[2, 2] = 1.0
    np.testing.assert_array_equal(grad[0, 0], want)


def test_nan_propagates_and_takes_the_gradient(on):
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    x[0, 0, 2, 2] = np.nan
    rois = np.array([[0, 0.0, 0.0, 6.0, 6.0]])
    out, grad = max_pool(on, x, rois, (1, 1), 3, False)
    assert np.isnan(out.item())
    # The first NaN sample in scan order gets the gradient (its 4 neighbours).
    want = align_oracle.roi_align_max_backward(np.ones_like(out), x, rois, 1, 1.0, 3, False)
    np.testing.assert_allclose(grad, want)


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@pytest.mark.skipif(
    host.SANITIZE, reason="instrumented builds order the operands of an add of two NaNs their way"
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [2, 0])
def test_max_nans_have_the_bits_of_the_kernels(monkeypatch, dtype, ratio):
    """Max mode over features holding NaNs of both signs and several payloads: the CPU's
    values are the kernels' (compiled for this host) bit for bit, NaNs included. A NaN bin
    takes its first NaN sample, whose bits the interpolation's order of operations sets (of
    two NaN terms a sum keeps the first's, which NumPy 1.x's SIMD add did not: 32 channels
    reach its vector loops). A GPU may make its own NaNs."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 32, 11, 13)).astype(dtype)
    bits = np.array([0x7FC00001, 0xFFC00002, 0x7FC00003, 0xFFC00004], np.uint32)
    nans = x.size // 6
    x.reshape(-1)[rng.choice(x.size, nans, replace=False)] = np.resize(bits.view(np.float32), nans)
    rois = rois_for(box_zoo(1.0), dtype)
    args = ((3, 4), 1.0, ratio, True)
    out = cuproi.roi_align(x, rois, *args, pool_mode="max")
    monkeypatch.setattr(cuproi, "_cpu", host_backend())
    want = cuproi.roi_align(x, rois, *args, pool_mode="max")
    assert np.isnan(out).sum() > 200
    np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8))


def test_empty_bin_gives_zero_and_no_gradient(on):
    x = -np.ones((1, 2, 5, 5))
    # zero size, aligned, adaptive: no samples
    out, grad = max_pool(on, x, np.array([[0, 2.0, 2.0, 2.0, 2.0]]), (2, 2), -1, True)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("box", [[0, -6.0, -6.0, 3.0, 3.0], [0, -500.0, -500.0, 900.0, 800.0]])
def test_out_of_range_samples_compete_as_zero(on, box):
    """Negative features: a sample outside the map (value 0, as in mmcv) wins, no gradient."""
    x = -1.0 - np.random.default_rng(0).uniform(size=(1, 1, 5, 5))
    rois = np.array([box])
    out, grad = max_pool(on, x, rois, (1, 1), -1, False)
    assert out.item() == 0.0
    np.testing.assert_array_equal(grad, 0)
    # Positive features: the in-range maximum wins over the zeros.
    out, _ = max_pool(on, -x, rois, (1, 1), -1, False)
    np.testing.assert_allclose(out, align_oracle.roi_align_max(-x, rois, 1, 1.0, -1, False))


def test_avg_mode_is_unchanged():
    x, rois, _ = max_data(np.float64)
    a = cuproi.roi_align(x, rois, SIZE, 0.7, 2, True)
    b = cuproi.roi_align(x, rois, SIZE, 0.7, 2, True, pool_mode="avg")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, cuproi.roi_align(x, rois, SIZE, 0.7, 2, True, pool_mode="max"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [None, np.inf, np.nan])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("write", [None, 1, 70])
def test_max_backward_bands_against_the_sums_of_winners(
    monkeypatch, dtype, bad, channels_last, write
):
    """The CPU's banded input gradient of max mode (_bin_max.add_winners: each winner's row of
    the gradient, a zero elsewhere, the gradient multiplied by 0 or 1 where it is finite and
    masked on its bits where not) bit for bit against np.add.at over the winners, the path
    kept for boxes in pieces. With ``write``, bands of 3 rows are written into the planes a
    few rows at a time (a row, or two rows of 11 pixels and 3 channels)."""
    align_cpu = importlib.import_module("cuproi._cpu.roi_align")
    if write is not None:
        bin_max = importlib.import_module("cuproi._cpu._bin_max")
        bands = bin_max._bands

        def thin(*args):
            return [(i, r, min(r + 3, r1)) for i, r0, r1 in bands(*args) for r in range(r0, r1, 3)]

        monkeypatch.setattr(bin_max, "_bands", thin)
        monkeypatch.setattr(bin_max, "_WRITE", write)
    x, rois, g = max_data(dtype, seed=3)
    x = np.round(x * 2) / 2  # ties and zeros
    x[0, 1, 4, 4] = -0.0
    if bad is not None:
        g[0, 0, 0, 0], g[3, 1, 1, 2], g[5, 2, 2, 3] = bad, -bad, bad
    args = (g, rois, x.shape, SIZE, 0.7, 2, True)
    kw = {"pool_mode": "max", "input": x, "channels_last": channels_last}
    slots, found = align_cpu._max_slots, []
    monkeypatch.setattr(align_cpu, "_max_slots", lambda *a: found.append(slots(*a)) or found[0])
    fast = cuproi.roi_align_backward(*args, **kw)
    assert found[0] is not None  # the bands summed it
    monkeypatch.setattr(align_cpu, "_max_slots", lambda *a: None)
    want = cuproi.roi_align_backward(*args, **kw)
    bits = np.dtype(f"u{x.itemsize}")
    np.testing.assert_array_equal(fast.view(bits), want.view(bits))
    assert np.isfinite(fast).all() == (bad is None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_slots_of_uneven_bins_are_the_scan_maxima(monkeypatch, dtype, threads):
    """Max mode's winners by slots (_bin_max.slot_max: bins of different sample counts in
    order of their counts, blocks over the threads, bins of over _FAST_SLOTS samples by
    scan_max) against scan_max over every sample: the same values, bits included, and
    winning samples, with zeros of both signs, NaNs, ties and samples off the map."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", threads)
    align_cpu = importlib.import_module("cuproi._cpu.roi_align")
    rng = np.random.default_rng(5)
    n, c, h, w = 2, 5, 23, 31
    x = np.maximum(np.round(rng.standard_normal((n, c, h, w)) * 2) / 2, 0).astype(dtype)
    x[0, 1, :4, :4] = -0.0
    x[1, 2, 6:9, 6:9] = np.nan
    x[0, 3] = -np.abs(x[0, 3]) - 1  # negative: samples off the map win as zeros
    sides = np.exp(rng.uniform(0, np.log(40), (40, 2)))
    corner = rng.uniform(-10, 30, (40, 2))
    rois = np.column_stack([rng.integers(0, n, 40), corner, corner + sides]).astype(dtype)
    rois[0] = [0, -2, -2, 33, 25]  # one bin of 35 x 27 samples: scan_max's
    shape = (n, h, w)
    _, y, x_axis = align_cpu._max_grid(rois, shape, 1.0, 1, 1, 0, True)
    pixels = align_cpu._pixels(x, rois, y, x_axis, shape, rois.dtype)
    value, slot = align_cpu._winners(pixels, rois, shape, y, x_axis, 0, len(rois), np.uint16)
    s, _, want, winner, _ = align_cpu._chunk(pixels, rois, shape, y, x_axis, 0, len(rois))
    counts = np.bincount(s.bin, minlength=len(rois))
    assert counts.max() > 254 and counts.min() < 4  # uneven, and a bin over _FAST_SLOTS
    first = (np.cumsum(counts) - counts)[:, None]
    bits = np.dtype(f"u{x.itemsize}")
    np.testing.assert_array_equal(value.view(bits), want.view(bits))
    np.testing.assert_array_equal(slot, np.where(winner >= 0, winner - first, 2**16 - 1))


def test_public_max_backward_takes_input_and_avg_ignores_it():
    x, rois, g = max_data(np.float64)
    grad = cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True, pool_mode="max", input=x)
    want = align_oracle.roi_align_max_backward(g, x, rois, SIZE, 0.7, 2, True)
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True, input=x),
        cuproi.roi_align_backward(g, rois, x.shape, SIZE, 0.7, 2, True),
    )


# ---- the gradient with respect to the boxes ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_backward_of_a_box_held_at_the_legacy_minimum(on, dtype):
    """aligned=False widens a box to one cell: its x2 and y2 do not move the samples."""
    x, _, g, _, _ = box_gradient_inputs(dtype)
    rois = np.array([[0, 3.2, 2.1, 3.6, 2.4]], dtype)
    got = cuproi.roi_align_box_backward(on.put(g[:1]), on.put(x), on.put(rois), BOX_SIZE, 0.7)
    got = on.get(got)
    want = align_oracle.roi_align_box_grad(g[:1], x, rois, BOX_SIZE, 0.7, -1, False)
    np.testing.assert_allclose(got, want, **box_tolerance(dtype, want))
    assert got[0, 3] == 0 and got[0, 4] == 0 and got[0, 1] != 0


@pytest.mark.parametrize("aligned", [False, True])
def test_integer_sample_positions_take_the_right_derivative(aligned):
    """Every sample exactly on a cell: the derivative from the right, not 0 as in TF/DCN."""
    x, _, _, _, _ = box_gradient_inputs(np.float64, seed=4)
    shift = 0.5 if aligned else 0.0
    # 2x3 bins, 2 samples per bin: box 4 x 6 cells from (1, 2) puts samples on integers.
    rois = np.array(
        [
            [0, 2 + shift, 1 + shift, 8 + shift, 5 + shift],
            [1, 1 + shift, 2 + shift, 7 + shift, 6 + shift],
        ]
    )
    g = np.random.default_rng(5).standard_normal((2, x.shape[1], *BOX_SIZE))
    grad = cuproi.roi_align_box_backward(g, x, rois, BOX_SIZE, 1.0, 2, aligned)

    def forward(r):
        return align_oracle.roi_align(x, r, BOX_SIZE, 1.0, 2, aligned)

    right = calculus.right_box_grad(forward, g, rois)
    np.testing.assert_allclose(grad, right, rtol=1e-5, atol=1e-5)
    assert np.abs(grad[:, 1:]).min() > 1e-3  # none vanishes
