"""Deformable RoI Pooling on the CPU: every bin has its own (shifted) sampling rows."""

import numpy as np

from cuproi._cpu import _sampling


def _grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """Sampling grid of mmcv: half-pixel shift, no minimum box size."""
    return _sampling.make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, 0.5, False)


def _bin_axes(g, offset, pooled, gamma):
    """(start, bin size, samples) of every bin along y and along x, each (K, PH, PW).

    Bin ``(ph, pw)`` of grid ``g`` starts at the box corner shifted by
    ``gamma * box size * offset[:, (x, y), ph, pw]`` (unshifted if ``offset`` is None), plus
    ``ph`` (``pw``) bin sizes. cuproi.viz draws the bins from this.
    """
    pooled_h, pooled_w = pooled
    bins = (len(g.start_y), pooled_h, pooled_w)
    ct = g.start_y.dtype.type
    start_y = g.start_y[:, None, None]
    start_x = g.start_x[:, None, None]
    if offset is not None:  # same operation order as deformed_grid() in the kernel
        start_x = start_x + (ct(gamma) * g.width)[:, None, None] * offset[:, 0]
        start_y = start_y + (ct(gamma) * g.height)[:, None, None] * offset[:, 1]
    y = [
        start_y + np.arange(pooled_h, dtype=ct)[:, None] * g.bin_h[:, None, None],
        g.bin_h[:, None, None],
        g.grid_h[:, None, None],
    ]
    x = [
        start_x + np.arange(pooled_w, dtype=ct) * g.bin_w[:, None, None],
        g.bin_w[:, None, None],
        g.grid_w[:, None, None],
    ]
    return [np.broadcast_to(a, bins) for a in y], [np.broadcast_to(a, bins) for a in x]


def _operators(rois, g, offset, pooled, shape, gamma, slopes=False):
    """Yield (first box, last box + 1, operator or (operator, d/dx, d/dy)) for chunks of boxes.

    The boxes are sampled on grid ``g``, every bin shifted by its offset.
    """
    (pooled_h, pooled_w), (_, h, w) = pooled, shape
    ct = rois.dtype.type
    y, x = _bin_axes(g, offset, pooled, gamma)
    cost = _sampling.samples_bound(*y, h) * _sampling.samples_bound(*x, w)
    for k0, k1 in _sampling.chunks(cost.reshape(len(rois), pooled_h * pooled_w).sum(1)):
        ys = _sampling.axis_taps(*(a[k0:k1].ravel() for a in y), h)
        xs = _sampling.axis_taps(*(a[k0:k1].ravel() for a in x), w)
        box = np.repeat(np.arange(k0, k1), pooled_h * pooled_w)
        every_bin = np.arange(len(box))
        ops = _sampling.operator(
            ys,
            xs,
            every_bin,
            every_bin,
            rois[box, 0].astype(np.int64),
            g.count[box],
            shape,
            ct,
            slopes=slopes,
        )
        yield k0, k1, ops


def deform_roi_pool_forward(
    input, rois, offset, spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma
):
    n, c, h, w = input.shape
    g = _grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    x_rows = _sampling.pixels_by_channel(input.astype(rois.dtype, copy=False))
    out = np.zeros((len(rois), c, pooled_h, pooled_w), rois.dtype)
    for k0, k1, a in _operators(rois, g, offset, (pooled_h, pooled_w), (n, h, w), gamma):
        out[k0:k1] = _sampling.apply(a, x_rows, (k1 - k0, pooled_h, pooled_w))
    return out.astype(input.dtype, copy=False)


def deform_roi_pool_backward(
    grad_output, input, rois, offset, spatial_scale, sampling_ratio, gamma, deterministic=False
):
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    g = _grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    x_rows = _sampling.pixels_by_channel(input.astype(ct, copy=False))
    g_rows = _sampling.bin_rows(grad_output.astype(ct, copy=False))
    grad_rows = np.zeros((n * h * w, c), ct)
    grad_offset = None if offset is None else np.zeros((k, 2, pooled_h, pooled_w), ct)
    # d out / d offset = gamma * box size * (mean over the bin's samples of d value / d position)
    scale_x, scale_y = (ct(gamma) * g.width)[:, None, None], (ct(gamma) * g.height)[:, None, None]
    bins = pooled_h * pooled_w
    operators = _operators(
        rois, g, offset, (pooled_h, pooled_w), (n, h, w), gamma, slopes=offset is not None
    )
    for k0, k1, ops in operators:
        g_chunk = g_rows[k0 * bins : k1 * bins]
        if offset is None:
            _sampling.add_transposed(grad_rows, ops, g_chunk)
            continue
        a, d_dx, d_dy = ops
        _sampling.add_transposed(grad_rows, a, g_chunk)
        shape = (k1 - k0, pooled_h, pooled_w)
        grad_offset[k0:k1, 0] = ((d_dx @ x_rows) * g_chunk).sum(1).reshape(shape) * scale_x[k0:k1]
        grad_offset[k0:k1, 1] = ((d_dy @ x_rows) * g_chunk).sum(1).reshape(shape) * scale_y[k0:k1]
    grad = grad_rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(grad, dtype=grad_output.dtype), grad_offset
