"""cuproi.quantization_error against a float64 loop oracle written from RoI Pool's published
semantics (torchvision / Fast R-CNN: coordinates scaled and rounded half away from zero, the end
cell inclusive, bin p spanning floor(p * n / P) to ceil((p + 1) * n / P) cells)."""

import math
import time

import numpy as np
import pytest

import cuproi


def _c_round(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def _axis(lo, hi, scale, pooled):
    """(exact start, exact end, quantized start, quantized end, box shift, bin shift)."""
    exact_lo, exact_hi = lo * scale, hi * scale
    length = max(exact_hi - exact_lo, 0.0)
    first, last = _c_round(exact_lo), _c_round(exact_hi)
    cells = max(last - first + 1, 1)
    bin_size = cells / pooled
    bin_shift, end = 0.0, first
    for p in range(pooled):
        start_q = first + math.floor(p * bin_size)
        end_q = first + math.ceil((p + 1) * bin_size)
        start_e = exact_lo + p * length / pooled
        end_e = exact_lo + (p + 1) * length / pooled
        bin_shift = max(bin_shift, abs(start_q - start_e), abs(end_q - end_e))
        end = max(end, end_q)
    box_shift = max(abs(first - exact_lo), abs(end - (exact_lo + length)))
    return exact_lo, exact_lo + length, first, end, box_shift, bin_shift


def oracle(boxes, scale, output_size):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    rows = []
    for box in np.asarray(boxes, np.float64)[:, -4:]:
        x1, y1, x2, y2 = (float(v) for v in box)
        ex0, ex1, qx0, qx1, box_x, bin_x = _axis(x1, x2, scale, pw)
        ey0, ey1, qy0, qy1, box_y, bin_y = _axis(y1, y2, scale, ph)
        exact = (ex1 - ex0) * (ey1 - ey0)
        quantized = (qx1 - qx0) * (qy1 - qy0)
        overlap_x = max(min(ex1, qx1) - max(ex0, qx0), 0.0)
        overlap_y = max(min(ey1, qy1) - max(ey0, qy0), 0.0)
        common = overlap_x * overlap_y
        lost = (exact - common) / exact if exact > 0 else 0.0
        added = (quantized - common) / exact if exact > 0 else math.inf
        box_shift, bin_shift = max(box_x, box_y), max(bin_x, bin_y)
        rows.append(
            (box_shift, bin_shift, box_shift / scale, bin_shift / scale, lost, added, lost + added)
        )
    return np.array(rows, np.float64).reshape(-1, 7).T


def random_boxes(rng, k):
    """Boxes of many sizes and aspect ratios, some on ties (multiples of 8 px at stride 16),
    some flipped, empty or partly outside the image."""
    corner = rng.uniform(-100, 1200, (k, 2))
    size = np.exp(rng.uniform(0, 6.5, (k, 2)))
    boxes = np.concatenate([corner, corner + size], axis=1)
    ties = rng.random(k) < 0.3
    boxes[ties] = np.round(boxes[ties] / 8) * 8
    flipped = rng.random(k) < 0.05
    boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    boxes[:3] = [[0, 0, 160, 160], [40, 40, 40, 40], [-24, -8, 8, 24]]
    return np.column_stack([rng.integers(0, 2, k), boxes])


@pytest.mark.parametrize(("scale", "output_size"), [(1 / 16, 7), (1 / 8, (14, 3)), (0.3, 1)])
def test_matches_the_loop_oracle(scale, output_size):
    boxes = random_boxes(np.random.default_rng(0), 2000)
    result = cuproi.quantization_error(boxes, scale, output_size)
    expected = oracle(boxes, scale, output_size)
    assert len(result) == 7
    for name, got, want in zip(result._fields, result, expected, strict=True):
        assert got.shape == (len(boxes),) and got.dtype == np.float64, name
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_box_worked_by_hand():
    # x and y: 8 px * 1/16 = 0.5 cell rounds to 1, 40 px = 2.5 cells rounds to 3; RoI Pool
    # reads cells 1..3, [1, 4), for the exact [0.5, 2.5]: 0.5 cell off at the start and 1.5 at
    # the end. Areas: exact 2 x 2, quantized 3 x 3, overlap 1.5 x 1.5.
    err = cuproi.quantization_error(np.array([[8.0, 8.0, 40.0, 40.0]]), 1 / 16, 1)
    assert err.box_shift.tolist() == [1.5]
    assert err.box_shift_pixels.tolist() == [24.0]
    assert err.bin_shift.tolist() == [1.5]  # one bin: its edges are the box's
    assert err.area_lost.tolist() == [(4 - 2.25) / 4]
    assert err.area_added.tolist() == [(9 - 2.25) / 4]
    assert err.area_error.tolist() == [(4 - 2.25 + 9 - 2.25) / 4]


def test_a_box_on_cell_boundaries_still_reads_one_more_cell():
    err = cuproi.quantization_error(np.array([[0.0, 0.0, 160.0, 80.0]]), 1 / 16, (5, 10))
    assert err.box_shift.tolist() == [1.0]
    assert err.area_lost.tolist() == [0.0]
    np.testing.assert_allclose(err.area_added, (11 * 6 - 50) / 50)


def test_agrees_with_the_cells_roi_pool_reads():
    """The quantized region of the definition is the one the op pools from: read it back
    from roi_pool's argmax on maps holding each cell's column and row."""
    rng = np.random.default_rng(3)
    h, w, scale, pooled = 40, 60, 1 / 8, (3, 4)
    corner = rng.uniform(16, 200, (300, 2))
    xy = np.concatenate([corner, corner + rng.uniform(1, 250, (300, 2))], 1)
    boxes = np.column_stack([np.zeros(300), xy])
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    maps = np.stack([cols, rows, -cols, -rows])[None]  # (1, 4, H, W)
    out = cuproi.roi_pool(maps, boxes, pooled, scale)
    end_x, end_y = out[:, 0].max((1, 2)) + 1, out[:, 1].max((1, 2)) + 1
    start_x, start_y = -out[:, 2].max((1, 2)), -out[:, 3].max((1, 2))
    inside = (end_x < w) & (end_y < h)  # not clipped by the map
    read = np.column_stack([start_x, start_y, end_x, end_y])  # the cells read, [x1, y1, x2, y2)
    expected = np.abs(read - xy * scale).max(axis=1)
    err = cuproi.quantization_error(boxes, scale, pooled)
    assert inside.sum() > 100
    np.testing.assert_allclose(err.box_shift[inside], expected[inside], atol=1e-12)


def test_box_layouts_and_dtypes():
    boxes = random_boxes(np.random.default_rng(1), 300)
    full = cuproi.quantization_error(boxes, 1 / 16, 7)
    four = cuproi.quantization_error(boxes[:, 1:], 1 / 16, 7)
    for name, a, b in zip(full._fields, full, four, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    one = cuproi.quantization_error(boxes[5, 1:].tolist(), 1 / 16, 7)
    assert one.box_shift.shape == (1,) and one.box_shift[0] == full.box_shift[5]
    as_int = cuproi.quantization_error(np.array([[0, 8, 8, 40, 40]]), 1 / 16, 1)
    assert as_int.box_shift.tolist() == [1.5]
    # float32 boxes are computed in float32, as roi_pool does for float32 features.
    single = cuproi.quantization_error(boxes.astype(np.float32), 1 / 16, 7)
    assert np.isclose(single.box_shift, full.box_shift, atol=1e-4).mean() > 0.99
    assert np.isclose(single.area_error, full.area_error, rtol=1e-3).mean() > 0.99
    empty = cuproi.quantization_error(np.zeros((0, 5)), 1 / 16, 7)
    assert all(a.shape == (0,) for a in empty)


def test_empty_and_flipped_boxes():
    err = cuproi.quantization_error(np.array([[16.0, 16.0, 16.0, 48.0], [64, 0, 0, 64]]), 1 / 16, 2)
    assert err.area_lost.tolist() == [0.0, 0.0]
    assert np.isinf(err.area_added).all() and np.isinf(err.area_error).all()
    assert np.isfinite(err.box_shift).all() and np.isfinite(err.bin_shift).all()


def test_vectorized_for_many_boxes():
    boxes = random_boxes(np.random.default_rng(2), 100_000)
    start = time.perf_counter()
    err = cuproi.quantization_error(boxes, 1 / 16, 7)
    assert time.perf_counter() - start < 2.0
    assert err.bin_shift.shape == (100_000,)
    assert (err.bin_shift >= err.box_shift).all()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((np.zeros((3, 3)), 1.0, 7), ValueError, r"\(K, 5\).*\(K, 4\).*got shape \(3, 3\)"),
        ((np.zeros((2, 5, 1)), 1.0, 7), ValueError, "got shape"),
        ((np.array([[0, 0, np.nan, 1, 1]]), 1.0, 7), ValueError, r"boxes\[0\] has non-finite"),
        ((np.array([["a", "b", "c", "d"]]), 1.0, 7), TypeError, "real numbers"),
        ((np.zeros((1, 4)), 0.0, 7), ValueError, "spatial_scale must be positive"),
        ((np.zeros((1, 4)), "x", 7), TypeError, "spatial_scale must be a real number"),
        ((np.zeros((1, 4)), 1.0, 0), ValueError, "output_size must be positive"),
        ((np.zeros((1, 4)), 1.0, 2.5), TypeError, "output_size must be an int"),
        ((np.zeros((1, 4)), 1.0, (1, 2, 3)), ValueError, "pair"),
    ],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        cuproi.quantization_error(*args)
