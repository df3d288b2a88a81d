"""Deformable RoI Pooling on the CPU: every bin has its own (shifted) sampling rows."""

import numpy as np

from cuproi import _results
from cuproi._cpu import _box_gradients, _geometry, _sampling, _scratch


def _cost(axes, shape):
    """Bound on the operator entries of every box, (K,)."""
    (y, x), (_, h, w) = axes, shape
    cost = _sampling.samples_bound(*y, h) * _sampling.samples_bound(*x, w)
    return cost.sum(axis=(1, 2))  # (K, PH, PW) -> (K,)


def _bins(rois, g, axes):
    """``(rois, g, axes)`` with every bin a box of its own, in (box, ph, pw) order.

    See _sampling.too_large: each bin keeps its own sampling rows and columns, and so its
    operator row.
    """
    bins = axes[0][0][0].size
    y, x = ([a.reshape(-1, 1, 1) for a in axis] for axis in axes)
    g = type(g)(*(np.repeat(a, bins) for a in g))
    return np.repeat(rois, bins, axis=0), g, (y, x)


def _operator(rois, g, axes, shape, k0, k1, slopes=False, pixels=None):
    """Operator of boxes ``k0:k1`` (or (operator, d/dx, d/dy)), one row per bin in C order.

    ``axes`` are the bins' (shifted) sampling rows and columns, from _geometry.bin_axes; the
    columns are every pixel, or the rows of ``pixels`` (_sampling.pixels_read, reached).
    """
    (y, x), (_, h, w) = axes, shape
    ys = _sampling.axis_taps(*(a[k0:k1].ravel() for a in y), h)
    xs = _sampling.axis_taps(*(a[k0:k1].ravel() for a in x), w)
    box = np.repeat(np.arange(k0, k1), y[0][0].size)
    every_bin = np.arange(len(box))
    return _sampling.operator(
        ys,
        xs,
        every_bin,
        every_bin,
        rois[box, 0].astype(np.int64),
        g.count[box],
        shape,
        rois.dtype.type,
        slopes=slopes,
        pixels=pixels,
    )


def _dot(operator, x_rows, g_rows, part):
    """``<g, operator @ X>`` of every bin (a row of ``g_rows``), over the channels, as ``part``."""
    return np.einsum("ij,ij->i", operator @ x_rows, g_rows).reshape(part)


def deform_roi_pool(
    input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask=None
):
    pooled_h, pooled_w = output_size
    n, c, h, w = input.shape
    shape = (n, h, w)
    g = _geometry.deform_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    axes = _geometry.bin_axes(g, offset, (pooled_h, pooled_w), gamma)
    # float16 is computed in float32, converted as it is copied.
    pixels = _sampling.pixels_read(
        input, _sampling.reach(rois[:, 0], axes[0][:2], axes[1][:2], shape), rois.dtype
    )
    out = _results.empty(np, (len(rois), c, pooled_h, pooled_w), rois.dtype)
    target, cost = out, _cost(axes, shape)
    if _sampling.too_large(cost):  # every bin a box: (K * PH * PW, C, 1, 1)
        rois, g, axes = _bins(rois, g, axes)
        target, cost = np.empty((len(rois), c, 1, 1), rois.dtype), _cost(axes, shape)

    def operator(k0, k1):
        return _operator(rois, g, axes, shape, k0, k1, pixels=pixels)

    parts = _sampling.parts(cost, _sampling.work_per_entry(c, bound=True))
    _sampling.forward(parts, operator, pixels, target, out)
    if mask is not None:  # modulated (DCNv2): every bin's average times its mask
        out *= mask
    return out.astype(input.dtype, copy=False)


def deform_roi_pool_backward(
    grad_output,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    mask=None,
    *,
    deterministic=False,
    channels_last=False,
):
    """``(grad_input, grad_offset, grad_mask)``, None for an absent offset or mask."""
    n, c, h, w = input.shape
    shape = (n, h, w)
    k, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    # out = mask * average: d / d mask = <g, average>; the rest sees g * mask.
    plain_rows = _sampling.BinRows(grad_output, ct)
    g_rows = plain_rows if mask is None else _sampling.BinRows(grad_output, ct, scale=mask)
    grad_mask = None if mask is None else _results.empty(np, (k, 1, pooled_h, pooled_w), ct)
    g = _geometry.deform_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    axes = _geometry.bin_axes(g, offset, (pooled_h, pooled_w), gamma)
    cells = _sampling.reach(rois[:, 0], axes[0][:2], axes[1][:2], shape)
    if offset is not None or mask is not None:  # the features, for those gradients
        pixels = _sampling.pixels_read(input, cells, ct)
        x_rows = pixels.rows
    else:
        pixels = _sampling.pixels_reached(cells, shape, c)
    cost, pooled = _cost(axes, shape), (pooled_h, pooled_w)
    if _sampling.too_large(cost):  # every bin a box, in the order of the gradient's rows
        rois, g, axes = _bins(rois, g, axes)
        cost, pooled = _cost(axes, shape), (1, 1)
    units, bins = len(rois), pooled[0] * pooled[1]
    grad_offset = None if offset is None else _results.zeros(np, (units, 2, *pooled), ct)
    if grad_mask is not None:  # (K, 1, PH, PW) as the rows of its bins
        grad_mask = grad_mask.reshape(units, 1, *pooled)
    # d out / d offset = gamma * box size * (mean over the bin's samples of d value / d position)
    scale_x, scale_y = (ct(gamma) * g.width)[:, None, None], (ct(gamma) * g.height)[:, None, None]

    def run(k0, k1):
        """The operator of boxes k0:k1, after their offset and mask gradients."""
        if offset is None:
            a = _operator(rois, g, axes, shape, k0, k1, pixels=pixels)
        else:
            a, d_dx, d_dy = _operator(rois, g, axes, shape, k0, k1, slopes=True, pixels=pixels)
        if offset is None and mask is None:
            return a
        # By pieces of boxes (see _sampling.APPLY): rows of the operators, boxes p0:p1.
        for q0, q1 in _sampling.chunks(np.full(k1 - k0, bins * c), _sampling.APPLY):
            rows, part = slice(q0 * bins, q1 * bins), (q1 - q0, *pooled)
            p0, p1 = k0 + q0, k0 + q1
            if offset is not None:
                g_part = g_rows(p0 * bins, p1 * bins)
                grad_offset[p0:p1, 0] = _dot(d_dx[rows], x_rows, g_part, part) * scale_x[p0:p1]
                grad_offset[p0:p1, 1] = _dot(d_dy[rows], x_rows, g_part, part) * scale_y[p0:p1]
            if mask is not None:  # the unmodulated average is this very operator's A @ X
                g_part = plain_rows(p0 * bins, p1 * bins)
                grad_mask[p0:p1, 0] = _dot(a[rows], x_rows, g_part, part)
        return a

    grad = _sampling.input_gradient(
        input.shape,
        grad_output.dtype,
        bins,
        _sampling.parts(cost, _sampling.work_per_entry(c, bound=True)),
        run,
        g_rows,
        pixels,
        channels_last,
    )
    if pixels.rows is not None:
        _scratch.give(pixels.rows)
    if grad_mask is not None:
        grad_mask = grad_mask.reshape(k, 1, pooled_h, pooled_w)
    if grad_offset is not None and units != k:  # the bins' (x, y) rows as (K, 2, PH, PW)
        grad_offset = np.ascontiguousarray(
            grad_offset.reshape(k, pooled_h, pooled_w, 2).transpose(0, 3, 1, 2)
        )
    return grad, grad_offset, grad_mask


def deform_roi_pool_box_backward(
    grad_output,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    mask=None,
    *,
    deterministic=False,
):
    """The (K, 5) gradient with respect to the boxes."""
    pooled = grad_output.shape[2:]
    g = _geometry.deform_grid(rois, spatial_scale, *pooled, sampling_ratio)
    y, x = _geometry.bin_axes(g, offset, pooled, gamma)
    ct = rois.dtype.type
    shift = None if offset is None else (ct(gamma) * offset[:, 0], ct(gamma) * offset[:, 1])
    free = (np.ones(len(rois), bool), np.ones(len(rois), bool))
    return _box_gradients.box_gradient(
        grad_output, input, rois, g, y, x, spatial_scale, shift, free, mask
    )
