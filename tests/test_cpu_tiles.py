"""The CPU backend copies channels last only the tiles of a map that the boxes read.

A few boxes on a large NCHW map (inference on FPN's finest level) would otherwise pay for a
copy of the whole map. Checked here: the tiles are exactly those the boxes' cells overlap,
the cells hold every pixel the sampling operators read (so no product reads a pixel left out),
the copied rows and their slots, and RoI Align and Deformable RoI Pooling on the tiles against
the float64 oracles and, bit for bit, against the same calls copying the whole map.
"""

import numpy as np
import pytest
import reference

from cuproi._cpu import _parallel, _sampling, deform_roi_pool, roi_align


def _cells(rng, n, h, w, k):
    y = np.sort(rng.integers(-5, h + 5, (k, 2)), 1)
    x = np.sort(rng.integers(-5, w + 5, (k, 2)), 1)
    y, x = np.clip(y, 0, h), np.clip(x, 0, w)
    return _parallel.Cells(rng.integers(0, n, k), y[:, 0], y[:, 1], x[:, 0], x[:, 1])


@pytest.mark.parametrize("shape", [(2, 37, 61), (1, 9, 5), (3, 20, 16), (1, 1, 200)])
def test_tiles_are_those_the_cells_overlap(monkeypatch, shape):
    monkeypatch.setattr(_parallel, "_WHOLE", 1.0)  # tiles whatever the share read
    n, h, w = shape
    rng = np.random.default_rng(sum(shape))
    for k in (0, 1, 3, 12):
        cells = _cells(rng, n, h, w, k)
        read = np.zeros(shape, bool)
        for i, y0, y1, x0, x1 in zip(*cells, strict=True):
            read[i, y0:y1, x0:x1] = True
        regions = _parallel.tiles(cells, n, h, w)
        covered = np.zeros(shape, np.int64)
        for i, y0, y1, x0, x1 in regions:
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            assert (y1 - y0) * (x1 - x0) <= _parallel._TILE_ROWS * _parallel._TILE_COLS
            assert read[i, y0:y1, x0:x1].any()  # a tile is copied only when some box reads it
            covered[i, y0:y1, x0:x1] += 1
        assert covered.max(initial=0) <= 1  # no pixel twice
        assert (covered[read] == 1).all()  # every pixel read is copied


def test_tiles_give_way_to_a_whole_copy():
    n, h, w = 1, 64, 64  # 32 tiles of 8 x 16
    most = _parallel.Cells(*np.array([[0], [0], [64], [0], [56]]))  # 28 of the 32 tiles
    assert _parallel.tiles(most, n, h, w) is None
    few = _parallel.Cells(*np.array([[0], [0], [16], [0], [16]]))
    assert len(_parallel.tiles(few, n, h, w)) == 2
    assert _parallel.tiles(few, 0, h, w) is None  # nothing to copy


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_tile_rows_and_their_slots(monkeypatch, dtype):
    monkeypatch.setattr(_parallel, "_WHOLE", 1.0)
    monkeypatch.setenv("CUPROI_NUM_THREADS", "3")
    monkeypatch.setattr(_parallel, "workers", lambda work, grain: 3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 30, 41)).astype(dtype)
    regions = _parallel.tiles(_cells(rng, 2, 30, 41, 4), 2, 30, 41)
    rows, slot = _parallel.tile_rows(x, regions, np.float32)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    assert sorted(slot[slot >= 0]) == list(range(len(rows)))  # every row is one pixel's
    by_pixel = x.transpose(0, 2, 3, 1).reshape(-1, 5)
    np.testing.assert_array_equal(rows[slot[slot >= 0]], by_pixel[slot >= 0])
    inside = np.zeros(x.shape[:1] + x.shape[2:], bool)
    for i, y0, y1, x0, x1 in regions:
        inside[i, y0:y1, x0:x1] = True
    np.testing.assert_array_equal(slot >= 0, inside.ravel())


def _boxes(rng, k, n, scale, h, w, far=False):
    """Boxes across and past a map of h x w cells at ``scale``, some flipped (aligned)."""
    corner = rng.uniform([-0.2 * w, -0.2 * h], [1.1 * w, 1.1 * h], (k, 2)) / scale
    size = rng.uniform(-2, 0.4 * max(h, w), (k, 2)) / scale
    if far:  # coordinates far past the map, where float32 rounds them by whole cells
        corner[::3] *= 1e6
        size[1::4] *= 1e5
    return np.column_stack([rng.integers(0, n, k), corner, corner + size])


def _deform_offset(rng, k, far=False):
    offset = rng.standard_normal((k, 2, 3, 4))
    if far:  # bins pushed far from their box, and a NaN offset
        offset[::5] *= 40
        offset[1, 0, 1, 2] = np.nan
    return offset


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [2, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cells_hold_every_pixel_the_operator_reads(op, aligned, ratio, dtype):
    rng = np.random.default_rng(int(aligned) + 2 * abs(ratio))
    n, h, w, scale = 2, 23, 31, 0.25
    rois = _boxes(rng, 60, n, scale, h, w, far=True).astype(dtype)
    shape = (n, h, w)
    if op == "roi_align":
        plan = roi_align._plan(rois, shape, scale, 3, 4, ratio, aligned)
        a = roi_align._operator(rois, plan, shape, 0, len(rois))
        cells = roi_align._reach(rois, plan, shape)
    else:  # always aligned; offsets shift every bin
        g = deform_roi_pool._grid(rois, scale, 3, 4, ratio)
        offset = _deform_offset(rng, len(rois), far=not aligned).astype(dtype)
        axes = deform_roi_pool._bin_axes(g, offset, (3, 4), 0.1)
        a = deform_roi_pool._operator(rois, g, axes, shape, 0, len(rois))
        cells = _sampling.reach(rois[:, 0], axes[0][:2], axes[1][:2], shape)
    a = a.tocoo()
    assert a.nnz > 0
    box = a.row // 12
    image, y, x = np.unravel_index(a.col, shape)
    assert (image == cells.image[box]).all()
    assert ((cells.y0[box] <= y) & (y < cells.y1[box])).all()
    assert ((cells.x0[box] <= x) & (x < cells.x1[box])).all()


def _forward(op, x, rois, scale, offset):
    if op == "roi_align":
        return roi_align.roi_align_forward(x, rois, scale, 3, 4, 2, True)
    return deform_roi_pool.deform_roi_pool_forward(x, rois, offset, scale, 3, 4, 2, 0.1)


def _oracle(op, x, rois, scale, offset):
    if op == "roi_align":
        return reference.roi_align(x, rois, (3, 4), scale, 2, True)
    return reference.deform_roi_pool(x, rois, offset, (3, 4), scale, 2, 0.1)


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_forward_on_the_tiles_read(monkeypatch, op, dtype):
    """A few boxes on a large map: tiles, the oracle's values, the whole copy's bits."""
    rng = np.random.default_rng(3)
    n, c, h, w, scale = 2, 3, 60, 90, 0.5
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    rois = _boxes(rng, 5, n, scale, h, w) / 3
    rois[:, 0] = [0, 1, 1, 0, 1]
    ct = np.float64 if dtype == np.float64 else np.float32
    rois = rois.astype(ct)
    offset = _deform_offset(rng, 5).astype(ct)
    copied = []
    tile_rows = _parallel.tile_rows
    monkeypatch.setattr(
        _parallel, "tile_rows", lambda *a: (copied.append(len(a[1])), tile_rows(*a))[1]
    )
    out = _forward(op, x, rois, scale, offset)
    assert copied and copied[0] < 0.5 * n * -(-h // 8) * -(-w // 16)  # a few of the tiles
    assert out.dtype == dtype
    expected = _oracle(op, x, rois, scale, offset)
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(_parallel, "_WHOLE", -1.0)  # the whole map, always
    whole = _forward(op, x, rois, scale, offset)
    assert len(copied) == 1
    np.testing.assert_array_equal(out.view(np.uint8), whole.view(np.uint8))
