"""Shared pieces of the float64 oracles of position-sensitive RoI Align and RoI Pool (R-FCN).

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

import numpy as np


def pair(output_size):
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def channel(c, ph, pw, pooled_h, pooled_w):
    """Position-sensitive channel map of R-FCN / torchvision."""
    return (c * pooled_h + ph) * pooled_w + pw


def bilinear_taps(height, width, y, x):
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


def forward(x, rois, pooled_h, pooled_w, bins_of):
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
                plane = x[b, channel(co, ph, pw, pooled_h, pooled_w)]
                out[k, co, ph, pw] = sum(w * plane[r, cc] for r, cc, w in taps)
    return out


def backward(g, rois, input_shape, pooled_h, pooled_w, bins_of):
    g = np.asarray(g, np.float64)
    n, c, height, width = input_shape
    grad = np.zeros(input_shape)
    for k, roi in enumerate(np.asarray(rois)):
        b = int(roi[0])
        bins = bins_of(roi, height, width)
        for co in range(g.shape[1]):
            for (ph, pw), taps in bins.items():
                plane = grad[b, channel(co, ph, pw, pooled_h, pooled_w)]
                for r, cc, w in taps:
                    plane[r, cc] += w * g[k, co, ph, pw]
    return grad
