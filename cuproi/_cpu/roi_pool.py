"""RoI Pool on the CPU: gather every bin's cells, then segmented max and first argmax."""

import numpy as np

from cuproi._cpu import _sampling


def _round(v):
    """C round(): half away from zero (numpy.round rounds half to even)."""
    return np.copysign(np.floor(np.abs(v) + v.dtype.type(0.5)), v)


def _bins(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """Clipped cell ranges [h0, h1) x [w0, w1) of every bin: (K, PH) and (K, PW) arrays."""
    ct = rois.dtype.type
    scale = ct(spatial_scale)
    x1, y1, x2, y2 = (_round(rois[:, i] * scale).astype(np.int64) for i in (1, 2, 3, 4))
    bin_h = np.maximum(y2 - y1 + 1, 1).astype(ct) / ct(pooled_h)
    bin_w = np.maximum(x2 - x1 + 1, 1).astype(ct) / ct(pooled_w)

    def edges(first, bin_size, pooled, size):
        p = np.arange(pooled + 1, dtype=ct)
        lo = np.floor(p[:-1] * bin_size[:, None]).astype(np.int64) + first[:, None]
        hi = np.ceil(p[1:] * bin_size[:, None]).astype(np.int64) + first[:, None]
        return np.clip(lo, 0, size), np.clip(hi, 0, size)

    return edges(y1, bin_h, pooled_h, height) + edges(x1, bin_w, pooled_w, width)


def roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    n, c, h, w = input.shape
    k = len(rois)
    h0, h1, w0, w1 = _bins(rois, spatial_scale, pooled_h, pooled_w, h, w)
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
    grad = np.zeros(n * c * h * w, np.float64)
    per_box = argmax[0].size if k else 0
    for k0, k1 in _sampling.chunks(np.full(k, per_box)):
        at = argmax[k0:k1]
        hit = at >= 0
        target = (plane[k0:k1, :, None, None] + at)[hit]
        grad += np.bincount(target, grad_output[k0:k1][hit], grad.size)
    return grad.reshape(input_shape).astype(grad_output.dtype)
