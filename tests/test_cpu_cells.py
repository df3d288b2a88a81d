"""The CPU backend copies channels last, and scatters gradients to, only the tiles the boxes read.

A few boxes on a large NCHW map (inference on FPN's finest level) would otherwise pay for a
copy of the whole map, and a backward for indices over all of it. Checked here: the runs of
tiles are exactly those the boxes' cells overlap, the cells hold every pixel the sampling
operators read (so no product reads a pixel left out), the copied rows and the row of every
pixel, RoI Align and Deformable RoI Pooling on the runs against the float64 oracles and, bit
for bit, against the same calls on the whole map, forward and backward.
"""

import importlib

import numpy as np
import pytest
from oracles import deform_roi_pool as deform_oracle
from oracles import prroi_pool as prroi_oracle
from oracles import ps_roi_align as ps_align_oracle
from oracles import ps_roi_pool as ps_pool_oracle
from oracles import roi_align as align_oracle
from oracles import roi_align_rotated as rotated_oracle
from oracles import roi_pool as pool_oracle

from cuproi._cpu import _cells, _geometry, _ps, _sampling

# The op modules of the CPU backend (the attribute cuproi._cpu.<op> is the op's function).
_OPS = "deform_roi_pool prroi_pool ps_roi_align ps_roi_pool roi_align roi_align_rotated roi_pool"
deform_roi_pool, prroi_pool, ps_roi_align, ps_roi_pool, roi_align, roi_align_rotated, roi_pool = (
    importlib.import_module(f"cuproi._cpu.{op}") for op in _OPS.split()
)


@pytest.fixture(autouse=True)
def _runs_however_many(monkeypatch):
    """The runs of these small maps, which the cost of a run would often refuse (_cells._worth).

    RoI Align's forwards take the chunked path on the tiles, not the one of few bins (which
    :func:`test_few_bins_read_only_the_pixels_they_tap` checks against it).
    """
    monkeypatch.setattr(_cells, "_RUN_COST", 0)
    monkeypatch.setattr(roi_align, "FEW_BINS", 0)


def _cells_of(rng, n, h, w, k):
    y = np.sort(rng.integers(-5, h + 5, (k, 2)), 1)
    x = np.sort(rng.integers(-5, w + 5, (k, 2)), 1)
    y, x = np.clip(y, 0, h), np.clip(x, 0, w)
    return _cells.Cells(rng.integers(0, n, k), y[:, 0], y[:, 1], x[:, 0], x[:, 1])


def _mask(runs):
    """(N, H, W) count of the runs over every pixel."""
    covered = np.zeros(runs.shape, np.int64)
    for _, _, i, y0, y1, x0, x1 in runs.blocks().tolist():
        covered[i, y0:y1, x0:x1] += 1
    return covered


@pytest.mark.parametrize("shape", [(2, 37, 61), (1, 9, 5), (3, 20, 16), (1, 1, 200)])
def test_runs_are_the_tiles_the_cells_overlap(monkeypatch, shape):
    monkeypatch.setattr(_cells, "_WHOLE", 1.0)  # runs whatever the share read
    n, h, w = shape
    rows, cols = _cells._tile_size(w)
    tiles_h, tiles_w = -(-h // rows), -(-w // cols)
    rng = np.random.default_rng(sum(shape))
    for k in (0, 1, 3, 12, 40):
        cells = _cells_of(rng, n, h, w, k)
        runs = _cells.runs(cells, n, h, w)
        # Both ways of finding the tiles read (the larger k takes the tile grid's).
        some = (cells.y1 > cells.y0) & (cells.x1 > cells.x0)
        boxes = (
            cells.image[some],
            cells.y0[some] // rows,
            (cells.y1[some] - 1) // rows + 1,
            cells.x0[some] // cols,
            (cells.x1[some] - 1) // cols + 1,
        )
        listed = _cells._listed(boxes, tiles_h, tiles_w)
        np.testing.assert_array_equal(listed, _cells._counted(boxes, n, tiles_h, tiles_w))
        read = np.zeros(shape, bool)
        for i, y0, y1, x0, x1 in zip(*cells, strict=True):
            read[i, y0:y1, x0:x1] = True
        covered = _mask(runs)
        assert covered.max(initial=0) <= 1  # no pixel twice
        assert (covered[read] == 1).all()  # every pixel read is in a run
        for _, _, i, y0, y1, x0, x1 in runs.blocks().tolist():
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            assert y1 - y0 <= rows and x1 - x0 <= _cells._RUN * cols
            for t0 in range(x0, x1, cols):  # a tile is in a run only when some box reads it
                assert read[i, y0:y1, t0 : t0 + cols].any()
        assert list(np.diff(runs.first)) == [(b[4] - b[3]) * (b[6] - b[5]) for b in runs.blocks()]


def test_runs_give_way_to_the_whole_map():
    n, h, w = 1, 64, 64  # 32 tiles of 8 x 16
    most = _cells.Cells(*np.array([[0], [0], [64], [0], [56]]))  # 28 of the 32 tiles
    assert _cells.runs(most, n, h, w) is None
    few = _cells.Cells(*np.array([[0], [0], [16], [0], [16]]))
    assert _cells.runs(few, n, h, w).size == 2 * 8 * 16
    assert _cells.runs(few, 0, h, w) is None  # nothing to copy


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lookup", [True, False])
def test_rows_and_the_row_of_every_pixel(monkeypatch, dtype, lookup):
    monkeypatch.setattr(_cells, "_WHOLE", 1.0)
    monkeypatch.setenv("CUPROI_NUM_THREADS", "3")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 30, 41)).astype(dtype)
    runs = _cells.runs(_cells_of(rng, 2, 30, 41, 4), 2, 30, 41)
    assert (runs.lookup is not None) == (2 * 4 * 3 <= 4 * runs.size)
    if not lookup:
        runs = runs._replace(lookup=None)
    rows = _cells.copy_rows(x, runs, np.float32)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    i, y, xx = np.nonzero(_mask(runs))
    pixels = _sampling.Pixels(rows, runs, runs.shape)
    at = pixels.at(i, y, xx)
    assert sorted(at) == list(range(len(rows)))  # every row is one pixel's
    np.testing.assert_array_equal(rows[at], x[i, :, y, xx].astype(np.float32))
    np.testing.assert_array_equal(pixels.index((i * 30 + y) * 41 + xx), at)
    i, y, xx = np.nonzero(_mask(runs) == 0)
    if i.size:
        with pytest.raises(RuntimeError, match="reach"):
            pixels.at(i[:1], y[:1], xx[:1])


def test_few_tiles_of_a_huge_map_cost_what_they_read():
    """Three small boxes on a 30000 x 30000 plane: runs listed box by box, no map-sized index."""
    y0, y1 = np.array([5, 20000, 29990]), np.array([15, 20010, 30000])
    cells = _cells.Cells(np.zeros(3, np.int64), y0, y1, y0, y1)
    runs = _cells.runs(cells, 1, 30000, 30000)
    assert runs.lookup is None and runs.size <= 3 * 4 * 8 * 16
    assert len(runs.first) < 16


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
        plan = roi_align._rows(rois, scale, 3, 4, ratio, aligned)
        a = roi_align._operator(rois, plan, shape, 0, len(rois))
        cells = roi_align._reach(rois, plan, shape)
    else:  # always aligned; offsets shift every bin
        g = _geometry.deform_grid(rois, scale, 3, 4, ratio)
        offset = _deform_offset(rng, len(rois), far=not aligned).astype(dtype)
        axes = _geometry.bin_axes(g, offset, (3, 4), 0.1)
        a = deform_roi_pool._operator(rois, g, axes, shape, 0, len(rois))
        cells = _sampling.reach(rois[:, 0], axes[0][:2], axes[1][:2], shape)
    a = a.tocoo()
    assert a.nnz > 0
    box = a.row // 12
    image, y, x = np.unravel_index(a.col, shape)
    assert (image == cells.image[box]).all()
    assert ((cells.y0[box] <= y) & (y < cells.y1[box])).all()
    assert ((cells.x0[box] <= x) & (x < cells.x1[box])).all()


def _spy(monkeypatch, owner, name):
    """The list of what ``owner.name`` returns from now on, call by call."""
    seen, function = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: (seen.append(function(*a, **k)), seen[-1])[1])
    return seen


def _few_boxes(seed, dtype, images, c=3):
    """(rng, x, rois): len(images) boxes of those images on a large (2, c, 60, 90) map."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, 60, 90)).astype(dtype)
    rois = _boxes(rng, len(images), 2, 0.5, 60, 90) / 3
    rois[:, 0] = images
    return rng, x, rois


def _forward(op, x, rois, offset, oracle=False):
    """RoI Align's or Deformable RoI Pooling's forward (or its oracle's) at 3 x 4 bins."""
    if op == "roi_align":
        module = align_oracle if oracle else roi_align
        return module.roi_align(x, rois, (3, 4), 0.5, 2, True)
    module = deform_oracle if oracle else deform_roi_pool
    return module.deform_roi_pool(x, rois, offset, (3, 4), 0.5, 2, 0.1)


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_forward_on_the_tiles_read(monkeypatch, op, dtype):
    """A few boxes on a large map: tiles, the oracle's values, the whole copy's bits."""
    rng, x, rois = _few_boxes(3, dtype, [0, 1, 1, 0, 1])
    ct = np.float64 if dtype == np.float64 else np.float32
    rois = rois.astype(ct)
    offset = _deform_offset(rng, 5).astype(ct)
    copied = _spy(monkeypatch, _cells, "copy_rows")
    out = _forward(op, x, rois, offset)
    assert copied and len(copied[0]) < 0.5 * 2 * 60 * 90  # a few of the tiles
    assert out.dtype == dtype
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    expected = _forward(op, x, rois, offset, oracle=True)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(_cells, "_WHOLE", -1.0)  # the whole map, always
    whole = _forward(op, x, rois, offset)
    assert len(copied) == 1
    np.testing.assert_array_equal(out.view(np.uint8), whole.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("boxes", [6, 1])  # the map's pixels marked, or the entries' sorted
def test_few_bins_read_only_the_pixels_they_tap(monkeypatch, dtype, channels_last, boxes):
    """RoI Align's forward of few bins gathers the pixels its operator reads, no tile more.

    The oracle's values; the bits of the chunked path on the tiles and on the whole map, and
    of the small products (no operator built); boxes whose operator would outgrow the
    budget take the chunked path.
    """
    rng, x, rois = _few_boxes(7, dtype, [1, 0, 1, 0, 1, 0][:boxes])
    rois = rois.astype(np.float64 if dtype == np.float64 else np.float32)
    # Over negative zeros, whose sums SciPy starts at +0.0: so do the small products', where
    # no missing tap adds a +0.0 after them (one box of bins alike).
    x[1, :, 1:10, 1:10] = -0.0
    rois[0, 1:] = [6, 6, 14, 14]
    if boxes > 1:
        rois[1, 1:] = [-40, 10, 30, 400]  # partly off the map: its bins have fewer taps
    x[1, 2, 30, 40] = np.inf  # read by no box: the other outputs stay finite
    x[:, :, 0, 0] = np.nan  # where the small products' missing taps point: never summed
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    monkeypatch.setattr(roi_align, "FEW_BINS", 4096)
    monkeypatch.setattr(_sampling, "SMALL", 0)
    tapped = _spy(monkeypatch, _sampling, "tapped")
    copied = _spy(monkeypatch, _cells, "copy_rows")
    small = _spy(monkeypatch, _sampling, "small_product")
    out = _forward("roi_align", x, rois, None)
    ((a, rows),) = tapped
    assert not copied and rows.shape == (a.shape[1], 3) and a.shape[0] == boxes * 3 * 4
    assert len(np.unique(a.indices)) == len(rows)  # every gathered pixel is read
    assert (x[:, 0].size <= 32 * a.nnz) == (boxes == 6)
    assert np.isfinite(out).all()
    assert (out[0] == 0).all() and not np.signbit(out[0]).any()
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    expected = _forward("roi_align", x, rois, None, oracle=True)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(_sampling, "SMALL", 1 << 16)
    dense = _spy(monkeypatch, _sampling, "dense_product")
    for few_samples in (0, _sampling.DENSE):  # the small products, then the dense slots
        monkeypatch.setattr(_sampling, "DENSE", few_samples)
        np.testing.assert_array_equal(
            out.view(np.uint8), _forward("roi_align", x, rois, None).view(np.uint8)
        )
    # Six boxes' slots over every channel outnumber SMALL: the small products serve twice.
    assert len(dense) == (boxes == 1) and len(small) == 2 - len(dense) and len(tapped) == 1
    monkeypatch.setattr(roi_align, "FEW_BINS", 0)
    for share in (1.0, -1.0):  # the tiles read, then the whole map
        monkeypatch.setattr(_cells, "_WHOLE", share)
        chunked = _forward("roi_align", x, rois, None)
        np.testing.assert_array_equal(out.view(np.uint8), chunked.view(np.uint8))
    assert copied and len(copied[0]) > len(rows)  # the tiles hold more than the taps
    monkeypatch.setattr(roi_align, "FEW_BINS", 4096)
    monkeypatch.setattr(_sampling, "DENSE", 0)  # dense slots build no operator
    monkeypatch.setattr(_sampling, "BUDGET", a.nnz - 1)  # the operator outgrows it: chunks
    again = _forward("roi_align", x, rois, None)
    assert len(tapped) == 1 and len(small) + len(dense) == 2
    np.testing.assert_array_equal(out.view(np.uint8), again.view(np.uint8))


@pytest.mark.parametrize("seed", range(12))
def test_few_bins_paths_give_the_chunked_bits(monkeypatch, seed):
    """Dense slots, small products, the operator on the taps, the chunks: one result, bit for bit.

    Forward, and backward (few bins: dense slots, one chunk over every pixel, or the tiles).

    Random maps (NaN, infinities, negative zeros), boxes (off the map, empty, huge), sampling
    ratios (adaptive included), alignment, output sizes and dtypes.
    """
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float64, np.float16)[seed % 3]
    n, c, h, w = 2, int(rng.integers(1, 5)), int(rng.integers(2, 40)), int(rng.integers(2, 40))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x.reshape(-1)[rng.integers(0, x.size, 6)] = [np.nan, np.inf, -np.inf, -0.0, -0.0, 0.0]
    scale = (1.0, 0.5, 0.25)[seed % 3]
    rois = _boxes(rng, int(rng.integers(1, 9)), n, scale, h, w, far=seed % 4 == 0)
    rois = rois.astype(np.float64 if dtype == np.float64 else np.float32)
    args = ((int(rng.integers(1, 6)), int(rng.integers(1, 6))), scale, int(rng.integers(0, 4)))
    g = rng.standard_normal((len(rois), c, *args[0])).astype(dtype)
    channels_last = bool(seed % 4 < 2)
    results = []
    paths = ((4096, 1 << 16, 64), (4096, 1 << 16, 0), (4096, 0, 64), (0, 1 << 16, 64))
    for few, small, few_samples in paths:
        monkeypatch.setattr(roi_align, "FEW_BINS", few)
        monkeypatch.setattr(_sampling, "SMALL", small)
        monkeypatch.setattr(_sampling, "DENSE", few_samples)
        with np.errstate(all="ignore"):  # as cuproi._cpu calls it: NaN in, NaN out
            out = roi_align.roi_align(x, rois, *args, bool(seed % 2))
            grad = roi_align.roi_align_backward(
                g, rois, x.shape, *args[1:], bool(seed % 2), channels_last=channels_last
            )
        assert grad.transpose(0, 2, 3, 1).flags.c_contiguous == (channels_last or c == 1)
        results.append((out.view(np.uint8), np.ascontiguousarray(grad).view(np.uint8)))
    for few in results[:3]:
        np.testing.assert_array_equal(few[0], results[3][0])
        np.testing.assert_array_equal(few[1], results[3][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_one_small_box_takes_dense_slots(monkeypatch, dtype):
    """One box of one channel, RoI Align's fixed cost: dense slots forward and backward.

    The oracle's values, and the bits of the chunked path.
    """
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 1, 30, 40)).astype(dtype)
    rois = np.array([[0, 3.2, 4.1, 21.7, 15.5]], np.float64 if dtype == np.float64 else np.float32)
    g = rng.standard_normal((1, 1, 7, 7)).astype(dtype)
    monkeypatch.setattr(roi_align, "FEW_BINS", 4096)
    taken = [_spy(monkeypatch, _sampling, f) for f in ("dense_product", "dense_transpose")]
    out = roi_align.roi_align(x, rois, (7, 7), 1.0, 2, True)
    grad = roi_align.roi_align_backward(g, rois, x.shape, 1.0, 2, True)
    assert [len(t) for t in taken] == [1, 1]
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    expected = align_oracle.roi_align(x, rois, (7, 7), 1.0, 2, True)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)
    expected = align_oracle.roi_align_backward(g, rois, x.shape, (7, 7), 1.0, 2, True)
    np.testing.assert_allclose(grad.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(roi_align, "FEW_BINS", 0)
    np.testing.assert_array_equal(
        out.view(np.uint8), roi_align.roi_align(x, rois, (7, 7), 1.0, 2, True).view(np.uint8)
    )
    chunked = roi_align.roi_align_backward(g, rois, x.shape, 1.0, 2, True)
    np.testing.assert_array_equal(grad.view(np.uint8), chunked.view(np.uint8))


def test_dense_slots_keep_the_taps_of_zero_weight(monkeypatch):
    """A sample on a cell's edge taps the next cell with weight 0: 0 x inf is NaN, as in A @ X.

    Bin (0, 0) samples (1, 1) exactly; its taps (1, 2) and (2, 1) weigh 0 but move with it.
    """
    monkeypatch.setattr(roi_align, "FEW_BINS", 4096)
    taken = _spy(monkeypatch, _sampling, "dense_product")
    x = np.ones((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 2] = np.inf
    rois = np.array([[0, 0, 0, 4, 4]], np.float32)
    with np.errstate(invalid="ignore"):
        out = roi_align.roi_align(x, rois, (2, 2), 1.0, 1, False)
    assert taken and np.isnan(out[0, 0, 0, 0]) and np.isfinite(out.ravel()[1:]).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_operators_built_in_pieces_give_the_same_bits(monkeypatch, channels_last):
    """RoI Align's operators built a few entries at a time (PIECE): the forward's chunks, the
    backward's stacked pieces; the bits of operators built whole."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 5, 30, 40)).astype(np.float32)
    rois = _boxes(rng, 40, 2, 0.5, 30, 40, far=True).astype(np.float32)
    g = rng.standard_normal((40, 5, 3, 4)).astype(np.float32)
    built = _spy(monkeypatch, roi_align, "_operator")
    results = []
    for piece in (1 << 30, 64):
        monkeypatch.setattr(roi_align, "PIECE", piece)
        out = roi_align.roi_align(x, rois, (3, 4), 0.5, 0, True)
        grad = roi_align.roi_align_backward(
            g, rois, x.shape, 0.5, 0, True, channels_last=channels_last
        )
        results.append((out, np.ascontiguousarray(grad), len(built)))
    (out, grad, whole), (pieces_out, pieces_grad, every) = results
    assert every - whole > 2 * whole  # many more pieces than chunks
    np.testing.assert_array_equal(out.view(np.uint8), pieces_out.view(np.uint8))
    np.testing.assert_array_equal(grad.view(np.uint8), pieces_grad.view(np.uint8))


def _backward(op, g, x, rois, offset, channels_last):
    if op == "roi_align":
        return roi_align.roi_align_backward(
            g, rois, x.shape, 0.5, 2, True, channels_last=channels_last
        )
    return deform_roi_pool.deform_roi_pool_backward(
        g, x, rois, offset, 0.5, 2, 0.1, channels_last=channels_last
    )[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_few_bins_backward_in_one_chunk(monkeypatch, dtype, channels_last):
    """RoI Align's backward of a few small boxes on a large map: one chunk over every pixel.

    No tiles laid out; the oracle's values, and the bits of the chunked path on the tiles.
    """
    rng, x, rois = _few_boxes(11, dtype, [0, 1, 1])
    rois = rois.astype(np.float64 if dtype == np.float64 else np.float32)
    g = rng.standard_normal((3, 3, 3, 4)).astype(dtype)
    reached = _spy(monkeypatch, _cells, "runs")
    monkeypatch.setattr(roi_align, "FEW_BINS", 4096)
    grad = _backward("roi_align", g, x, rois, None, channels_last)
    assert not reached and grad.dtype == dtype
    assert grad.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last
    expected = align_oracle.roi_align_backward(g, rois, x.shape, (3, 4), 0.5, 2, True)
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(grad.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(roi_align, "FEW_BINS", 0)
    chunked = _backward("roi_align", g, x, rois, None, channels_last)
    assert reached and reached[-1] is not None  # the tiles
    np.testing.assert_array_equal(
        np.ascontiguousarray(grad).view(np.uint8), np.ascontiguousarray(chunked).view(np.uint8)
    )


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_on_the_tiles_read(monkeypatch, op, dtype, channels_last):
    """The gradient scattered to the runs read: the oracle's, and the whole map's bits.

    Also summed over many chunks (RoI Align: of a few bins each, its boxes then being too
    large for a chunk): the same sums, up to float32 rounding where chunks meet.
    """
    rng, x, rois = _few_boxes(4, dtype, [0, 1, 1, 0, 1])
    rois = rois.astype(np.float32)
    offset = _deform_offset(rng, 5).astype(np.float32)
    g = rng.standard_normal((5, 3, 3, 4)).astype(dtype)
    reached = _spy(monkeypatch, _cells, "runs")
    grad = _backward(op, g, x, rois, offset, channels_last)
    assert reached[-1] is not None and reached[-1].size < 0.5 * 2 * 60 * 90
    assert grad.dtype == dtype and grad.shape == x.shape
    assert grad.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last
    if op == "roi_align":
        expected = align_oracle.roi_align_backward(g, rois, x.shape, (3, 4), 0.5, 2, True)
        tol = {np.float16: 2e-3, np.float32: 1e-5}[dtype]
        np.testing.assert_allclose(grad.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(_cells, "_WHOLE", -1.0)  # the whole map, always
    whole = _backward(op, g, x, rois, offset, channels_last)
    assert reached[-1] is None
    bits = np.ascontiguousarray(grad).view(np.uint8)
    np.testing.assert_array_equal(bits, np.ascontiguousarray(whole).view(np.uint8))
    for share in (0.75, -1.0):  # the runs, then the whole map
        monkeypatch.setattr(_cells, "_WHOLE", share)
        monkeypatch.setattr(_sampling, "BUDGET", 40)  # a chunk per box, or per few bins
        chunked = _backward(op, g, x, rois, offset, channels_last)
        np.testing.assert_allclose(chunked, grad, rtol=1e-6, atol=1e-6 * np.abs(grad).max())


def _rotated(boxes):
    """(K, 6) rotated boxes of the same centres and sizes as (K, 5) ``boxes``, at 30 degrees."""
    centre = (boxes[:, 1:3] + boxes[:, 3:5]) / 2
    size = np.abs(boxes[:, 3:5] - boxes[:, 1:3])
    return np.column_stack([boxes[:, 0], centre, size, np.full(len(boxes), 30)]).astype(boxes.dtype)


# Position-sensitive ops and PrRoI: (CPU module, oracle module, arguments after the scale, how
# the (K, 5) boxes are given); each called as op(x, boxes, (2, 3), 0.5, *arguments) forward
# and op_backward(g, boxes, shape, 0.5, *arguments) backward, the oracles in float32 coordinates.
_FAMILY = {
    "ps_roi_align": (ps_roi_align, ps_align_oracle, (2,), lambda r: r),
    "ps_roi_pool": (ps_roi_pool, ps_pool_oracle, (), lambda r: r),
    "roi_align_rotated": (roi_align_rotated, rotated_oracle, (2, True, False), _rotated),
    "prroi_pool": (prroi_pool, prroi_oracle, (), lambda r: r),
}


def _family(op, x, g, rois, oracle=False):
    """The forward and the backward of ``op`` (or of its oracle) on ``x``, ``g`` and ``rois``."""
    module, oracle_module, args, boxes = _FAMILY[op]
    forward, backward = getattr(oracle_module if oracle else module, op), op + "_backward"
    backward = getattr(oracle_module if oracle else module, backward)
    rois = boxes(rois)
    if oracle:
        return (
            forward(x.astype(np.float64), rois, (2, 3), 0.5, *args, np.float32),
            backward(g, rois, x.shape, (2, 3), 0.5, *args, np.float32),
        )
    return forward(x, rois, (2, 3), 0.5, *args), backward(g, rois, x.shape, 0.5, *args)


@pytest.mark.parametrize("op", sorted(_FAMILY))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_family_on_the_tiles_read(monkeypatch, op, dtype):
    """Position-sensitive ops (one stack of maps per bin row) and PrRoI on the runs read.

    Forward and backward: the oracle's values, and the bits of the whole map and of many
    chunks of boxes.
    """
    rng, x, rois = _few_boxes(5, dtype, [0, 1, 1, 0], c=12)
    rois = rois.astype(np.float32)
    channels = 12 if op in ("prroi_pool", "roi_align_rotated") else 12 // 6
    g = rng.standard_normal((4, channels, 2, 3)).astype(dtype)
    reached = _spy(monkeypatch, _cells, "runs")
    results = _family(op, x, g, rois)
    assert reached and all(r is not None for r in reached)
    tol = {np.float16: 3e-3, np.float32: 1e-5}[dtype]
    for result, expected in zip(results, _family(op, x, g, rois, oracle=True), strict=True):
        assert result.dtype == dtype
        np.testing.assert_allclose(result.astype(np.float64), expected, rtol=tol, atol=tol)
    monkeypatch.setattr(_sampling, "BUDGET", 20)  # a chunk per box
    for result, again in zip(results, _family(op, x, g, rois), strict=True):
        np.testing.assert_array_equal(result.view(np.uint8), again.view(np.uint8))
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 21)
    monkeypatch.setattr(_cells, "_WHOLE", -1.0)  # the whole map, always
    reached.clear()
    for result, again in zip(results, _family(op, x, g, rois), strict=True):
        np.testing.assert_array_equal(result.view(np.uint8), again.view(np.uint8))
    assert reached and all(r is None for r in reached)


@pytest.mark.parametrize("whole", [True, False])
def test_ps_roi_pool_ranges_build_the_operators_of_their_taps(whole):
    """Position-sensitive RoI Pool's operators, built from its ranges of cells (_ps.Ranges),
    are those of the same cells as taps of weight 1 (_sampling.operator): the same entries
    in the same order, on the whole map and on the runs of tiles, so the same bits."""
    rng = np.random.default_rng(0)
    on_the_whole_map = set()
    for _ in range(20):
        n, h, w, k = 2, *rng.integers(1, 60, 2), 12
        rois = _geometry_boxes(rng, n, h, w, k)
        plan = ps_roi_pool._plan(rois, (n, h, w), 1.0, 3, 4)
        h0, h1, w0, w1 = _geometry.pool_bins(rois, 1.0, 3, 4, h, w, inclusive=False)
        taps = plan._replace(ys=_weight_one(h0, h1), xs=_weight_one(w0, w1))
        for ph in range(3):
            pixels = _ps._pixels(plan, ph, 2, whole=whole)
            on_the_whole_map.add(pixels.runs is None)
            built = _ps._operator(plan, 0, k, ph, pixels)
            expected = _ps._operator(taps, 0, k, ph, pixels)
            assert built.dtype == expected.dtype and built.shape == expected.shape
            for part in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(built, part), getattr(expected, part))
    assert on_the_whole_map == {True} if whole else False in on_the_whole_map


def _geometry_boxes(rng, n, h, w, k):
    """(K, 5) float32 boxes over and around an (N, H, W) map, some of them empty."""
    rois = np.zeros((k, 5), np.float32)
    rois[:, 0] = rng.integers(0, n, k)
    rois[:, 1:3] = rng.uniform(-10, max(h, w) + 10, (k, 2))
    rois[:, 3:5] = rois[:, 1:3] + rng.uniform(-5, max(h, w), (k, 2))
    return rois


def _weight_one(lo, hi):
    """AxisTaps of the ranges ``[lo, hi)`` (rows in C order): weight 1 on every cell."""
    lo, size = lo.ravel(), (hi - lo).ravel()
    ptr = np.concatenate([[0], np.cumsum(size)])
    row = np.repeat(np.arange(len(size)), size)
    index = lo[row] + (np.arange(ptr[-1]) - ptr[row])
    ones = np.ones(len(index))
    return _sampling.AxisTaps(ptr, index, ones, np.zeros_like(ones))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_roi_pool_on_the_tiles_read(monkeypatch, dtype):
    """A few boxes on a large map: RoI Pool gathers their cells from the runs read.

    Its backward sums over the cells the argmax names. Both give the table's and the slabs'
    bits, ties, NaN and the sign of zero included.
    """
    rng = np.random.default_rng(6)
    n, c, h, w, scale = 2, 3, 60, 90, 0.5
    x = rng.integers(-3, 4, (n, c, h, w)).astype(dtype)  # many ties
    x[0, 1, 5:9, 5:9] = -0.0
    x[1, 2, 20, 30] = np.nan
    rois = (_boxes(rng, 6, n, scale, h, w) / 3).astype(np.float32)
    rois[:, 0] = [0, 1, 1, 0, 1, 0]
    rois[0, 1:] = [8, 8, 18, 18]  # over the negative zeros
    rois[1, 1:] = [50, 30, 70, 50]  # over the NaN
    g = rng.standard_normal((6, c, 3, 4)).astype(dtype)
    few = _spy(monkeypatch, roi_pool, "_few")
    out, argmax = roi_pool.roi_pool(x, rois, (3, 4), scale, return_argmax=True)
    grad = roi_pool.roi_pool_backward(g, rois, argmax, x.shape)
    assert few == [True]
    expected, expected_argmax = pool_oracle.roi_pool(x, rois, (3, 4), scale)
    np.testing.assert_array_equal(out, expected.astype(dtype))
    np.testing.assert_array_equal(argmax, expected_argmax)
    monkeypatch.setattr(roi_pool, "_few", lambda *a: False)
    table_out, table_argmax = roi_pool.roi_pool(x, rois, (3, 4), scale, return_argmax=True)
    np.testing.assert_array_equal(out, table_out)  # NaN where NaN (whatever its payload)
    zero = out == 0
    assert zero.any() and (np.signbit(out[zero]) == np.signbit(table_out[zero])).all()
    assert np.signbit(out[zero]).any()  # the boxes over the negative zeros return -0.0
    np.testing.assert_array_equal(argmax, table_argmax)
    expected_grad = pool_oracle.roi_pool_backward(g, rois, expected_argmax, x.shape)
    tol = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(grad.astype(np.float64), expected_grad, rtol=tol, atol=tol)
    monkeypatch.setattr(roi_pool, "_named", lambda *a: None)
    slabs = roi_pool.roi_pool_backward(g, rois, argmax, x.shape)
    np.testing.assert_array_equal(grad.view(np.uint8), slabs.view(np.uint8))
