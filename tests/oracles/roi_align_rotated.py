"""Float64 scalar-loop oracle for rotated RoI Align (detectron2 ROIAlignRotated / mmcv).

Written from the published semantics (reference/semantics-and-peers.md sections 1, 3.4 and 4),
NOT from cuproi's implementation:

* rois (K, 6) rows ``[batch_index, cx, cy, w, h, angle]``, the angle in degrees,
  counter-clockwise (detectron2); ``clockwise=True`` negates it (mmcv's flag);
* centre ``(cx, cy) * scale - 0.5`` when aligned (no shift otherwise), size ``(w, h) * scale``,
  at least 1 only when not aligned (mmcv's legacy clamp);
* bin (ph, pw) samples ``yy = -h/2 + ph * bin_h + (iy + 0.5) * bin_h / gh`` and likewise ``xx``,
  ``gh = sampling_ratio`` or ``ceil(h / PH)``; each sample is rotated about the centre:
  ``y = yy cos - xx sin + cy``, ``x = yy sin + xx cos + cx``;
* bilinear with the Caffe2 rule (zero outside ``[-1, H] x [-1, W]``, edge replication in the
  bands); the average divides by ``max(gh * gw, 1)``.

Coordinates are evaluated with numpy scalars of ``coord_dtype`` in the order above so that
float32 rounds like a float32 kernel; cos and sin come from ``math`` in double (``rotation``)
and are rounded to ``coord_dtype``; interpolation weights and sums are float64.
"""

import math

import numpy as np

__all__ = ["roi_align_rotated", "roi_align_rotated_backward", "rotation"]


def _pair(output_size):
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def rotation(angle_degrees, clockwise=False):
    """(cos, sin) in double, exact at multiples of 90 degrees (the angle reduced by quarters)."""
    a = -float(angle_degrees) if clockwise else float(angle_degrees)
    a = math.fmod(a, 360.0)
    quarters = math.floor(a / 90.0 + 0.5)
    r = math.radians(a - 90.0 * quarters)
    c, s = math.cos(r), math.sin(r)
    for _ in range(quarters % 4):  # turn (c, s) by +90 degrees
        c, s = -s, c
    return c, s


def _taps(height, width, y, x):
    y, x = float(y), float(x)
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)]


def _bins(roi, height, width, pooled, scale, sampling_ratio, aligned, clockwise, coord_dtype):
    """Yield (ph, pw, taps, count) for every bin of one rotated box."""
    t = np.dtype(coord_dtype).type
    pooled_h, pooled_w = pooled
    s = t(scale)
    off = t(0.5) if aligned else t(0)
    cx = t(roi[1]) * s - off
    cy = t(roi[2]) * s - off
    bw = t(roi[3]) * s
    bh = t(roi[4]) * s
    if not aligned:
        bw, bh = max(bw, t(1)), max(bh, t(1))
    c, sn = rotation(roi[5], clockwise)
    c, sn = t(c), t(sn)
    bin_h, bin_w = bh / t(pooled_h), bw / t(pooled_w)
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
    count = max(gh * gw, 1)
    start_h, start_w = -bh / t(2), -bw / t(2)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            taps = []
            for iy in range(max(gh, 0)):
                yy = start_h + t(ph) * bin_h + t(iy + 0.5) * bin_h / t(gh)
                for ix in range(max(gw, 0)):
                    xx = start_w + t(pw) * bin_w + t(ix + 0.5) * bin_w / t(gw)
                    y = yy * c - xx * sn + cy
                    x = yy * sn + xx * c + cx
                    taps += _taps(height, width, y, x)
            yield ph, pw, taps, count


def roi_align_rotated(
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    aligned=True,
    clockwise=False,
    coord_dtype=np.float64,
):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois)
    n, channels, height, width = x.shape
    pooled = _pair(output_size)
    out = np.zeros((len(rois), channels, *pooled))
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for ph, pw, taps, count in _bins(
            roi,
            height,
            width,
            pooled,
            spatial_scale,
            sampling_ratio,
            aligned,
            clockwise,
            coord_dtype,
        ):
            for yy, xx, wt in taps:
                out[k, :, ph, pw] += wt * x[b, :, yy, xx]
            out[k, :, ph, pw] /= count
    return out


def roi_align_rotated_backward(
    g,
    rois,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    aligned=True,
    clockwise=False,
    coord_dtype=np.float64,
):
    g = np.asarray(g, np.float64)
    rois = np.asarray(rois)
    n, channels, height, width = input_shape
    pooled = _pair(output_size)
    grad = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for ph, pw, taps, count in _bins(
            roi,
            height,
            width,
            pooled,
            spatial_scale,
            sampling_ratio,
            aligned,
            clockwise,
            coord_dtype,
        ):
            for yy, xx, wt in taps:
                grad[b, :, yy, xx] += wt * g[k, :, ph, pw] / count
    return grad
