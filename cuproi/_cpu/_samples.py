"""Bins as lists of their bilinear samples: max-mode RoI Align and the box gradients.

The sparse operator of ``_sampling`` sums a bin's samples before anything else sees them. Max
pooling needs every sample's value, and a box gradient weighs every sample's slope by where the
sample sits in the box, so these work on the samples themselves: ``samples`` lists the in-range
samples of many bins (in scan order within a bin, with their taps), ``values`` and ``slopes``
interpolate all channels at them. Boxes are processed in chunks whose ``samples x channels``
arrays stay within ``_sampling.BUDGET`` entries, each split into ranges for the threads.
Positions are computed in the compute dtype in the operation order of the kernels
(``_sampling.sample_positions``), so both backends pick the same samples, taps and winners.
"""

from typing import NamedTuple

import numpy as np

from cuproi._cpu import _sampling


class Samples(NamedTuple):
    """The in-range samples of a set of bins, grouped by bin in scan order (iy, then ix)."""

    bin: np.ndarray  # (S,) bin of each sample
    iy: np.ndarray  # (S,) sample row and column within the bin's grid
    ix: np.ndarray
    scan: np.ndarray  # (S,) iy * grid_w + ix, the scan order within the bin
    y0: np.ndarray  # taps: rows y0, y1 with weights 1 - ly, ly; columns likewise
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    ly: np.ndarray
    lx: np.ndarray
    y_free: np.ndarray  # False in the edge bands, where the value does not move with y
    x_free: np.ndarray
    first_out: np.ndarray  # (B,) scan index of each bin's first out-of-range sample, -1: none


def samples(y_start, bin_h, grid_h, x_start, bin_w, grid_w, height, width):
    """In-range samples of bins given by their (start, bin size, grid) along y and x, each (B,)."""
    ct = y_start.dtype.type
    iy0, iy1 = _sampling.sample_range(y_start, bin_h, grid_h, height)
    ix0, ix1 = _sampling.sample_range(x_start, bin_w, grid_w, width)
    ny, nx = iy1 - iy0, ix1 - ix0
    per_bin = ny * nx
    bins = len(y_start)
    b = np.repeat(np.arange(bins), per_bin)
    local = np.arange(b.size) - np.repeat(np.cumsum(per_bin) - per_bin, per_bin)
    iy = iy0[b] + local // np.maximum(nx[b], 1)
    ix = ix0[b] + local % np.maximum(nx[b], 1)
    y = _sampling.sample_positions(y_start[b], bin_h[b], grid_h[b], iy)
    x = _sampling.sample_positions(x_start[b], bin_w[b], grid_w[b], ix)
    inside = _sampling.in_range(y, height) & _sampling.in_range(x, width)
    gw = grid_w.astype(np.int64)
    # First out-of-range sample in scan order: one skipped by the range, or one that fails the
    # exact test (samples come in scan order, so the first failing one per bin is the least).
    big = np.iinfo(np.int64).max
    skipped = np.where(
        (iy0 > 0) | (ix0 > 0),
        0,
        np.where(ix1 < gw, ix1, np.where(iy1 < grid_h, iy1 * gw, big)),
    )
    skipped = np.where((ny <= 0) | (nx <= 0), 0, skipped)
    failed = np.full(bins, big, np.int64)
    out = ~inside
    np.minimum.at(failed, b[out], (iy * gw[b] + ix)[out])
    first_out = np.minimum(skipped, failed)
    first_out = np.where((grid_h <= 0) | (grid_w <= 0), -1, first_out)
    first_out = np.where(first_out == big, -1, first_out)
    scan = (iy * gw[b] + ix)[inside]
    b, iy, ix, y, x = b[inside], iy[inside], ix[inside], y[inside], x[inside]
    y0, y1, ly, y_free = _sampling.edge_taps(y, height)
    x0, x1, lx, x_free = _sampling.edge_taps(x, width)
    return Samples(
        b, iy, ix, scan, y0, y1, x0, x1, ly.astype(ct), lx.astype(ct), y_free, x_free, first_out
    )


def _corners(s, image, height, width, x_rows):
    """Feature rows (S, C) of the 4 taps of every sample: v00, v01, v10, v11."""
    base = image[s.bin] * height
    return [
        x_rows[(base + yy) * width + xx]
        for yy, xx in ((s.y0, s.x0), (s.y0, s.x1), (s.y1, s.x0), (s.y1, s.x1))
    ]


def weights(s):
    """Bilinear weights (S,) of the 4 taps, in the order of :func:`_corners`."""
    one = s.ly.dtype.type(1)
    hy, hx = one - s.ly, one - s.lx
    return hy * hx, hy * s.lx, s.ly * hx, s.ly * s.lx


def values(s, image, height, width, x_rows):
    """Interpolated values (S, C) of every sample, in the kernels' order of operations."""
    v00, v01, v10, v11 = _corners(s, image, height, width, x_rows)
    w00, w01, w10, w11 = weights(s)
    return w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11


def slopes(s, image, height, width, x_rows):
    """Right derivatives (S, C) of every sample's value along x and y (0 in the edge bands)."""
    v00, v01, v10, v11 = _corners(s, image, height, width, x_rows)
    one = s.ly.dtype.type(1)
    hy, hx = (one - s.ly)[:, None], (one - s.lx)[:, None]
    dx = hy * (v01 - v00) + s.ly[:, None] * (v11 - v10)
    dy = hx * (v10 - v00) + s.lx[:, None] * (v11 - v01)
    return dx * s.x_free[:, None], dy * s.y_free[:, None]


def scan_max(s, vals, bins):
    """Max-mode winner of every (bin, channel): ``(value (B, C), sample index (B, C) or -1)``.

    First maximum in scan order, a NaN wins, an out-of-range sample competes as 0 (its index is
    -1: no gradient), a bin without samples gives 0 with index -1 (kernels: bin_max).
    """
    c = vals.shape[1]
    value = np.zeros((bins, c), vals.dtype)
    winner = np.full((bins, c), -1, np.int64)
    if len(s.bin):
        counts = np.bincount(s.bin, minlength=bins)
        has = np.flatnonzero(counts)
        n = counts[has]
        # Slot t of every bin holds its sample t, or its last one where it has fewer: repeats
        # change neither the maximum nor the first sample that reaches it. One gather, then
        # elementwise passes over the slots (np.maximum.reduceat is several times slower).
        order = (np.cumsum(counts) - counts)[has, None] + np.minimum(
            np.arange(n.max()), n[:, None] - 1
        )
        slots = vals[order]  # (bins with samples, slots, C)
        best = slots[:, 0].copy()
        for t in range(1, slots.shape[1]):
            np.maximum(best, slots[:, t], out=best)  # NaN propagates
        nan = np.isnan(best)
        any_nan = nan.any()
        first = np.empty(best.shape, np.int64)
        for t in reversed(range(slots.shape[1])):  # the earliest hit is written last
            hit = slots[:, t] == best
            if any_nan:
                hit |= nan & np.isnan(slots[:, t])
            np.copyto(first, order[:, t, None], where=hit)
        # An out-of-range zero competes: it wins when larger, or equal and earlier.
        out = s.first_out[has][:, None]
        scan = s.scan[first]
        zero = (out >= 0) & ~nan & ((best < 0) | ((best == 0) & (out < scan)))
        value[has] = np.where(zero, 0, best)
        winner[has] = np.where(zero, -1, first)
    return value, winner


def bins_of(y, x, k0, k1):
    """The (start, size, grid) arrays along y and x of boxes ``k0:k1``, flattened to bins."""
    return [np.ascontiguousarray(a[k0:k1]).ravel() for a in (*y, *x)]


# Work of a sample in one channel, in _parallel.PRODUCT_GRAIN's multiply-adds: gathering,
# weighing and comparing its 4 corners (max mode's forward broke even near 0.4M samples x
# channels, its backward sooner).
_SAMPLE_WORK = 32


def parts(y, x, height, width, channels):
    """Chunks of boxes whose samples times ``channels`` stay within the budget.

    Each chunk comes as its ranges of boxes for the threads (``_sampling.parts``).
    """
    k = y[0].shape[0]
    rows = [a.reshape(k, a.size // max(k, 1)) for a in (*y, *x)]  # (K, bins); also with K = 0
    ny = np.diff(np.stack(_sampling.sample_range(*rows[:3], height)), axis=0)
    nx = np.diff(np.stack(_sampling.sample_range(*rows[3:], width)), axis=0)
    cost = (ny[0] * nx[0]).sum(1) * max(channels, 1)
    return _sampling.parts(cost, _SAMPLE_WORK)


def box_gradient(s, dx, dy, weight, bins, pooled, grid_h, grid_w, scale, shift, free):
    """(K, 5) box gradient of ``bins`` (B, PH * PW per box) from sample slopes (S, C).

    ``weight`` (S, C) is d loss / d sample value per channel; ``grid_h``/``grid_w`` are the
    bins' sample grids (B,), ``shift`` the bins' (ax, ay) extra shifts in box widths/heights
    (deform_roi_pool's gamma * offset) or None, ``free`` the boxes' (free_w, free_h) flags (False
    where torchvision's legacy minimum holds the size). Mirrors add_box_terms in the kernels.
    """
    ct = dx.dtype.type
    pooled_h, pooled_w = pooled
    k = bins // (pooled_h * pooled_w)
    ex = (weight * dx).sum(1)
    ey = (weight * dy).sum(1)
    b = s.bin
    ph, pw = (b // pooled_w) % pooled_h, b % pooled_w
    u = (pw + (s.ix + ct(0.5)) / grid_w[b].astype(ct)) / ct(pooled_w)
    v = (ph + (s.iy + ct(0.5)) / grid_h[b].astype(ct)) / ct(pooled_h)
    sx, ux = np.bincount(b, ex, bins), np.bincount(b, u * ex, bins)
    sy, uy = np.bincount(b, ey, bins), np.bincount(b, v * ey, bins)
    ax, ay = (0, 0) if shift is None else shift
    box = np.arange(bins) // (pooled_h * pooled_w)
    px = np.where(free[0][box], ax * sx + ux, 0)
    py = np.where(free[1][box], ay * sy + uy, 0)
    terms = np.stack([sx - px, sy - py, px, py], axis=1) * scale
    out = np.zeros((k, 5), np.float64)
    for j in range(4):
        out[:, j + 1] = np.bincount(box, terms[:, j], k)
    return out
