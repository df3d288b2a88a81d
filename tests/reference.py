"""Float64 scalar-loop oracles for RoI Align, RoI Pool and Deformable RoI Pool.

These oracles are written from the published semantics of the peer libraries
(torchvision.ops.roi_align / roi_pool, i.e. the Caffe2/Detectron kernels, and
mmcv.ops.deform_roi_pool), NOT from the cuproi implementation, so that they do
not share its bugs.  They are deliberately slow: plain Python ``for`` loops over
boxes, channels, bins and samples, numpy only, values accumulated in float64.
Clarity beats speed here; use them on small inputs only.

Conventions (shared by every function):

* ``x`` is a float array (N, C, H, W); ``rois`` is (K, 5) with rows
  ``[batch_index, x1, y1, x2, y2]`` in image coordinates; ``output_size`` is an
  int or a pair (PH, PW).  Results are float64 numpy arrays (argmax is int64).
* ``coord_dtype`` (default float64) is the dtype in which the *coordinate
  arithmetic* is evaluated.  The peers do it in the feature dtype; for float32
  features the implementation under test does it in float32.  Each roi
  coordinate, ``spatial_scale`` (and ``gamma``, offsets) is cast to
  ``coord_dtype`` and every coordinate expression is evaluated with numpy
  scalars of that dtype in exactly the documented operation order, so each
  binary operation rounds to ``coord_dtype``.  Interpolation weights and all
  value accumulation are then done in float64 (the coordinate is cast to float64
  first).
* ``(int)`` is truncation toward zero, ``round`` is C ``round`` (half away from
  zero, not numpy's banker's rounding).
"""

import math

import numpy as np

__all__ = [
    "bilinear",
    "bilinear_grad",
    "roi_align",
    "roi_align_backward",
    "roi_pool",
    "roi_pool_backward",
    "deform_roi_pool",
    "deform_roi_pool_backward",
]


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _pair(output_size):
    """int or (PH, PW) -> (PH, PW) as python ints."""
    if isinstance(output_size, (int, np.integer)):
        ph = pw = int(output_size)
    else:
        ph, pw = output_size
        ph, pw = int(ph), int(pw)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return ph, pw


def _ctype(coord_dtype):
    """numpy scalar type used for coordinate arithmetic."""
    t = np.dtype(coord_dtype)
    if t.kind != "f":
        raise TypeError(f"coord_dtype must be a floating dtype, got {coord_dtype!r}")
    return t.type


def _features(x):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape!r}")
    return x.astype(np.float64)


def _rois(rois):
    rois = np.asarray(rois)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5), got shape {rois.shape!r}")
    return rois


def _batch_index(rois, k):
    """b_k = (int) rois[k, 0] (truncation toward zero)."""
    return int(rois[k, 0])


def _c_round(v):
    """C round(): half away from zero, returned as a python int."""
    v = float(v)
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


def _std_max(a, b):
    """std::max(a, b) == (a < b) ? b : a  (keeps a when a is NaN)."""
    return b if a < b else a


def _sampling_grid(rh_over_ph, rw_over_pw, sampling_ratio):
    """(gh, gw, count).  gh/gw may be <= 0, which means 'no samples'."""
    if sampling_ratio > 0:
        gh = gw = int(sampling_ratio)
    else:
        gh = int(math.ceil(float(rh_over_ph)))
        gw = int(math.ceil(float(rw_over_pw)))
    count = max(gh * gw, 1)
    return gh, gw, count


def _align_geometry(
    roi, spatial_scale, output_size, sampling_ratio, aligned, min_size, coord_dtype
):
    """Coordinate-dtype geometry of one RoIAlign-style box.

    Returns a dict with sx, sy, rw, rh, bh, bw (coord_dtype scalars) and
    gh, gw, count (python ints).
    """
    cd = _ctype(coord_dtype)
    PH, PW = output_size
    s = cd(spatial_scale)
    off = cd(0.5) if aligned else cd(0.0)
    sx = cd(roi[1]) * s - off
    sy = cd(roi[2]) * s - off
    ex = cd(roi[3]) * s - off
    ey = cd(roi[4]) * s - off
    rw = ex - sx
    rh = ey - sy
    if min_size:
        rw = _std_max(rw, cd(1.0))
        rh = _std_max(rh, cd(1.0))
    bh = rh / cd(PH)
    bw = rw / cd(PW)
    gh, gw, count = _sampling_grid(bh, bw, sampling_ratio)
    return dict(sx=sx, sy=sy, rw=rw, rh=rh, bh=bh, bw=bw, gh=gh, gw=gw, count=count)


def _sample_coords(start_y, start_x, ph, pw, g, coord_dtype):
    """Sample coordinates of bin (ph, pw) as lists of float64 values.

    y(ph, iy) = (sy + ph*bh) + ((iy + 0.5) * bh) / gh   (this exact order,
    every operation in coord_dtype); likewise for x.
    """
    cd = _ctype(coord_dtype)
    half = cd(0.5)
    ys = []
    for iy in range(g["gh"]):
        y = (start_y + cd(ph) * g["bh"]) + ((cd(iy) + half) * g["bh"]) / cd(g["gh"])
        ys.append(float(y))
    xs = []
    for ix in range(g["gw"]):
        x = (start_x + cd(pw) * g["bw"]) + ((cd(ix) + half) * g["bw"]) / cd(g["gw"])
        xs.append(float(x))
    return ys, xs


def _deform_starts(g, offset, k, ph, pw, gamma, coord_dtype):
    """Shifted bin start (sy', sx') in coord_dtype and the two offset scales.

    sx' = sx + ((gamma * rw) * offset[k, 0, ph, pw]);
    sy' = sy + ((gamma * rh) * offset[k, 1, ph, pw]).
    """
    cd = _ctype(coord_dtype)
    gam = cd(gamma)
    scale_x = gam * g["rw"]
    scale_y = gam * g["rh"]
    if offset is None:
        return g["sy"], g["sx"], scale_y, scale_x
    sx = g["sx"] + scale_x * cd(offset[k, 0, ph, pw])
    sy = g["sy"] + scale_y * cd(offset[k, 1, ph, pw])
    return sy, sx, scale_y, scale_x


def _in_range(H, W, y, x):
    return -1.0 <= y <= H and -1.0 <= x <= W


def _neighbours(H, W, y, x):
    """Clamped neighbour indices and fractional parts, exactly as in RoIAlign.

    Assumes the sample is in range.  Returns (yl, yh, xl, xh, ly, lx).
    """
    y = max(y, 0.0)
    x = max(x, 0.0)
    yl = int(y)
    if yl >= H - 1:
        yl = yh = H - 1
        y = float(yl)
    else:
        yh = yl + 1
    xl = int(x)
    if xl >= W - 1:
        xl = xh = W - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly = y - yl
    lx = x - xl
    return yl, yh, xl, xh, ly, lx


def _bilinear_weights(H, W, y, x):
    """List of ((row, col), weight) for the 4 neighbours, or [] if out of range."""
    y = float(y)
    x = float(x)
    if not _in_range(H, W, y, x):
        return []
    yl, yh, xl, xh, ly, lx = _neighbours(H, W, y, x)
    hy = 1.0 - ly
    hx = 1.0 - lx
    return [((yl, xl), hy * hx), ((yl, xh), hy * lx), ((yh, xl), ly * hx), ((yh, xh), ly * lx)]


# ----------------------------------------------------------------------------
# bilinear interpolation and its (right) derivative
# ----------------------------------------------------------------------------


def bilinear(img, y, x):
    """Caffe2/torchvision RoIAlign bilinear interpolation of a (H, W) image.

    Out of range (not -1 <= y <= H and -1 <= x <= W) -> 0.  Inside the bands
    [-1, 0) and (H-1, H] the edge row/column is replicated.
    """
    img = np.asarray(img, dtype=np.float64)
    H, W = img.shape
    value = 0.0
    for (r, c), w in _bilinear_weights(H, W, y, x):
        value += w * float(img[r, c])
    return value


def bilinear_grad(img, y, x):
    """Right derivatives (d/dy, d/dx) of :func:`bilinear` (the clamped function).

    One-sided derivative in the +y / +x direction everywhere:
    * 0 if the sample is out of range;
    * d/dx = 0 if x < 0 (clamp band) or int(max(x, 0)) >= W-1 (upper band),
      otherwise (1-ly)*(img[yl,xh]-img[yl,xl]) + ly*(img[yh,xh]-img[yh,xl]) with
      yl, yh, ly from the clamped y (so in y's bands the x-derivative is the edge
      row's slope, not zero);
    * at an interior integer x, xl = x, lx = 0 and d/dx = img[., x+1] - img[., x];
    * d/dy symmetric.
    """
    img = np.asarray(img, dtype=np.float64)
    H, W = img.shape
    y = float(y)
    x = float(x)
    if not _in_range(H, W, y, x):
        return 0.0, 0.0
    yl, yh, xl, xh, ly, lx = _neighbours(H, W, y, x)
    v00 = float(img[yl, xl])
    v01 = float(img[yl, xh])
    v10 = float(img[yh, xl])
    v11 = float(img[yh, xh])
    if x < 0.0 or int(max(x, 0.0)) >= W - 1:
        dx = 0.0
    else:
        dx = (1.0 - ly) * (v01 - v00) + ly * (v11 - v10)
    if y < 0.0 or int(max(y, 0.0)) >= H - 1:
        dy = 0.0
    else:
        dy = (1.0 - lx) * (v10 - v00) + lx * (v11 - v01)
    return dy, dx


# ----------------------------------------------------------------------------
# A / B: RoI Align (torchvision.ops.roi_align)
# ----------------------------------------------------------------------------


def roi_align(
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    coord_dtype=np.float64,
):
    """torchvision.ops.roi_align forward (Caffe2 kernel) -> (K, C, PH, PW) float64."""
    x = _features(x)
    rois = _rois(rois)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    for k in range(K):
        b = _batch_index(rois, k)
        g = _align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, aligned, not aligned, coord_dtype
        )
        for c in range(C):
            img = x[b, c]
            for ph in range(PH):
                for pw in range(PW):
                    ys, xs = _sample_coords(g["sy"], g["sx"], ph, pw, g, coord_dtype)
                    total = 0.0
                    for yy in ys:
                        for xx in xs:
                            total += bilinear(img, yy, xx)
                    out[k, c, ph, pw] = total / g["count"]
    return out


def roi_align_backward(
    grad_output,
    rois,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    coord_dtype=np.float64,
):
    """Exact transpose of :func:`roi_align` -> grad_input of shape input_shape."""
    rois = _rois(rois)
    PH, PW = _pair(output_size)
    N, C, H, W = (int(v) for v in input_shape)
    K = rois.shape[0]
    go = np.asarray(grad_output, dtype=np.float64)
    if go.shape != (K, C, PH, PW):
        raise ValueError(f"grad_output shape {go.shape!r} != {(K, C, PH, PW)!r}")
    grad = np.zeros((N, C, H, W), dtype=np.float64)
    for k in range(K):
        b = _batch_index(rois, k)
        g = _align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, aligned, not aligned, coord_dtype
        )
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    ys, xs = _sample_coords(g["sy"], g["sx"], ph, pw, g, coord_dtype)
                    gval = go[k, c, ph, pw] / g["count"]
                    for yy in ys:
                        for xx in xs:
                            for (r, col), w in _bilinear_weights(H, W, yy, xx):
                                grad[b, c, r, col] += gval * w
    return grad


# ----------------------------------------------------------------------------
# C / D: RoI Pool (torchvision.ops.roi_pool, Fast R-CNN)
# ----------------------------------------------------------------------------


def roi_pool(x, rois, output_size, spatial_scale=1.0, *, coord_dtype=np.float64):
    """torchvision.ops.roi_pool forward -> (out float64, argmax int64), both (K, C, PH, PW).

    argmax is the flat index h*W + w inside the (H, W) plane, -1 for empty bins.
    Ties: first maximum in h-major scan order wins (strict >).  NaN propagates:
    once a NaN is seen it is kept and argmax points at the first NaN.
    """
    x = _features(x)
    rois = _rois(rois)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    cd = _ctype(coord_dtype)
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    argmax = np.full((K, C, PH, PW), -1, dtype=np.int64)
    s = cd(spatial_scale)
    for k in range(K):
        b = _batch_index(rois, k)
        xs = _c_round(cd(rois[k, 1]) * s)
        ys = _c_round(cd(rois[k, 2]) * s)
        xe = _c_round(cd(rois[k, 3]) * s)
        ye = _c_round(cd(rois[k, 4]) * s)
        rw = max(xe - xs + 1, 1)
        rh = max(ye - ys + 1, 1)
        bin_h = cd(rh) / cd(PH)
        bin_w = cd(rw) / cd(PW)
        for ph in range(PH):
            hstart = int(math.floor(float(cd(ph) * bin_h)))
            hend = int(math.ceil(float(cd(ph + 1) * bin_h)))
            hstart = min(max(hstart + ys, 0), H)
            hend = min(max(hend + ys, 0), H)
            for pw in range(PW):
                wstart = int(math.floor(float(cd(pw) * bin_w)))
                wend = int(math.ceil(float(cd(pw + 1) * bin_w)))
                wstart = min(max(wstart + xs, 0), W)
                wend = min(max(wend + xs, 0), W)
                empty = hend <= hstart or wend <= wstart
                for c in range(C):
                    if empty:
                        out[k, c, ph, pw] = 0.0
                        argmax[k, c, ph, pw] = -1
                        continue
                    img = x[b, c]
                    best = None
                    best_idx = -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            v = float(img[h, w])
                            idx = h * W + w
                            if best is None:
                                best, best_idx = v, idx
                            elif math.isnan(best):
                                pass  # NaN, once seen, is kept
                            elif math.isnan(v) or v > best:
                                best, best_idx = v, idx
                    out[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = best_idx
    return out, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape):
    """Transpose of roi_pool through its argmax -> grad_input of shape input_shape."""
    rois = _rois(rois)
    N, C, H, W = (int(v) for v in input_shape)
    go = np.asarray(grad_output, dtype=np.float64)
    am = np.asarray(argmax)
    if go.shape != am.shape:
        raise ValueError(f"grad_output shape {go.shape!r} != argmax shape {am.shape!r}")
    K, C2, PH, PW = go.shape
    if K != rois.shape[0] or C2 != C:
        raise ValueError(f"grad_output shape {go.shape!r} inconsistent with rois/input_shape")
    grad = np.zeros((N, C, H, W), dtype=np.float64)
    for k in range(K):
        b = _batch_index(rois, k)
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    idx = int(am[k, c, ph, pw])
                    if idx < 0:
                        continue
                    h, w = divmod(idx, W)
                    grad[b, c, h, w] += go[k, c, ph, pw]
    return grad


# ----------------------------------------------------------------------------
# E / F: Deformable RoI Pool (mmcv.ops.deform_roi_pool)
# ----------------------------------------------------------------------------


def _check_offset(offset, K, PH, PW):
    if offset is None:
        return None
    offset = np.asarray(offset)
    if offset.shape != (K, 2, PH, PW):
        raise ValueError(f"offset shape {offset.shape!r} != {(K, 2, PH, PW)!r}")
    return offset


def deform_roi_pool(
    x,
    rois,
    offset,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    gamma=0.1,
    *,
    coord_dtype=np.float64,
):
    """mmcv.ops.deform_roi_pool forward -> (K, C, PH, PW) float64.

    Always aligned (-0.5), no minimum box size.  offset (K, 2, PH, PW):
    channel 0 shifts x by gamma*rw*offset, channel 1 shifts y by gamma*rh*offset.
    """
    x = _features(x)
    rois = _rois(rois)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    offset = _check_offset(offset, K, PH, PW)
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    for k in range(K):
        b = _batch_index(rois, k)
        g = _align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, True, False, coord_dtype
        )
        for ph in range(PH):
            for pw in range(PW):
                sy, sx, _, _ = _deform_starts(g, offset, k, ph, pw, gamma, coord_dtype)
                ys, xs = _sample_coords(sy, sx, ph, pw, g, coord_dtype)
                for c in range(C):
                    img = x[b, c]
                    total = 0.0
                    for yy in ys:
                        for xx in xs:
                            total += bilinear(img, yy, xx)
                    out[k, c, ph, pw] = total / g["count"]
    return out


def deform_roi_pool_backward(
    grad_output,
    x,
    rois,
    offset,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    gamma=0.1,
    *,
    coord_dtype=np.float64,
):
    """Backward of :func:`deform_roi_pool` -> (grad_input, grad_offset).

    grad_input is the exact transpose of the forward.  grad_offset (K, 2, PH, PW),
    or None when offset is None, is the true (right) derivative of the forward
    contracted with grad_output over channels:
        grad_offset[k,0,ph,pw] = sum_c g[k,c,ph,pw] * (gamma*rw)/count * sum_samples d bilinear/dx
        grad_offset[k,1,ph,pw] = sum_c g[k,c,ph,pw] * (gamma*rh)/count * sum_samples d bilinear/dy
    where gamma*rw / gamma*rh are the coord_dtype products that scale the offset
    in the forward, and the bilinear derivative is :func:`bilinear_grad`
    (correct in the replicate bands, unlike mmcv).
    """
    x = _features(x)
    rois = _rois(rois)
    PH, PW = _pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    offset = _check_offset(offset, K, PH, PW)
    go = np.asarray(grad_output, dtype=np.float64)
    if go.shape != (K, C, PH, PW):
        raise ValueError(f"grad_output shape {go.shape!r} != {(K, C, PH, PW)!r}")
    grad_input = np.zeros((N, C, H, W), dtype=np.float64)
    grad_offset = None if offset is None else np.zeros((K, 2, PH, PW), dtype=np.float64)
    for k in range(K):
        b = _batch_index(rois, k)
        g = _align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, True, False, coord_dtype
        )
        count = g["count"]
        for ph in range(PH):
            for pw in range(PW):
                sy, sx, scale_y, scale_x = _deform_starts(g, offset, k, ph, pw, gamma, coord_dtype)
                ys, xs = _sample_coords(sy, sx, ph, pw, g, coord_dtype)
                for c in range(C):
                    img = x[b, c]
                    gval = go[k, c, ph, pw]
                    sum_dx = 0.0
                    sum_dy = 0.0
                    for yy in ys:
                        for xx in xs:
                            for (r, col), w in _bilinear_weights(H, W, yy, xx):
                                grad_input[b, c, r, col] += (gval / count) * w
                            dy, dx = bilinear_grad(img, yy, xx)
                            sum_dx += dx
                            sum_dy += dy
                    if grad_offset is not None:
                        grad_offset[k, 0, ph, pw] += gval * (float(scale_x) / count) * sum_dx
                        grad_offset[k, 1, ph, pw] += gval * (float(scale_y) / count) * sum_dy
    return grad_input, grad_offset
