"""The calculus of the sampling ops for their box gradients, and finite differences.

Every sample position of RoI Align and Deformable RoI Pool is an affine function of x1, x2
(y1, y2); the bilinear surface is differentiated from the right; the adaptive sample count
and the legacy minimum box size are piecewise constant. The max mode follows mmcv: the first
maximum in scan order wins, a NaN sample wins the max (the first one), a bin without samples
gives 0.
"""

import math

import numpy as np


def pair(size):
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def value(img, y, x):
    """torchvision's bilinear: 0 outside [-1, H] x [-1, W], edges replicated in the bands."""
    h, w = img.shape
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[y0, x0]
        + (1 - ly) * lx * img[y0, x1]
        + ly * (1 - lx) * img[y1, x0]
        + ly * lx * img[y1, x1]
    )


def taps(h, w, y, x):
    """[(row, col, weight)] of an in-range sample (the 4 neighbours of value)."""
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return [
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x1, (1 - ly) * lx),
        (y1, x0, ly * (1 - lx)),
        (y1, x1, ly * lx),
    ]


def right_slope(img, y, x, axis):
    """Right derivative of value along y (axis 0) or x (axis 1) at (y, x)."""
    h, w = img.shape
    pos, size = (y, h) if axis == 0 else (x, w)
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0
    if pos < 0.0 or pos >= size - 1:  # flattened band (or beyond: constant 0 from the right)
        return 0.0
    lo = math.floor(pos)
    if axis == 0:
        return value(img, float(lo + 1), x) - value(img, float(lo), x)
    return value(img, y, float(lo + 1)) - value(img, y, float(lo))


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
        v = value(img, y, x)
        if best is None or v > best or (math.isnan(v) and not math.isnan(best)):
            best, at = v, i
    if best is None:
        return 0.0, None
    h, w = img.shape
    y, x = samples[at][2], samples[at][3]
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0, None  # an out-of-range zero won: nothing to differentiate
    return best, at


def deform_shift(offset, gamma, k, ph, pw):
    if offset is None:
        return (0.0, 0.0)
    return (gamma * float(offset[k, 1, ph, pw]), gamma * float(offset[k, 0, ph, pw]))


def box_grad(
    g,
    x,
    rois,
    pooled,
    scale,
    ratio,
    aligned,
    offset=None,
    mask=None,
    gamma=0.1,
    deform=False,
    mode="avg",
):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    g = np.asarray(g, np.float64)
    out = np.zeros((len(rois), 5))
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                shift = deform_shift(offset, gamma, k, ph, pw)
                s, geo = samples(roi, scale, pooled, ratio, aligned, ph, pw, shift, deform)
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
