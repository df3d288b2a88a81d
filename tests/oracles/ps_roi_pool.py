"""Float64 loop oracle of position-sensitive RoI Pool (torchvision.ops.ps_roi_pool); the
conventions and cuproi's departure (clipping to ``[0, H]``) are in ``position_sensitive``.
"""

import math

import numpy as np

from oracles.position_sensitive import backward, forward, pair


def _c_round(v):
    """C round(): half away from zero."""
    v = float(v)
    r = math.floor(abs(v))
    if abs(v) - r >= 0.5:
        r += 1
    return int(math.copysign(r, v)) if r else 0


def _pool_bins(roi, spatial_scale, pooled_h, pooled_w, height, width, ct, clip_last=False):
    """{(ph, pw): [(row, col, 1 / area)]} of one box: quantized bins, mean over the cells."""
    s = ct(spatial_scale)
    x1, y1, x2, y2 = (_c_round(ct(roi[i]) * s) for i in (1, 2, 3, 4))
    bin_h = ct(max(y2 - y1, 1)) / ct(pooled_h)
    bin_w = ct(max(x2 - x1, 1)) / ct(pooled_w)
    top_h, top_w = (height - 1, width - 1) if clip_last else (height, width)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            h0 = min(max(math.floor(ct(ph) * bin_h) + y1, 0), top_h)
            h1 = min(max(math.ceil(ct(ph + 1) * bin_h) + y1, 0), top_h)
            w0 = min(max(math.floor(ct(pw) * bin_w) + x1, 0), top_w)
            w1 = min(max(math.ceil(ct(pw + 1) * bin_w) + x1, 0), top_w)
            cells = [(h, w) for h in range(h0, h1) for w in range(w0, w1)]
            bins[ph, pw] = [(h, w, 1.0 / len(cells)) for h, w in cells]
    return bins


def ps_roi_pool(x, rois, output_size, spatial_scale=1.0, coord_dtype=np.float64, clip_last=False):
    """(K, C_out, PH, PW) position-sensitive RoI Pool (mean of every bin; empty bin 0)."""
    ph, pw = pair(output_size)
    ct = np.dtype(coord_dtype).type
    return forward(
        x,
        rois,
        ph,
        pw,
        lambda roi, h, w: _pool_bins(roi, spatial_scale, ph, pw, h, w, ct, clip_last),
    )


def ps_roi_pool_backward(
    g, rois, input_shape, output_size, spatial_scale=1.0, coord_dtype=np.float64
):
    """(N, C, H, W) gradient of ps_roi_pool: every bin spreads g evenly over its cells."""
    ph, pw = pair(output_size)
    ct = np.dtype(coord_dtype).type
    return backward(
        g,
        rois,
        tuple(input_shape),
        ph,
        pw,
        lambda roi, h, w: _pool_bins(roi, spatial_scale, ph, pw, h, w, ct),
    )
