"""Bins as lists of their bilinear samples: max-mode RoI Align and the box gradients.

The sparse operator of ``_sampling`` sums a bin's samples before anything else sees them. Max
pooling needs every sample's value, and a box gradient weighs every sample's slope by where the
sample sits in the box, so these work on the samples themselves: ``samples`` lists the in-range
samples of many bins (in scan order within a bin, with their taps), ``values`` and ``slopes``
interpolate all channels at them. Boxes are processed in chunks whose ``samples x channels``
arrays stay within ``_sampling.BUDGET`` entries, each split into ranges for the threads. A box
that alone exceeds the budget (a huge ``sampling_ratio``, or an adaptive grid over a large map)
is cut into pieces of its samples in scan order (``work``), reduced one after the other:
max mode keeps a running winner per (bin, channel) (``_bin_max.Running``; that module values
and reduces the samples), the box gradients add every piece's terms to running sums in
sample order (``add_terms``), so that the results do not depend on where the pieces are cut.
Positions are computed in the compute dtype in the operation order of the kernels
(``_sampling.sample_positions``), so both backends pick the same samples, taps and winners.
"""

from typing import NamedTuple

import numpy as np

from cuproi._cpu import _parallel, _sampling


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


def _positions(b, iy, ix, axes):
    """Positions (y, x) of samples ``(iy, ix)`` of bins ``b``; ``axes`` are the bins' arrays."""
    y_start, bin_h, grid_h, x_start, bin_w, grid_w = axes
    y = _sampling.sample_positions(y_start[b], bin_h[b], grid_h[b], iy)
    x = _sampling.sample_positions(x_start[b], bin_w[b], grid_w[b], ix)
    return y, x


def _located(b, iy, ix, scan, y, x, height, width, first_out):
    """Samples of bins ``b`` at positions ``y, x`` (in range), with their taps."""
    ct = y.dtype.type
    y0, y1, ly, y_free = _sampling.edge_taps(y, height)
    x0, x1, lx, x_free = _sampling.edge_taps(x, width)
    return Samples(
        b, iy, ix, scan, y0, y1, x0, x1, ly.astype(ct), lx.astype(ct), y_free, x_free, first_out
    )


def candidates(y_start, bin_h, grid_h, x_start, bin_w, grid_w, height, width):
    """Samples of each bin that may fall inside the map: ``(iy0, ny, ix0, nx)``, each (B,).

    A bin's candidates are the ``ny x nx`` samples from ``(iy0, ix0)`` (``_sampling.
    sample_range`` along each axis), numbered in scan order, one bin after another.
    """
    iy0, iy1 = _sampling.sample_range(y_start, bin_h, grid_h, height)
    ix0, ix1 = _sampling.sample_range(x_start, bin_w, grid_w, width)
    return iy0, iy1 - iy0, ix0, ix1 - ix0


def samples(y_start, bin_h, grid_h, x_start, bin_w, grid_w, height, width, span=None):
    """In-range samples of bins given by their (start, bin size, grid) along y and x, each (B,).

    With ``span`` ``(e0, e1)``, only the candidates ``e0:e1`` (:func:`candidates`) are listed,
    and ``first_out`` is the first out-of-range sample among those or outside the candidates.
    """
    axes = (y_start, bin_h, grid_h, x_start, bin_w, grid_w)
    iy0, ny, ix0, nx = candidates(*axes, height, width)
    iy1, ix1 = iy0 + ny, ix0 + nx
    per_bin = ny * nx
    bins = len(y_start)
    if span is None:
        b = np.repeat(np.arange(bins), per_bin)
        local = np.arange(b.size) - np.repeat(np.cumsum(per_bin) - per_bin, per_bin)
    else:  # a piece of the candidates, which may start and end inside a bin
        ends = np.cumsum(per_bin)
        e = np.arange(*span)
        b = np.searchsorted(ends, e, side="right")
        local = e - (ends - per_bin)[b]
    iy = iy0[b] + local // np.maximum(nx[b], 1)
    ix = ix0[b] + local % np.maximum(nx[b], 1)
    y, x = _positions(b, iy, ix, axes)
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
    return _located(b, iy, ix, scan, y, x, height, width, first_out)


def samples_at(axes, height, width, b, scan):
    """The samples ``scan`` (scan indices, in range) of bins ``b`` of ``axes``, as Samples.

    ``axes`` are the bins' (start, bin size, grid) along y and x (:func:`samples`'s first six
    arguments); positions and taps are computed as :func:`samples` does, to the bit.
    """
    gw = axes[5].astype(np.int64)[b]
    iy, ix = scan // gw, scan % gw
    y, x = _positions(b, iy, ix, axes)
    return _located(b, iy, ix, scan, y, x, height, width, None)


def subset(s, keep):
    """The samples ``keep`` (indices or a mask) of Samples ``s`` (``first_out`` as it is)."""
    return Samples(*(a[keep] for a in s[:-1]), s.first_out)


def _corner(s, image, pixels, yy, xx):
    """Feature rows (S, C) of one tap of every sample, read from ``pixels`` (_sampling.Pixels)."""
    return pixels.rows[pixels.at(image[s.bin], yy, xx)]


def _corners(s, image, pixels):
    """Feature rows (S, C) of the 4 taps of every sample: v00, v01, v10, v11."""
    return [
        _corner(s, image, pixels, yy, xx)
        for yy, xx in ((s.y0, s.x0), (s.y0, s.x1), (s.y1, s.x0), (s.y1, s.x1))
    ]


def weights(s):
    """Bilinear weights (S,) of the 4 taps, in the order of :func:`_corners`."""
    one = s.ly.dtype.type(1)
    hy, hx = one - s.ly, one - s.lx
    return hy * hx, hy * s.lx, s.ly * hx, s.ly * s.lx


def values(s, image, pixels):
    """Interpolated values (S, C) of every sample, in the kernels' order of operations.

    ``((w00 v00 + w01 v01) + w10 v10) + w11 v11``, one tap at a time: two (S, C) arrays alive
    instead of the four corners and their products. Of two NaN terms a sum keeps the first
    one's bits, as the kernels' sums do on a host; NumPy's add may keep either (NumPy 1.x's
    SIMD loops keep the second), so where the total is NaN the term is made that very NaN.
    """
    taps = ((s.y0, s.x0), (s.y0, s.x1), (s.y1, s.x0), (s.y1, s.x1))
    total = None
    for (yy, xx), wt in zip(taps, weights(s), strict=True):
        term = _corner(s, image, pixels, yy, xx)
        term *= wt[:, None]
        if total is None:
            total = term
        else:
            np.copyto(term, total, where=np.isnan(total))
            total += term
    return total


def slopes(s, image, pixels):
    """Right derivatives (S, C) of every sample's value along x and y (0 in the edge bands).

    ``dx = (1 - ly) (v01 - v00) + ly (v11 - v10)`` and ``dy = (1 - lx) (v10 - v00) + lx (v11 -
    v01)``, in place where the kernels' order of operations allows: fewer (S, C) temporaries.
    """
    v00, v01, v10, v11 = _corners(s, image, pixels)
    one = s.ly.dtype.type(1)
    hy, hx = (one - s.ly)[:, None], (one - s.lx)[:, None]
    dx = v01 - v00
    dx *= hy
    part = v11 - v10
    part *= s.ly[:, None]
    dx += part
    dx *= s.x_free[:, None]
    dy = v10 - v00
    dy *= hx
    np.subtract(v11, v01, out=part)
    part *= s.lx[:, None]
    dy += part
    dy *= s.y_free[:, None]
    return dx, dy


def bins_of(y, x, k0, k1):
    """The (start, size, grid) arrays along y and x of boxes ``k0:k1``, flattened to bins."""
    return [np.ascontiguousarray(a[k0:k1]).ravel() for a in (*y, *x)]


# Work of a sample in one channel, in _parallel.PRODUCT_GRAIN's multiply-adds: gathering,
# weighing and comparing its 4 corners (max mode's forward broke even near 0.4M samples x
# channels, its backward sooner).
_SAMPLE_WORK = 32

# Arrays of one sample besides its channels (bin, grid indices, scan index, taps, weights,
# positions and masks, and the temporaries that build them): counted as this many channels in
# the size of a piece, so that a piece of few channels is not millions of samples long.
_SAMPLE_WORDS = 16


def piece_size(channels):
    """Samples in a piece of a box: ``samples x (channels + 16)`` within the budget."""
    return max(_sampling.BUDGET // (max(channels, 1) + _SAMPLE_WORDS), 1)


def work(y, x, height, width, channels, spare=True):
    """The chunks of boxes in order, each as ``(ranges, spans)``.

    ``ranges`` are a chunk's ranges of boxes for the threads (``_sampling.parts``: its samples
    times ``channels`` within the budget; without ``spare``, one range per thread instead of
    ``_parallel.ranges``' few more, for max mode, whose every range repeats a fixed cost);
    ``spans`` is None, or for a chunk of one box with more samples than :func:`piece_size`, the
    consecutive ``(e0, e1)`` pieces of its candidate samples (:func:`samples`'s ``span``), to be
    reduced in order (:func:`in_order`).
    """
    k = y[0].shape[0]
    rows = [a.reshape(k, a.size // max(k, 1)) for a in (*y, *x)]  # (K, bins); also with K = 0
    _, ny, _, nx = candidates(*rows, height, width)
    count = (ny * nx).sum(1)
    piece = piece_size(channels)
    cost = count * max(channels, 1)
    for ranges in _sampling.parts(cost, _SAMPLE_WORK):
        if not spare and len(ranges) > _parallel.threads() > 1:
            (k0, _), (_, k1) = ranges[0], ranges[-1]
            edges = [k0 + e for e in _parallel.split(cost[k0:k1], _parallel.threads())]
            ranges = list(zip(edges[:-1], edges[1:], strict=True))
        (k0, k1), n = ranges[0], int(count[ranges[0][0]])
        if len(ranges) == 1 and k1 - k0 == 1 and n > piece:
            yield ranges, [(e, min(e + piece, n)) for e in range(0, n, piece)]
        else:
            yield ranges, None


def in_order(fn, items):
    """``fn(item)`` for ``items``, yielded in order, computed by the threads a batch at a time.

    Only a batch of results (one per thread) is alive at once: the caller folds each in.
    """
    step = _parallel.threads()
    for i in range(0, len(items), step):
        yield from _parallel.map_ordered(fn, items[i : i + step])


def sample_terms(s, dx, dy, weight, pooled, grid_h, grid_w):
    """The box-gradient terms of every sample, (4, S) float64: ``ex, u ex, ey, v ey``.

    ``ex``/``ey`` are d loss / d position of the sample along x and y (its slopes ``dx``/``dy``
    (S, C) weighed by ``weight`` (S, C), d loss / d value, summed over the channels), ``u``/``v``
    its position as a fraction of the box (``grid_h``/``grid_w`` are the bins' grids).
    """
    ct = dx.dtype.type
    pooled_h, pooled_w = pooled
    ex = (weight * dx).sum(1)
    ey = (weight * dy).sum(1)
    b = s.bin
    ph, pw = (b // pooled_w) % pooled_h, b % pooled_w
    u = (pw + (s.ix + ct(0.5)) / grid_w[b].astype(ct)) / ct(pooled_w)
    v = (ph + (s.iy + ct(0.5)) / grid_h[b].astype(ct)) / ct(pooled_h)
    return np.stack([ex, u * ex, ey, v * ey]).astype(np.float64, copy=False)


def add_terms(sums, b, terms):
    """``sums[:, b] += terms`` (4, B) in sample order: the same sums however samples are cut.

    np.add.at adds one term after another, as np.bincount does, so running sums continued
    piece by piece equal the sums of all the samples at once, bit for bit.
    """
    for j in range(4):
        np.add.at(sums[j], b, terms[j])


def box_terms(sums, pooled, scale, shift, free):
    """(K, 5) box gradient from the bins' summed terms ``sums`` (4, B) (:func:`sample_terms`).

    ``shift`` is the bins' (ax, ay) extra shifts in box widths/heights (deform_roi_pool's
    gamma * offset) or None, ``free`` the boxes' (free_w, free_h) flags (False where
    torchvision's legacy minimum holds the size). Mirrors add_box_terms in the kernels.
    """
    pooled_h, pooled_w = pooled
    bins = sums.shape[1]
    k = bins // (pooled_h * pooled_w)
    sx, ux, sy, uy = sums
    ax, ay = (0, 0) if shift is None else shift
    box = np.arange(bins) // (pooled_h * pooled_w)
    px = np.where(free[0][box], ax * sx + ux, 0)
    py = np.where(free[1][box], ay * sy + uy, 0)
    terms = np.stack([sx - px, sy - py, px, py], axis=1) * scale
    out = np.zeros((k, 5), np.float64)
    for j in range(4):
        out[:, j + 1] = np.bincount(box, terms[:, j], k)
    return out


def box_gradient(s, dx, dy, weight, bins, pooled, grid_h, grid_w, scale, shift, free):
    """(K, 5) box gradient of ``bins`` (B, PH * PW per box) from sample slopes (S, C).

    ``weight`` (S, C) is d loss / d sample value per channel; see :func:`sample_terms` and
    :func:`box_terms` for the rest.
    """
    sums = np.zeros((4, bins), np.float64)
    add_terms(sums, s.bin, sample_terms(s, dx, dy, weight, pooled, grid_h, grid_w))
    return box_terms(sums, pooled, scale, shift, free)
