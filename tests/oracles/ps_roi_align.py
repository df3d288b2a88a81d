"""Float64 loop oracle of position-sensitive RoI Align (torchvision.ops.ps_roi_align); the
conventions and cuproi's departure (``max(gh * gw, 1)``) are in ``position_sensitive``.
"""

import math

import numpy as np

from oracles.position_sensitive import backward, bilinear_taps, forward, pair


def _align_bins(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, height, width, ct):
    """{(ph, pw): [(row, col, weight / count)]} of one box: the always-aligned sampling."""
    s = ct(spatial_scale)
    half = ct(0.5)
    x0 = ct(roi[1]) * s - half
    y0 = ct(roi[2]) * s - half
    rw = (ct(roi[3]) * s - half) - x0
    rh = (ct(roi[4]) * s - half) - y0
    bin_h = rh / ct(pooled_h)
    bin_w = rw / ct(pooled_w)
    if sampling_ratio > 0:
        gh = gw = sampling_ratio
    else:
        gh, gw = math.ceil(float(bin_h)), math.ceil(float(bin_w))
    count = max(gh * gw, 1)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            hstart = ct(ph) * bin_h + y0
            wstart = ct(pw) * bin_w + x0
            taps = []
            for iy in range(max(gh, 0)):
                y = hstart + ct(iy + 0.5) * bin_h / ct(gh)
                for ix in range(max(gw, 0)):
                    x = wstart + ct(ix + 0.5) * bin_w / ct(gw)
                    taps += [(r, c, w / count) for r, c, w in bilinear_taps(height, width, y, x)]
            bins[ph, pw] = taps
    return bins


def ps_roi_align(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, coord_dtype=np.float64
):
    """(K, C_out, PH, PW) position-sensitive RoI Align."""
    ph, pw = pair(output_size)
    ct = np.dtype(coord_dtype).type
    return forward(
        x,
        rois,
        ph,
        pw,
        lambda roi, h, w: _align_bins(roi, spatial_scale, ph, pw, sampling_ratio, h, w, ct),
    )


def ps_roi_align_backward(
    g, rois, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, coord_dtype=np.float64
):
    """(N, C, H, W) gradient of ps_roi_align: every bin scatters g * weight / count."""
    ph, pw = pair(output_size)
    ct = np.dtype(coord_dtype).type
    return backward(
        g,
        rois,
        tuple(input_shape),
        ph,
        pw,
        lambda roi, h, w: _align_bins(roi, spatial_scale, ph, pw, sampling_ratio, h, w, ct),
    )
