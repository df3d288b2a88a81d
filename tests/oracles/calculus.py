"""The calculus of the sampling ops for their box gradients, and finite differences.

Every sample position of RoI Align and Deformable RoI Pool is an affine function of x1, x2
(y1, y2); the bilinear surface is differentiated from the right; the adaptive sample count
and the legacy minimum box size are piecewise constant. The max mode follows mmcv: the first
maximum in scan order wins, a NaN sample wins the max (the first one), a bin without samples
gives 0.
"""

import math

import numpy as np

from oracles.sampling import bilinear, in_range


def right_slope(img, y, x, axis):
    """Right derivative of value along y (axis 0) or x (axis 1) at (y, x)."""
    h, w = img.shape
    pos, size = (y, h) if axis == 0 else (x, w)
    if not in_range(h, w, y, x):
        return 0.0
    if pos < 0.0 or pos >= size - 1:  # flattened band (or beyond: constant 0 from the right)
        return 0.0
    lo = math.floor(pos)
    if axis == 0:
        return bilinear(img, float(lo + 1), x) - bilinear(img, float(lo), x)
    return bilinear(img, y, float(lo + 1)) - bilinear(img, y, float(lo))


def geometry(roi, scale, pooled, ratio, aligned, deform=False):
    """Per axis: (start, size, size_moves, grid) of a box in feature coordinates."""
    off = 0.5 if (aligned or deform) else 0.0
    out = []
    for lo, hi, p in ((roi[2], roi[4], pooled[0]), (roi[1], roi[3], pooled[1])):
        start = lo * scale - off
        size = hi * scale - off - start
        moves = True
        if not (aligned or deform) and not size > 1.0:
            size, moves = 1.0, False
        grid = ratio if ratio > 0 else math.ceil(size / p)
        out.append((start, size, moves, grid))
    return out


def samples(roi, scale, pooled, ratio, aligned, ph, pw, shift=(0.0, 0.0), deform=False):
    """[(iy, ix, y, x, u, v)] of bin (ph, pw) in scan order; u, v: fractions of the box size
    (plus the deformable shift a) at which the sample sits. Also returns the geometry."""
    (sy, hy, my, gy), (sx, hx, mx, gx) = geometry(roi, scale, pooled, ratio, aligned, deform)
    ay, ax = shift
    out = []
    for iy in range(max(gy, 0)):
        v = (ph + (iy + 0.5) / gy) / pooled[0]
        for ix in range(max(gx, 0)):
            u = (pw + (ix + 0.5) / gx) / pooled[1]
            out.append((iy, ix, sy + (ay + v) * hy, sx + (ax + u) * hx, u + ax, v + ay))
    return out, ((sy, hy, my, gy), (sx, hx, mx, gx))


def winner(img, samples):
    """(value, index into samples or None) of mmcv's max with cuproi's NaN and empty rules."""
    best, at = None, None
    for i, (_, _, y, x, _, _) in enumerate(samples):
        v = bilinear(img, y, x)
        if best is None or v > best or (math.isnan(v) and not math.isnan(best)):
            best, at = v, i
    if best is None:
        return 0.0, None
    if not in_range(*img.shape, samples[at][2], samples[at][3]):
        return 0.0, None  # an out-of-range zero won: nothing to differentiate
    return best, at


def deform_shift(offset, gamma, k, ph, pw):
    if offset is None:
        return (0.0, 0.0)
    return (gamma * float(offset[k, 1, ph, pw]), gamma * float(offset[k, 0, ph, pw]))


def bins(rois, pooled, scale, ratio, aligned, offset=None, gamma=0.1, deform=False):
    """Yield ``(k, b, ph, pw, samples, geometry)`` of every bin in scan order (see samples)."""
    for k, roi in enumerate(np.asarray(rois, np.float64)):
        for ph, pw in np.ndindex(*pooled):
            shift = deform_shift(offset, gamma, k, ph, pw)
            s, geo = samples(roi, scale, pooled, ratio, aligned, ph, pw, shift, deform)
            yield k, int(roi[0]), ph, pw, s, geo


def box_grad(g, x, rois, pooled, scale, ratio, aligned, offset=None, mask=None, gamma=0.1,
             deform=False, mode="avg"):  # fmt: skip
    """d loss / d boxes (K, 5) of RoI Align (avg or max) or Deformable RoI Pool (with mask)."""
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    out = np.zeros((len(rois), 5))
    for k, b, ph, pw, s, geo in bins(rois, pooled, scale, ratio, aligned, offset, gamma, deform):
        (_, _, my, gy), (_, _, mx, gx) = geo
        count = max(max(gy, 0) * max(gx, 0), 1)
        m = 1.0 if mask is None else float(mask[k, 0, ph, pw])
        for c in range(x.shape[1]):
            img = x[b, c]
            if mode == "max":
                _, at = winner(img, s)
                chosen, weight = ([] if at is None else [s[at]]), g[k, c, ph, pw]
            else:
                chosen, weight = s, g[k, c, ph, pw] * m / count
            for _, _, y, xx, u, v in chosen:
                dx = right_slope(img, y, xx, 1) * weight
                dy = right_slope(img, y, xx, 0) * weight
                # position = coord1 * scale - off + (a + frac) * (coord2 - coord1) * scale
                fu, fv = (u if mx else 0.0), (v if my else 0.0)
                out[k, 1] += dx * scale * (1 - fu)
                out[k, 3] += dx * scale * fu
                out[k, 2] += dy * scale * (1 - fv)
                out[k, 4] += dy * scale * fv
    return out


def numeric_box_grad(forward, grad_output, rois, eps=1e-6):
    """Central finite differences of ``sum(grad_output * forward(rois))`` w.r.t. columns 1-4."""
    rois = np.asarray(rois, np.float64)
    out = np.zeros_like(rois)
    for k in range(len(rois)):
        for j in range(1, 5):
            plus, minus = rois.copy(), rois.copy()
            plus[k, j] += eps
            minus[k, j] -= eps
            out[k, j] = (
                np.sum(grad_output * forward(plus)) - np.sum(grad_output * forward(minus))
            ) / (2 * eps)
    return out


def right_box_grad(forward, grad_output, rois, eps=1e-7):
    """One-sided (right) differences: for boxes whose samples sit exactly at integers."""
    rois = np.asarray(rois, np.float64)
    out = np.zeros_like(rois)
    base = np.sum(grad_output * forward(rois))
    for k in range(len(rois)):
        for j in range(1, 5):
            plus = rois.copy()
            plus[k, j] += eps
            out[k, j] = (np.sum(grad_output * forward(plus)) - base) / eps
    return out
