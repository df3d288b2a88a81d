"""The cells of a feature map that the boxes read, as runs of tiles, copied as rows.

A few boxes on a large map read a small part of it. Copying the whole map channels last for
them, or keeping a per-pixel index of it, costs memory and time in proportion to the map, not
to the boxes: one 10x10 box on a 30000x30000 plane once allocated a 6.7 GB index. So the ops
copy (forward) and scatter their gradients to (backward) only the tiles of 8 x 16 cells that the
boxes' cells overlap, merged along each band of tiles into runs of at most ``_RUN`` tiles. A
run is a rectangle of cells, and its pixels are consecutive rows of the products, row-major:
:class:`Runs` maps a pixel to its row. The working memory is that of the tiles read, plus an
index of the map's tiles when the boxes read enough of them to pay for it. When they overlap
most of the tiles, the ops use the whole map in NCHW pixel order instead (no runs).
"""

import math
from typing import NamedTuple

import numpy as np

from cuproi import _layout
from cuproi._cpu import _parallel

# Tiles of 8 rows of 16 pixels. A map copied tile by tile took 1.1 to 1.2 times as long as in
# runs of BLOCK pixels (8 x 64 and 16 x 32 tiles no less), and the smaller the
# tiles, the closer they fit the boxes (FPN's P2 on the box head: 0.81 of 8 x 16 tiles read,
# 0.95 of 8 x 64). Runs of up to 4 tiles (8 x 64 pixels, one BLOCK) make fewer, longer copies
# and scatters. When the boxes reach more than _WHOLE of the tiles, the whole map is used.
_TILE_ROWS, _TILE_COLS = 8, 16
# Pixels per block of the whole-map layout changes (channels_last): 256 channels stay in L2.
BLOCK = 512
_RUN = 4
_WHOLE = 0.75
_RUN_COST = 8192  # elements: see _worth


class Cells(NamedTuple):
    """The cells ``[y0, y1) x [x0, x1)`` of image ``image`` that each box reads (int64, (K,))."""

    image: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray


class Runs(NamedTuple):
    """Runs of tiles of an (N, H, W) map: rectangles whose pixels are consecutive rows.

    Run ``j`` is image ``image[j]``'s cells ``[y0, y1) x [x0, x1)``, rows ``first[j]`` to
    ``first[j + 1]`` in row-major order. ``tile`` is the (rows, cols) size of a tile and
    ``start`` (R,) the tile number ``(image * tiles_h + ty) * tiles_w + tx`` of each run's first
    tile; ``lookup`` is the run of every tile of the map (-1: none), or None where the map has
    too many tiles for the few read (:meth:`run_of` searches ``start`` then).
    """

    shape: tuple
    image: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    first: np.ndarray
    tile: tuple
    start: np.ndarray
    lookup: np.ndarray | None

    @property
    def size(self):
        """Rows in all: the pixels of the runs."""
        return int(self.first[-1])

    def run_of(self, tile):
        """Run of every tile number in ``tile``, -1 for a tile in none."""
        if self.lookup is not None:
            return self.lookup[tile]
        j = np.searchsorted(self.start, tile, side="right") - 1
        length = -(-(self.x1 - self.x0) // self.tile[1])
        inside = (j >= 0) & (tile < self.start[j] + length[j])
        return np.where(inside, j, -1)

    def rows_of(self, image, y, x):
        """The row of every pixel ``(image, y, x)`` (broadcast int64 arrays).

        Raises RuntimeError for a pixel outside the runs, which a product would read out of
        bounds: it means reach() left out a cell that a sample reads.
        """
        _, h, w = self.shape
        rows, cols = self.tile
        tiles_h, tiles_w = -(-h // rows), -(-w // cols)
        j = self.run_of((image * tiles_h + y // rows) * tiles_w + x // cols)
        if j.size and j.min() < 0:
            raise RuntimeError("cuproi: a sample reads a pixel that reach() left out")
        width = self.x1[j] - self.x0[j]
        return self.first[j] + (y - self.y0[j]) * width + (x - self.x0[j])

    def blocks(self):
        """``[first row, last row + 1, image, y0, y1, x0, x1]`` of every run, an (R, 7) array."""
        columns = [self.first[:-1], self.first[1:], self.image, self.y0, self.y1, self.x0, self.x1]
        return np.column_stack(columns)


def _tile_size(w):
    """(rows, cols) of a tile: 8 x 16, or as many rows of a map narrower than 16 cells."""
    cols = min(w, _TILE_COLS)
    rows = max(_TILE_ROWS * _TILE_COLS // cols, 1) if cols < _TILE_COLS else _TILE_ROWS
    return rows, cols


def _tiles_read(cells, n, tiles_h, tiles_w, rows, cols):
    """Sorted numbers of the tiles that ``cells`` overlap.

    Listed box by box when the boxes' tiles, counted once per box, are fewer than the map's
    (memory in proportion to what they read), else counted on the map's tile grid.
    """
    some = (cells.y1 > cells.y0) & (cells.x1 > cells.x0)
    image = cells.image[some]
    top, bottom = cells.y0[some] // rows, (cells.y1[some] - 1) // rows + 1
    left, right = cells.x0[some] // cols, (cells.x1[some] - 1) // cols + 1
    boxes = (image, top, bottom, left, right)
    if ((bottom - top) * (right - left)).sum() <= n * tiles_h * tiles_w:
        return _listed(boxes, tiles_h, tiles_w)
    return _counted(boxes, n, tiles_h, tiles_w)


def _listed(boxes, tiles_h, tiles_w):
    """The tiles of every box's tile rectangle ``[top, bottom) x [left, right)``, merged."""
    image, top, bottom, left, right = boxes
    wide = right - left
    area = (bottom - top) * wide
    box = np.repeat(np.arange(len(area)), area)
    local = np.arange(box.size) - (np.cumsum(area) - area)[box]
    ty, tx = top[box] + local // wide[box], left[box] + local % wide[box]
    return np.unique((image[box] * tiles_h + ty) * tiles_w + tx)


def _counted(boxes, n, tiles_h, tiles_w):
    """The tiles of the boxes' rectangles, from a difference array of the map's tile grid.

    Each rectangle adds to the array at its four corners; the running sums along both axes
    count the rectangles over every tile.
    """
    image, top, bottom, left, right = boxes
    grid = (n, tiles_h + 1, tiles_w + 1)
    corners = [(top, left), (top, right), (bottom, left), (bottom, right)]
    at = np.concatenate([np.ravel_multi_index((image, y, x), grid) for y, x in corners])
    sign = np.repeat([1, -1, -1, 1], len(image))
    count = np.bincount(at, sign, math.prod(grid)).reshape(grid)  # np.add.at: 20 times slower
    return np.flatnonzero(count.cumsum(1).cumsum(2)[:, :tiles_h, :tiles_w] > 0.5)


def runs(cells, n, h, w, channels=None):
    """The :class:`Runs` of the tiles of an (N, H, W) map that ``cells`` overlap.

    None when they overlap more than ``_WHOLE`` of the tiles, or the map is empty; and, given
    the ``channels`` an op moves per pixel, when its runs would cost more than the whole map
    (:func:`_worth`).
    """
    if n * h * w == 0:
        return None
    rows, cols = _tile_size(w)
    tiles_h, tiles_w = -(-h // rows), -(-w // cols)
    tiles = n * tiles_h * tiles_w
    read = _tiles_read(cells, n, tiles_h, tiles_w, rows, cols)
    if len(read) > _WHOLE * tiles:
        return None
    # A run starts where the tiles read stop being consecutive in a band, and every _RUN tiles.
    tx = read % tiles_w
    new = np.ones(len(read), bool)
    new[1:] = (read[1:] != read[:-1] + 1) | (tx[1:] == 0)
    since = np.arange(len(read)) - np.flatnonzero(new)[np.cumsum(new) - 1]
    new |= since % _RUN == 0
    start = read[new]
    length = np.diff(np.append(np.flatnonzero(new), len(read)))
    image, band = np.divmod(start // tiles_w, tiles_h)
    y0, x0 = band * rows, (start % tiles_w) * cols
    y1, x1 = np.minimum(y0 + rows, h), np.minimum(x0 + length * cols, w)
    first = np.concatenate([[0], np.cumsum((y1 - y0) * (x1 - x0))])
    lookup = None
    if tiles <= 4 * first[-1]:  # an index of the map's tiles, at most 4 entries per pixel read
        lookup = np.full(tiles, -1, np.int64 if len(start) >= 2**31 else np.int32)
        lookup[read] = np.repeat(np.arange(len(start)), length)
    if channels is not None and not _worth(int(first[-1]), len(start), n * h * w, channels):
        return None
    return Runs((n, h, w), image, y0, y1, x0, x1, first, (rows, cols), start, lookup)


def _worth(pixels, count, total, channels):
    """Whether ``count`` runs of ``pixels`` in all cost less than the ``total`` pixels of a map.

    A run costs its pixels times ``channels`` plus _RUN_COST: the Python and SciPy calls of its
    copy or its share of a product, which outweigh its pixels when the op moves few channels
    (ps_roi_align's two output channels: 100 boxes on 2x200x304 maps took 79 ms backward on
    the runs of 14 % of the tiles, 41 on the whole map; 16 boxes, 28 against 37; 2-core VM).
    """
    return pixels * channels + count * _RUN_COST <= total * channels


def copy_rows(x, runs, dtype=None, empty=np.empty):
    """The pixels of ``runs`` in ``x`` as a C-contiguous (P, C) matrix of ``dtype``.

    ``x`` is an (N, C, H, W) array, or a sequence of N (C, H, W) arrays (the position-sensitive
    ops' maps). Allocated by ``empty(shape, dtype)``; run by run, in parallel.
    """
    c = x[0].shape[0]
    out = empty((runs.size, c), dtype or x[0].dtype)
    blocks = runs.blocks()

    def run(start, stop):
        for p, q, i, y0, y1, x0, x1 in blocks[start:stop].tolist():
            out[p:q].reshape(y1 - y0, x1 - x0, c)[...] = x[i][:, y0:y1, x0:x1].transpose(1, 2, 0)

    sizes = np.diff(runs.first)
    _parallel.for_ranges(run, sizes, _parallel.workers(out.size, _parallel.COPY_GRAIN))
    return out


def _blocks(n, pixels):
    """(first image, last image + 1, first pixel, last pixel + 1) blocks of about BLOCK pixels.

    Large images are cut into runs of pixels; small ones (a box's bins) are grouped.
    """
    if pixels >= BLOCK:
        return [
            (i, i + 1, p, min(p + BLOCK, pixels)) for i in range(n) for p in range(0, pixels, BLOCK)
        ]
    step = max(BLOCK // max(pixels, 1), 1)
    return [(i, min(i + step, n), 0, pixels) for i in range(0, n, step)]


def channels_last(x, dtype=None, empty=np.empty):
    """(N, C, H, W) array as a C-contiguous (N*H*W, C) matrix of ``dtype``, copied in blocks.

    NumPy copies a transposed view element by element with a large stride, so whole-array
    copies are several times slower than copies of cache-sized blocks; the blocks are spread
    over the threads. Features already stored channels last are not copied: the matrix is a
    view of them. A copy is allocated by ``empty(shape, dtype)``.
    """
    n, c, h, w = x.shape
    if _layout.channels_last(x) and x.dtype == (dtype or x.dtype):
        return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    src = x.reshape(n, c, h * w)
    out = empty((n, h * w, c), dtype or x.dtype)

    blocks = _blocks(n, h * w)

    def run(start, stop):
        for i0, i1, p0, p1 in blocks[start:stop]:
            out[i0:i1, p0:p1] = src[i0:i1, :, p0:p1].transpose(0, 2, 1)

    threads = _parallel.workers(x.size, _parallel.COPY_GRAIN)
    _parallel.for_ranges(run, np.ones(len(blocks)), threads)
    return out.reshape(n * h * w, c)
