"""Float64 loop oracles for the extensions of the core ops: max-mode RoI Align, the modulated
(masked) Deformable RoI Pooling and the gradients with respect to the box coordinates.

Written from the published semantics, not from cuproi: mmcv's ``roi_align(pool_mode="max")``
(max over the gh x gw interpolated samples of the Caffe2 grid, an out-of-range sample counting as
0, the first maximum in scan order winning, the gradient routed to the 4 neighbours of the winning
sample), DCNv2 / mmcv's ``ModulatedDeformRoIPoolPack`` (``mask * deform_roi_pool``), and the
calculus of the forward for the boxes (every sample position is an affine function of x1, x2
(y1, y2); the bilinear surface is differentiated from the right; the adaptive sample count and
the legacy minimum box size are piecewise constant). Plain Python loops in float64; small inputs.
Decisions cuproi documents and these oracles pin: a NaN sample wins the max (the first one), a bin
without samples gives 0.
"""

import math

import numpy as np


def _pair(size):
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _value(img, y, x):
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


def _taps(h, w, y, x):
    """[(row, col, weight)] of an in-range sample (the 4 neighbours of _value)."""
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


def _right_slope(img, y, x, axis):
    """Right derivative of _value along y (axis 0) or x (axis 1) at (y, x)."""
    h, w = img.shape
    pos, size = (y, h) if axis == 0 else (x, w)
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0
    if pos < 0.0 or pos >= size - 1:  # flattened band (or beyond: constant 0 from the right)
        return 0.0
    lo = math.floor(pos)
    if axis == 0:
        return _value(img, float(lo + 1), x) - _value(img, float(lo), x)
    return _value(img, y, float(lo + 1)) - _value(img, y, float(lo))


def _geometry(roi, scale, pooled, ratio, aligned, deform=False):
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


def _samples(roi, scale, pooled, ratio, aligned, ph, pw, shift=(0.0, 0.0), deform=False):
    """[(iy, ix, y, x, u, v)] of bin (ph, pw) in scan order; u, v: fractions of the box size
    (plus the deformable shift a) at which the sample sits. Also returns the geometry."""
    (sy, hy, my, gy), (sx, hx, mx, gx) = _geometry(roi, scale, pooled, ratio, aligned, deform)
    ay, ax = shift
    out = []
    for iy in range(max(gy, 0)):
        v = (ph + (iy + 0.5) / gy) / pooled[0]
        for ix in range(max(gx, 0)):
            u = (pw + (ix + 0.5) / gx) / pooled[1]
            out.append((iy, ix, sy + (ay + v) * hy, sx + (ax + u) * hx, u + ax, v + ay))
    return out, ((sy, hy, my, gy), (sx, hx, mx, gx))


# ---- max-mode RoI Align ----------------------------------------------------------------------


def _winner(img, samples):
    """(value, index into samples or None) of mmcv's max with cuproi's NaN and empty rules."""
    best, at = None, None
    for i, (_, _, y, x, _, _) in enumerate(samples):
        v = _value(img, y, x)
        if best is None or v > best or (math.isnan(v) and not math.isnan(best)):
            best, at = v, i
    if best is None:
        return 0.0, None
    h, w = img.shape
    y, x = samples[at][2], samples[at][3]
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0, None  # an out-of-range zero won: nothing to differentiate
    return best, at


def roi_align_max(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    pooled = _pair(output_size)
    out = np.zeros((len(rois), x.shape[1], *pooled))
    for k, roi in enumerate(rois):
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                s, _ = _samples(roi, spatial_scale, pooled, sampling_ratio, aligned, ph, pw)
                for c in range(x.shape[1]):
                    out[k, c, ph, pw] = _winner(x[int(roi[0]), c], s)[0]
    return out


def roi_align_max_backward(
    grad_output, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    g = np.asarray(grad_output, np.float64)
    pooled = _pair(output_size)
    grad = np.zeros_like(x)
    h, w = x.shape[2:]
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                s, _ = _samples(roi, spatial_scale, pooled, sampling_ratio, aligned, ph, pw)
                for c in range(x.shape[1]):
                    _, at = _winner(x[b, c], s)
                    if at is None:
                        continue
                    for r, q, wt in _taps(h, w, s[at][2], s[at][3]):
                        grad[b, c, r, q] += g[k, c, ph, pw] * wt
    return grad


# ---- modulated deformable RoI pooling --------------------------------------------------------


def _deform_shift(offset, gamma, k, ph, pw):
    if offset is None:
        return (0.0, 0.0)
    return (gamma * float(offset[k, 1, ph, pw]), gamma * float(offset[k, 0, ph, pw]))


def deform_roi_pool_unmodulated(
    x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """mmcv's deform_roi_pool forward (average of the shifted samples)."""
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    pooled = _pair(output_size)
    out = np.zeros((len(rois), x.shape[1], *pooled))
    for k, roi in enumerate(rois):
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                shift = _deform_shift(offset, gamma, k, ph, pw)
                s, geo = _samples(roi, spatial_scale, pooled, ratio, True, ph, pw, shift, True)
                count = max(max(geo[0][3], 0) * max(geo[1][3], 0), 1)
                for c in range(x.shape[1]):
                    img = x[int(roi[0]), c]
                    out[k, c, ph, pw] = sum(_value(img, t[2], t[3]) for t in s) / count
    return out


def deform_roi_pool_modulated(
    x, rois, offset, mask, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """DCNv2 / mmcv ModulatedDeformRoIPoolPack: ``mask * deform_roi_pool``."""
    out = deform_roi_pool_unmodulated(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return out if mask is None else out * np.asarray(mask, np.float64)


def deform_roi_pool_mask_grad(
    grad_output, x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """d loss / d mask = sum over channels of grad_output * unmodulated pooling, (K, 1, PH, PW)."""
    avg = deform_roi_pool_unmodulated(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return (np.asarray(grad_output, np.float64) * avg).sum(1, keepdims=True)


# ---- box gradients -----------------------------------------------------------------------------


def _box_grad(
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
                shift = _deform_shift(offset, gamma, k, ph, pw)
                s, geo = _samples(roi, scale, pooled, ratio, aligned, ph, pw, shift, deform)
                (_, _, my, gy), (_, _, mx, gx) = geo
                count = max(max(gy, 0) * max(gx, 0), 1)
                m = 1.0 if mask is None else float(mask[k, 0, ph, pw])
                for c in range(x.shape[1]):
                    img = x[b, c]
                    if mode == "max":
                        _, at = _winner(img, s)
                        chosen, weight = ([] if at is None else [s[at]]), g[k, c, ph, pw]
                    else:
                        chosen, weight = s, g[k, c, ph, pw] * m / count
                    for _, _, y, xx, u, v in chosen:
                        dx = _right_slope(img, y, xx, 1) * weight
                        dy = _right_slope(img, y, xx, 0) * weight
                        # position = coord1 * scale - off + (a + frac) * (coord2 - coord1) * scale
                        fu, fv = (u if mx else 0.0), (v if my else 0.0)
                        out[k, 1] += dx * scale * (1 - fu)
                        out[k, 3] += dx * scale * fu
                        out[k, 2] += dy * scale * (1 - fv)
                        out[k, 4] += dy * scale * fv
    return out


def roi_align_box_grad(
    grad_output,
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
):
    """d loss / d [batch_index, x1, y1, x2, y2] of roi_align (column 0 is 0)."""
    return _box_grad(
        grad_output,
        x,
        rois,
        _pair(output_size),
        spatial_scale,
        sampling_ratio,
        aligned,
        mode=pool_mode,
    )


def deform_roi_pool_box_grad(
    grad_output, x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1, mask=None
):
    """d loss / d boxes of (modulated) deform_roi_pool (column 0 is 0)."""
    return _box_grad(
        grad_output,
        x,
        rois,
        _pair(output_size),
        spatial_scale,
        ratio,
        True,
        offset,
        mask,
        gamma,
        deform=True,
    )


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
