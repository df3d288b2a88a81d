"""Max-mode RoI Align on the CPU (mmcv's pool_mode="max"): the samples of every bin, reduced.

Bins are listed with their in-range samples (``_samples``), chunked over boxes so that the
``samples x channels`` values stay bounded; the winner of each (bin, channel) is the first
maximum in scan order (an out-of-range sample competes as 0, a NaN wins), exactly as bin_max in
kernels/common/bilinear.cuh.
"""

import numpy as np

from cuproi._cpu import _parallel, _samples, _sampling
from cuproi._cpu.deform_roi_pool import _bin_axes


def _setup(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    g = _sampling.make_grid(
        rois,
        spatial_scale,
        pooled_h,
        pooled_w,
        sampling_ratio,
        0.5 if aligned else 0.0,
        not aligned,
    )
    y, x = _bin_axes(g, None, (pooled_h, pooled_w), 0.0)
    return g, y, x


def _chunk(x_rows, rois, shape, y, x, k0, k1):
    """Samples, values and winners of boxes k0:k1 (bins in (box, ph, pw) order)."""
    _, h, w = shape
    yb, hb, gh, xb, wb, gw = _samples.bins_of(y, x, k0, k1)
    s = _samples.samples(yb, hb, gh, xb, wb, gw, h, w)
    bins = len(yb)
    per_box = bins // max(k1 - k0, 1)
    image = rois[k0:k1, 0].astype(np.int64)[np.arange(bins) // max(per_box, 1)]
    vals = _samples.values(s, image, h, w, x_rows)
    value, winner = _samples.scan_max(s, vals, bins)
    return s, image, value, winner, (gh, gw)


def roi_align_max_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    n, c, h, w = input.shape
    shape = (n, h, w)
    x_rows = _sampling.pixels_by_channel(input.astype(rois.dtype, copy=False))
    out = np.zeros((len(rois), c, pooled_h, pooled_w), rois.dtype)
    _, y, x = _setup(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)

    def run(k0, k1):
        _, _, value, _, _ = _chunk(x_rows, rois, shape, y, x, k0, k1)
        out[k0:k1] = value.reshape(k1 - k0, pooled_h, pooled_w, c).transpose(0, 3, 1, 2)

    for ranges in _samples.parts(y, x, h, w, c):
        _parallel.map_ordered(lambda r: run(*r), ranges)
    return out.astype(input.dtype, copy=False)


def roi_align_max_backward(
    grad_output,
    input,
    rois,
    spatial_scale,
    sampling_ratio,
    aligned,
    deterministic=False,
    wrt="input",
    channels_last=False,
):
    n, c, h, w = input.shape
    shape = (n, h, w)
    k, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    x_rows = _sampling.pixels_by_channel(input.astype(ct, copy=False))
    g_rows = _sampling.bin_rows(grad_output.astype(ct, copy=False))
    grid, y, x = _setup(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    bins = pooled_h * pooled_w
    grad_rows = np.zeros((n * h * w, c), ct) if wrt == "input" else None
    grad_rois = np.zeros((k, 5), np.float64)
    free = (aligned | (grid.width > 1), aligned | (grid.height > 1))

    def run(k0, k1):
        """The winners of boxes k0:k1 (wrt input), or their box gradient, written in place."""
        s, image, _, winner, (gh, gw) = _chunk(x_rows, rois, shape, y, x, k0, k1)
        g = g_rows[k0 * bins : k1 * bins]
        won = winner >= 0
        b_of, c_of = np.nonzero(won)
        at = winner[won]
        gv = g[b_of, c_of]
        if wrt == "input":  # (flat target, value) of the winners' contributions, tap by tap
            base = image[b_of] * h
            taps = ((s.y0, s.x0), (s.y0, s.x1), (s.y1, s.x0), (s.y1, s.x1))
            return [
                (((base + yy[at]) * w + xx[at]) * c + c_of, gv * wt[at])
                for (yy, xx), wt in zip(taps, _samples.weights(s), strict=True)
            ]
        weight = np.zeros((len(s.bin), c), ct)
        weight[at, c_of] = gv
        dx, dy = _samples.slopes(s, image, h, w, x_rows)
        grad_rois[k0:k1] = _samples.box_gradient(
            s,
            dx,
            dy,
            weight,
            len(gh),
            (pooled_h, pooled_w),
            gh,
            gw,
            spatial_scale,
            None,
            (free[0][k0:k1], free[1][k0:k1]),
        )

    for ranges in _samples.parts(y, x, h, w, c):
        found = _parallel.map_ordered(lambda r: run(*r), ranges)
        if wrt != "input":
            continue
        # Tap by tap over the whole chunk, its ranges in order: every cell adds its terms in
        # the same order however the chunk was split over the threads (deterministic). On the
        # flat view: add.at's fast path for one index array (several times faster).
        for tap in range(4):
            target = np.concatenate([contributions[tap][0] for contributions in found])
            value = np.concatenate([contributions[tap][1] for contributions in found])
            np.add.at(grad_rows.reshape(-1), target, value)
    if wrt == "input":
        return _parallel.gradient(grad_rows, input.shape, grad_output.dtype, channels_last)
    return grad_rois.astype(ct)
