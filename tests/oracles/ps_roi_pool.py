"""Float64 loop oracle of position-sensitive RoI Pool (torchvision.ops.ps_roi_pool); the
conventions and cuproi's departure (clipping to ``[0, H]``) are in ``position_sensitive``.
"""

import numpy as np

from oracles.position_sensitive import backward, forward
from oracles.sampling import c_round, checked_pair, pool_span


def _bins(shape, rois, output_size, spatial_scale, coord_dtype, clip_last=False):
    """Yield (k, b, ph, pw, cells, count): quantized bins, the mean over their cells."""
    pooled_h, pooled_w = checked_pair(output_size)
    height, width = shape[-2:]
    ct = np.dtype(coord_dtype).type
    s = ct(spatial_scale)
    top_h, top_w = (height - 1, width - 1) if clip_last else (height, width)
    for k, roi in enumerate(np.asarray(rois)):
        x1, y1, x2, y2 = (c_round(ct(roi[i]) * s) for i in (1, 2, 3, 4))
        bin_h = ct(max(y2 - y1, 1)) / ct(pooled_h)
        bin_w = ct(max(x2 - x1, 1)) / ct(pooled_w)
        for ph, pw in np.ndindex(pooled_h, pooled_w):
            h0, h1 = pool_span(ph, bin_h, y1, top_h)
            w0, w1 = pool_span(pw, bin_w, x1, top_w)
            cells = [(h, w, 1.0) for h in range(h0, h1) for w in range(w0, w1)]
            yield k, int(roi[0]), ph, pw, cells, max(len(cells), 1)


def ps_roi_pool(x, rois, output_size, spatial_scale=1.0, coord_dtype=np.float64, clip_last=False):
    """(K, C_out, PH, PW) position-sensitive RoI Pool (mean of every bin; empty bin 0)."""
    bins = _bins(np.shape(x), rois, output_size, spatial_scale, coord_dtype, clip_last)
    return forward(x, rois, checked_pair(output_size), bins)


def ps_roi_pool_backward(
    g, rois, input_shape, output_size, spatial_scale=1.0, coord_dtype=np.float64
):
    """(N, C, H, W) gradient of ps_roi_pool: every bin spreads g evenly over its cells."""
    bins = _bins(input_shape, rois, output_size, spatial_scale, coord_dtype)
    return backward(g, input_shape, checked_pair(output_size), bins)
