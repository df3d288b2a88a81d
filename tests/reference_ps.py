"""Float64 scalar-loop oracles for position-sensitive RoI Align and RoI Pool (R-FCN).

Written from the published semantics of ``torchvision.ops.ps_roi_align`` / ``ps_roi_pool``
(reference/semantics-and-peers.md sections 1, 2.3 and 12), NOT from cuproi's implementation,
with the two deliberate departures cuproi documents:

* ps_roi_align divides by ``max(gh * gw, 1)``: a box of zero size with adaptive sampling gives 0
  (torchvision divides 0 by 0);
* ps_roi_pool clips every bin to ``[0, H]`` x ``[0, W]`` in the forward as in the backward
  (torchvision's CUDA forward clips to ``H - 1`` / ``W - 1``). ``clip_last=True`` gives
  torchvision's forward clipping instead, for comparisons with it.

Conventions: ``x`` is (N, C, H, W) with C = C_out * PH * PW; ``rois`` (K, 5) rows
``[batch_index, x1, y1, x2, y2]``; output (K, C_out, PH, PW) where bin (ph, pw) of output
channel c reads input channel ``(c * PH + ph) * PW + pw``. Coordinate arithmetic is evaluated
with numpy scalars of ``coord_dtype`` in the documented operation order (so float32 rounds like
the kernels); interpolation weights and every sum are float64. Plain loops: small inputs only.
"""

import math

import numpy as np

__all__ = ["ps_roi_align", "ps_roi_align_backward", "ps_roi_pool", "ps_roi_pool_backward"]


def _pair(output_size):
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def _channel(c, ph, pw, pooled_h, pooled_w):
    """Position-sensitive channel map of R-FCN / torchvision."""
    return (c * pooled_h + ph) * pooled_w + pw


def _bilinear_taps(height, width, y, x):
    """The Caffe2 bilinear rule of section 1: [(row, col, weight)], [] outside [-1, H] x [-1, W]."""
    y, x = float(y), float(x)
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ]


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
                    taps += [(r, c, w / count) for r, c, w in _bilinear_taps(height, width, y, x)]
            bins[ph, pw] = taps
    return bins


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


def _forward(x, rois, pooled_h, pooled_w, bins_of):
    x = np.asarray(x, np.float64)
    n, c, height, width = x.shape
    assert c % (pooled_h * pooled_w) == 0
    c_out = c // (pooled_h * pooled_w)
    rois = np.asarray(rois)
    out = np.zeros((len(rois), c_out, pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        b = int(roi[0])
        bins = bins_of(roi, height, width)
        for co in range(c_out):
            for (ph, pw), taps in bins.items():
                plane = x[b, _channel(co, ph, pw, pooled_h, pooled_w)]
                out[k, co, ph, pw] = sum(w * plane[r, cc] for r, cc, w in taps)
    return out


def _backward(g, rois, input_shape, pooled_h, pooled_w, bins_of):
    g = np.asarray(g, np.float64)
    n, c, height, width = input_shape
    grad = np.zeros(input_shape)
    for k, roi in enumerate(np.asarray(rois)):
        b = int(roi[0])
        bins = bins_of(roi, height, width)
        for co in range(g.shape[1]):
            for (ph, pw), taps in bins.items():
                plane = grad[b, _channel(co, ph, pw, pooled_h, pooled_w)]
                for r, cc, w in taps:
                    plane[r, cc] += w * g[k, co, ph, pw]
    return grad


def ps_roi_align(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, coord_dtype=np.float64
):
    """(K, C_out, PH, PW) position-sensitive RoI Align."""
    ph, pw = _pair(output_size)
    ct = np.dtype(coord_dtype).type
    return _forward(
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
    ph, pw = _pair(output_size)
    ct = np.dtype(coord_dtype).type
    return _backward(
        g,
        rois,
        tuple(input_shape),
        ph,
        pw,
        lambda roi, h, w: _align_bins(roi, spatial_scale, ph, pw, sampling_ratio, h, w, ct),
    )


def ps_roi_pool(x, rois, output_size, spatial_scale=1.0, coord_dtype=np.float64, clip_last=False):
    """(K, C_out, PH, PW) position-sensitive RoI Pool (mean of every bin; empty bin 0)."""
    ph, pw = _pair(output_size)
    ct = np.dtype(coord_dtype).type
    return _forward(
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
    ph, pw = _pair(output_size)
    ct = np.dtype(coord_dtype).type
    return _backward(
        g,
        rois,
        tuple(input_shape),
        ph,
        pw,
        lambda roi, h, w: _pool_bins(roi, spatial_scale, ph, pw, h, w, ct),
    )
