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

from oracles.sampling import bilinear_taps, checked_pair, gather, sampling_grid, scatter

__all__ = ["roi_align_rotated", "roi_align_rotated_backward", "rotation"]


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


def _bins(rois, input_shape, pooled, scale, sampling_ratio, aligned, clockwise, coord_dtype):
    """Yield (k, b, ph, pw, taps, count) for every bin of every rotated box."""
    t = np.dtype(coord_dtype).type
    height, width = input_shape[-2:]
    s = t(scale)
    off = t(0.5) if aligned else t(0)
    for k, roi in enumerate(np.asarray(rois)):
        cx = t(roi[1]) * s - off
        cy = t(roi[2]) * s - off
        bw = t(roi[3]) * s
        bh = t(roi[4]) * s
        if not aligned:
            bw, bh = max(bw, t(1)), max(bh, t(1))
        c, sn = rotation(roi[5], clockwise)
        c, sn = t(c), t(sn)
        bin_h, bin_w = bh / t(pooled[0]), bw / t(pooled[1])
        gh, gw, count = sampling_grid(bin_h, bin_w, sampling_ratio)
        start_h, start_w = -bh / t(2), -bw / t(2)
        for ph, pw in np.ndindex(*pooled):
            taps = []
            for iy in range(gh):  # empty when gh <= 0
                yy = start_h + t(ph) * bin_h + t(iy + 0.5) * bin_h / t(gh)
                for ix in range(gw):
                    xx = start_w + t(pw) * bin_w + t(ix + 0.5) * bin_w / t(gw)
                    y = yy * c - xx * sn + cy
                    x = yy * sn + xx * c + cx
                    taps += bilinear_taps(height, width, y, x)
            yield k, int(roi[0]), ph, pw, taps, count


def roi_align_rotated(x, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
                      clockwise=False, coord_dtype=np.float64):  # fmt: skip
    """Forward -> (K, C, PH, PW) float64."""
    pooled = checked_pair(output_size)
    flags = (spatial_scale, sampling_ratio, aligned, clockwise, coord_dtype)
    bins = _bins(rois, np.shape(x), pooled, *flags)
    return gather(x, bins, (len(rois), np.shape(x)[1], *pooled))


def roi_align_rotated_backward(g, rois, input_shape, output_size, spatial_scale=1.0,
                               sampling_ratio=0, aligned=True, clockwise=False,
                               coord_dtype=np.float64):  # fmt: skip
    """Exact transpose of :func:`roi_align_rotated` -> (N, C, H, W) float64."""
    flags = (spatial_scale, sampling_ratio, aligned, clockwise, coord_dtype)
    return scatter(g, _bins(rois, input_shape, checked_pair(output_size), *flags), input_shape)
