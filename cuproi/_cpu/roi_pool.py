"""RoI Pool on the CPU: the maximum of every bin and the first cell (in scan order) holding it.

float16 and float32 features take a fast path: every cell becomes one int64 key, its value
mapped to an order-preserving int32 in the high half and its flat index complemented in the low
half, so that a plain integer maximum finds the largest value and, among equal values, the first
cell (NaN ranks above everything, so the first NaN wins). A bin's maximum is then separable:
the maximum over each bin's columns for every row of the box, then over the bin's rows, reading
each cell of the box about once per bin column it belongs to. float64
features (no room for a 64-bit value and an index in one key) take the gather formulation.
"""

import numpy as np

from cuproi._cpu import _parallel, _sampling


def _round(v):
    """C round(): half away from zero (numpy.round rounds half to even).

    Exact: ``floor(|v| + 0.5)`` is not, it rounds 0.49999997 (float32) up to 1.
    """
    a = np.abs(v)
    r = np.floor(a)
    return np.copysign(r + (a - r >= v.dtype.type(0.5)), v)


def _bins(rois, spatial_scale, pooled_h, pooled_w, height, width, inclusive=True):
    """Clipped cell ranges [h0, h1) x [w0, w1) of every bin: (K, PH) and (K, PW) arrays.

    The box is rounded to cells; its size is ``end - start + 1`` cells (RoI Pool's inclusive
    end) or, with ``inclusive=False``, ``end - start`` (position-sensitive RoI Pool); at least 1.
    """
    ct = rois.dtype.type
    scale = ct(spatial_scale)
    x1, y1, x2, y2 = (_round(rois[:, i] * scale).astype(np.int64) for i in (1, 2, 3, 4))
    bin_h = np.maximum(y2 - y1 + inclusive, 1).astype(ct) / ct(pooled_h)
    bin_w = np.maximum(x2 - x1 + inclusive, 1).astype(ct) / ct(pooled_w)

    def edges(first, bin_size, pooled, size):
        p = np.arange(pooled + 1, dtype=ct)
        lo = np.floor(p[:-1] * bin_size[:, None]).astype(np.int64) + first[:, None]
        hi = np.ceil(p[1:] * bin_size[:, None]).astype(np.int64) + first[:, None]
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        return lo, np.maximum(hi, lo)  # an empty range, not a negative one

    return edges(y1, bin_h, pooled_h, height) + edges(x1, bin_w, pooled_w, width)


def roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    bins = _bins(rois, spatial_scale, pooled_h, pooled_w, *input.shape[2:])
    if input.dtype.itemsize <= 4:
        return _forward_keys(input, rois, bins)
    return _forward_gather(input, rois, bins)


_LOW = np.int64(0xFFFFFFFF)
_GROUP = 16  # boxes whose keys are decoded together


def _keys(x):
    """Keys (N, H, W, C) of (N, C, H, W) features, and whether any is -0.0.

    ``key = ordered(value) << 32 | (2**32 - 1 - (h * W + w))``: ``ordered`` maps float32 to
    int32 monotonically (negative floats have their magnitude bits flipped), after -0.0 is made
    +0.0 (the two compare equal, so the first one must win) and every NaN a positive NaN (above
    +inf). Built in blocks of rows, in parallel, so each block's passes stay in cache.
    """
    n, c, h, w = x.shape
    keys = np.empty((n, h, w, c), np.int64)
    low = _LOW - np.arange(h * w, dtype=np.int64).reshape(h, w)
    rows = max(_parallel._BLOCK // max(w, 1), 1)
    blocks = [(i, r, min(r + rows, h)) for i in range(n) for r in range(0, h, rows)]

    def build(start, stop):
        negative_zero = False
        for i, r0, r1 in blocks[start:stop]:
            block = x[i, :, r0:r1]
            v = np.add(block, np.float32(0), dtype=np.float32)  # -0.0 + 0.0 is +0.0
            nan = v != v
            if nan.any():
                v[nan] = np.nan
            if not negative_zero and (block == 0).any():
                negative_zero = bool(np.signbit(block[block == 0]).any())
            bits = v.view(np.int32)
            bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
            key = (bits.astype(np.int64) << 32) | low[r0:r1]
            keys[i, r0:r1] = key.transpose(1, 2, 0)
        return negative_zero

    negative_zero = any(_parallel.for_ranges(build, np.ones(len(blocks))))
    return keys, negative_zero


def _decode(keys):
    """(value as float32, flat index as int32) of int64 keys."""
    high = (keys >> 32).astype(np.int32)
    high ^= (high >> 31) & np.int32(0x7FFFFFFF)
    index = (_LOW - (keys & _LOW)).astype(np.int32)
    return high.view(np.float32), index


def _forward_keys(input, rois, bins):
    n, c, h, w = input.shape
    k = len(rois)
    h0, h1, w0, w1 = bins
    pooled_h, pooled_w = h0.shape[1], w0.shape[1]
    keys, negative_zero = _keys(input)
    image = rois[:, 0].astype(np.int64)
    top, left = h0[:, :1], w0[:, :1]
    # Per box: bin rows and columns relative to its window, as Python ints for the loops.
    box = np.column_stack([image, top, h1[:, -1:], left, w1[:, -1:]]).tolist()
    rows = np.stack([h0 - top, h1 - top], 2).tolist()
    cols = np.stack([w0 - left, w1 - left], 2).tolist()
    empty = (h1 <= h0)[:, :, None] | (w1 <= w0)[:, None, :]
    out = np.empty((k, c, pooled_h * pooled_w), input.dtype)
    argmax = np.empty((k, c, pooled_h * pooled_w), np.int32)

    def run(start, stop):
        # Groups of boxes keep the temporaries small enough to stay in cache and be reused.
        for g0 in range(start, stop, _GROUP):
            g1 = min(g0 + _GROUP, stop)
            best = np.empty((g1 - g0, pooled_h, pooled_w, c), np.int64)
            for j in range(g0, g1):
                i, y0, y1, x0, x1 = box[j]
                if y1 <= y0 or x1 <= x0:
                    continue  # every bin is empty
                window = keys[i, y0:y1, x0:x1]
                # max over each bin's columns for every row of the box, then over its rows;
                # reducing a middle axis runs NumPy's inner loop along the channels.
                per_row = np.empty((y1 - y0, pooled_w, c), np.int64)
                for q, (a, b) in enumerate(cols[j]):
                    if b > a:
                        np.maximum.reduce(window[:, a:b], axis=1, out=per_row[:, q])
                for p, (a, b) in enumerate(rows[j]):
                    if b > a:
                        np.maximum.reduce(per_row[a:b], axis=0, out=best[j - g0, p])
            value, index = _decode(best)
            value[empty[g0:g1]] = 0  # also hides what the skipped bins left in best
            index[empty[g0:g1]] = -1
            shape = (g1 - g0, pooled_h * pooled_w, c)
            out[g0:g1] = value.reshape(shape).transpose(0, 2, 1)
            argmax[g0:g1] = index.reshape(shape).transpose(0, 2, 1)

    _parallel.for_ranges(run, (h1[:, -1] - h0[:, 0]) * (w1[:, -1] - w0[:, 0] + pooled_w) + 1)
    out = out.reshape(k, c, pooled_h, pooled_w)
    argmax = argmax.reshape(k, c, pooled_h, pooled_w)
    if negative_zero:  # keys hold +0.0 for -0.0: take the sign of zero from the input
        box, channel, ph, pw = np.nonzero((out == 0) & (argmax >= 0))
        at = argmax[box, channel, ph, pw]
        out[box, channel, ph, pw] = input[image[box], channel, at // w, at % w]
    return out, argmax


def _forward_gather(input, rois, bins):
    """Gather every bin's cells, then segmented max and first argmax (any dtype)."""
    n, c, h, w = input.shape
    k = len(rois)
    h0, h1, w0, w1 = bins
    pooled_h, pooled_w = h0.shape[1], w0.shape[1]
    rows = np.maximum(h1 - h0, 0)[:, :, None]
    cols = np.maximum(w1 - w0, 0)[:, None, :]
    cells = (rows * cols).reshape(k, pooled_h * pooled_w)  # 0 for an empty bin
    # Bins as rows: (K * PH * PW, C).
    out = np.zeros((k * pooled_h * pooled_w, c), input.dtype)
    argmax = np.full((k * pooled_h * pooled_w, c), -1, np.int32)
    x_rows = _sampling.pixels_by_channel(input)
    image = rois[:, 0].astype(np.int64)
    for k0, k1 in _sampling.chunks(cells.sum(1) * max(c, 1)):
        # Every (bin, cell) pair of the chunk, bins in order, cells in scan order (h, then w).
        bins = cells[k0:k1].ravel()
        full = np.flatnonzero(bins)
        if full.size == 0:
            continue
        first = np.cumsum(bins) - bins
        entry_bin = np.repeat(np.arange(bins.size), bins)
        local = np.arange(entry_bin.size) - first[entry_bin]
        box, ph, pw = np.unravel_index(entry_bin, (k1 - k0, pooled_h, pooled_w))
        box += k0
        hh = h0[box, ph] + local // cols[box, 0, pw]
        ww = w0[box, pw] + local % cols[box, 0, pw]
        values = x_rows[(image[box] * h + hh) * w + ww]  # (entries, C)
        starts = first[full]
        best = np.maximum.reduceat(values, starts, axis=0)  # NaN propagates
        seg = np.repeat(np.arange(full.size), bins[full])
        hit = values == best[seg]
        if np.isnan(best).any():
            hit |= np.isnan(values) & np.isnan(best[seg])
        # First hit in scan order: the smallest entry index among the hits of each segment.
        order = np.where(hit, np.arange(values.shape[0], dtype=np.int64)[:, None], values.shape[0])
        winner = np.minimum.reduceat(order, starts, axis=0)
        out[k0 * pooled_h * pooled_w + full] = best
        argmax[k0 * pooled_h * pooled_w + full] = (hh * w + ww)[winner]
    out = out.reshape(k, pooled_h, pooled_w, c).transpose(0, 3, 1, 2)
    argmax = argmax.reshape(k, pooled_h, pooled_w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out), np.ascontiguousarray(argmax)


def roi_pool_backward(grad_output, rois, argmax, input_shape, deterministic=False):
    n, c, h, w = input_shape
    k = len(rois)
    image = rois[:, 0].astype(np.int64)
    plane = (image[:, None] * c + np.arange(c)) * (h * w)  # (K, C) offset of each plane
    # float16 accumulates in float32. np.add.at adds in index order, so every cell sums its
    # contributions in the order of the boxes and bins: deterministic, and one pass over
    # the gradient instead of a full-size bincount per chunk.
    dtype = np.promote_types(grad_output.dtype, np.float32)
    grad = np.zeros(n * c * h * w, dtype)
    per_box = argmax[0].size if k else 0
    for k0, k1 in _sampling.chunks(np.full(k, per_box)):
        at = argmax[k0:k1]
        hit = at >= 0
        target = (plane[k0:k1, :, None, None] + at)[hit]
        np.add.at(grad, target, grad_output[k0:k1][hit].astype(dtype, copy=False))
    return grad.reshape(input_shape).astype(grad_output.dtype, copy=False)
