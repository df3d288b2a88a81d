"""Scalar helpers shared by the oracles: C rounding, the RoI Align geometry in the coordinate
dtype, the sample coordinates, the bilinear rule with its right derivative, and the two loops of
every op that is linear in its features (``gather`` its forward, ``scatter`` its transpose).

See the package docstring for the conventions (``coord_dtype``, truncation, C ``round``).
"""

import math

import numpy as np


def checked_pair(output_size):
    """int or (PH, PW) -> (PH, PW) as python ints."""
    if isinstance(output_size, (int, np.integer)):
        ph = pw = int(output_size)
    else:
        ph, pw = output_size
        ph, pw = int(ph), int(pw)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return ph, pw


def ctype(coord_dtype):
    """numpy scalar type used for coordinate arithmetic."""
    t = np.dtype(coord_dtype)
    if t.kind != "f":
        raise TypeError(f"coord_dtype must be a floating dtype, got {coord_dtype!r}")
    return t.type


def features(x):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape!r}")
    return x.astype(np.float64)


def rois_array(rois):
    rois = np.asarray(rois)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5), got shape {rois.shape!r}")
    return rois


def grad_array(grad_output, shape):
    """grad_output as float64, checked against the forward's output shape."""
    go = np.asarray(grad_output, dtype=np.float64)
    if go.shape != tuple(shape):
        raise ValueError(f"grad_output shape {go.shape!r} != {tuple(shape)!r}")
    return go


def batch_index(rois, k):
    """b_k = (int) rois[k, 0] (truncation toward zero)."""
    return int(rois[k, 0])


def c_round(v):
    """C round(): half away from zero, returned as a python int."""
    v = float(v)
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


def std_max(a, b):
    """std::max(a, b) == (a < b) ? b : a  (keeps a when a is NaN)."""
    return b if a < b else a


def sampling_grid(rh_over_ph, rw_over_pw, sampling_ratio):
    """(gh, gw, count).  gh/gw may be <= 0, which means 'no samples'."""
    if sampling_ratio > 0:
        gh = gw = int(sampling_ratio)
    else:
        gh = int(math.ceil(float(rh_over_ph)))
        gw = int(math.ceil(float(rw_over_pw)))
    count = max(gh * gw, 1)
    return gh, gw, count


def pool_span(p, bin_size, start, limit):
    """RoI Pool's cells of bin p along one axis: [floor(p * bin), ceil((p + 1) * bin)) shifted
    by the box's rounded start and clamped to [0, limit]; the products in bin_size's dtype."""
    t = type(bin_size)
    lo = math.floor(t(p) * bin_size) + start
    hi = math.ceil(t(p + 1) * bin_size) + start
    return min(max(lo, 0), limit), min(max(hi, 0), limit)


def align_geometry(roi, spatial_scale, output_size, sampling_ratio, aligned, min_size, coord_dtype):
    """Coordinate-dtype geometry of one RoIAlign-style box.

    Returns a dict with sx, sy, rw, rh, bh, bw (coord_dtype scalars) and
    gh, gw, count (python ints).
    """
    cd = ctype(coord_dtype)
    PH, PW = output_size
    s = cd(spatial_scale)
    off = cd(0.5) if aligned else cd(0.0)
    sx, sy, ex, ey = (cd(roi[i]) * s - off for i in (1, 2, 3, 4))
    rw, rh = ex - sx, ey - sy
    if min_size:
        rw, rh = std_max(rw, cd(1.0)), std_max(rh, cd(1.0))
    bh, bw = rh / cd(PH), rw / cd(PW)
    gh, gw, count = sampling_grid(bh, bw, sampling_ratio)
    return dict(sx=sx, sy=sy, rw=rw, rh=rh, bh=bh, bw=bw, gh=gh, gw=gw, count=count)


def sample_coords(start_y, start_x, ph, pw, g, coord_dtype):
    """Sample coordinates of bin (ph, pw) as lists of float64 values.

    y(ph, iy) = (sy + ph*bh) + ((iy + 0.5) * bh) / gh   (this exact order,
    every operation in coord_dtype); likewise for x.
    """
    cd = ctype(coord_dtype)

    def axis(start, p, size, grid):
        at = [(start + cd(p) * size) + ((cd(i) + cd(0.5)) * size) / cd(grid) for i in range(grid)]
        return [float(v) for v in at]

    return axis(start_y, ph, g["bh"], g["gh"]), axis(start_x, pw, g["bw"], g["gw"])


def deform_starts(g, offset, k, ph, pw, gamma, coord_dtype):
    """Shifted bin start (sy', sx') in coord_dtype and the two offset scales.

    sx' = sx + ((gamma * rw) * offset[k, 0, ph, pw]);
    sy' = sy + ((gamma * rh) * offset[k, 1, ph, pw]).
    """
    cd = ctype(coord_dtype)
    gam = cd(gamma)
    scale_x = gam * g["rw"]
    scale_y = gam * g["rh"]
    if offset is None:
        return g["sy"], g["sx"], scale_y, scale_x
    sx = g["sx"] + scale_x * cd(offset[k, 0, ph, pw])
    sy = g["sy"] + scale_y * cd(offset[k, 1, ph, pw])
    return sy, sx, scale_y, scale_x


def align_points(rois, output_size, spatial_scale, sampling_ratio, aligned, min_size, coord_dtype,
                 offset=None, gamma=0.1):  # fmt: skip
    """Every bin of the RoI Align family (RoI Align, Deformable RoI Pool, PS RoI Align).

    Yields ``(k, b, ph, pw, points, g)``: the sample points ``[(y, x)]`` of bin (ph, pw) of box k
    in scan order (y major), as float64 values computed in ``coord_dtype``, the bin start shifted
    by ``offset`` when there is one, and the box geometry ``g`` of :func:`align_geometry`.
    """
    for k in range(len(rois)):
        g = align_geometry(
            rois[k], spatial_scale, output_size, sampling_ratio, aligned, min_size, coord_dtype
        )
        for ph, pw in np.ndindex(*output_size):
            sy, sx, _, _ = deform_starts(g, offset, k, ph, pw, gamma, coord_dtype)
            ys, xs = sample_coords(sy, sx, ph, pw, g, coord_dtype)
            yield k, batch_index(rois, k), ph, pw, [(y, x) for y in ys for x in xs], g


def align_bins(input_shape, *args, **kwargs):
    """The bins of :func:`align_points` as :func:`gather` takes them: the bilinear taps of all
    the samples of a bin, divided by the sample count (out-of-range samples count too)."""
    height, width = input_shape[-2:]
    for k, b, ph, pw, points, g in align_points(*args, **kwargs):
        taps = [t for y, x in points for t in bilinear_taps(height, width, y, x)]
        yield k, b, ph, pw, taps, g["count"]


def in_range(H, W, y, x):
    return -1.0 <= y <= H and -1.0 <= x <= W


def _clamped(v, size):
    """(low, high, fraction) of an in-range coordinate: the band below 0 reads the first cell,
    the band beyond size - 1 the last one."""
    v = max(v, 0.0)
    low = int(v)
    if low >= size - 1:
        return size - 1, size - 1, 0.0
    return low, low + 1, v - low


def neighbours(H, W, y, x):
    """Clamped neighbour indices and fractional parts, exactly as in RoIAlign.

    Assumes the sample is in range.  Returns (yl, yh, xl, xh, ly, lx).
    """
    yl, yh, ly = _clamped(y, H)
    xl, xh, lx = _clamped(x, W)
    return yl, yh, xl, xh, ly, lx


def bilinear_taps(H, W, y, x):
    """The Caffe2 bilinear rule: [(row, col, weight)] of the 4 neighbours, [] out of range."""
    y = float(y)
    x = float(x)
    if not in_range(H, W, y, x):
        return []
    yl, yh, xl, xh, ly, lx = neighbours(H, W, y, x)
    hy = 1.0 - ly
    hx = 1.0 - lx
    return [(yl, xl, hy * hx), (yl, xh, hy * lx), (yh, xl, ly * hx), (yh, xh, ly * lx)]


def bilinear(img, y, x):
    """Caffe2/torchvision RoIAlign bilinear interpolation of a (H, W) image.

    Out of range (not -1 <= y <= H and -1 <= x <= W) -> 0.  Inside the bands
    [-1, 0) and (H-1, H] the edge row/column is replicated.
    """
    img = np.asarray(img, dtype=np.float64)
    value = 0.0
    for r, c, w in bilinear_taps(*img.shape, y, x):
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
    if not in_range(H, W, y, x):
        return 0.0, 0.0
    yl, yh, xl, xh, ly, lx = neighbours(H, W, y, x)
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


def gather(x, bins, shape, channels=None):
    """Forward of an op linear in its features -> float64 array of ``shape`` (K, C_out, PH, PW).

    ``bins`` yields ``(k, b, ph, pw, taps, count)``: ``out[k, :, ph, pw]`` is
    ``sum(w * x[b, :, row, col] for row, col, w in taps) / count``, summed in the order of the
    taps. ``channels(ph, pw)`` picks the input channels bin (ph, pw) reads (all of them by
    default; the position-sensitive map of R-FCN for the PS ops).
    """
    x = features(x)
    out = np.zeros(shape)
    for k, b, ph, pw, taps, count in bins:
        planes = x[b] if channels is None else x[b, channels(ph, pw)]
        for r, c, w in taps:
            out[k, :, ph, pw] += w * planes[:, r, c]
        out[k, :, ph, pw] /= count
    return out


def scatter(grad_output, bins, input_shape, channels=None):
    """Exact transpose of :func:`gather` for the same bins -> grad_input of ``input_shape``."""
    go = np.asarray(grad_output, dtype=np.float64)
    grad = np.zeros(tuple(int(v) for v in input_shape))
    for k, b, ph, pw, taps, count in bins:
        picked = slice(None) if channels is None else channels(ph, pw)
        for r, c, w in taps:
            grad[b, picked, r, c] += w * go[k, :, ph, pw] / count
    return grad
