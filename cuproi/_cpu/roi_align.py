"""RoI Align on the CPU: the sparse sampling operator of _sampling, chunked over boxes.

Boxes are processed in chunks that bound the operator's memory (``_sampling.chunks``); each
chunk is split again into ranges of boxes whose operators are built and applied by the
backend's threads (``_parallel``).
"""

import numpy as np

from cuproi._cpu import _geometry, _parallel, _sampling, _scratch, roi_align_max


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Per-box sampling rows along y (K, PH) and x (K, PW), and the cost of every box.

    Returns ``(y, x, count, cost)``: ``y`` and ``x`` are the (start, bin size, samples) of
    every bin row and column, ``count`` the divisor of each box's averages, and ``cost`` a
    bound on the entries of each box's operator.
    """
    _, h, w = shape
    ct = rois.dtype.type
    g = _geometry.roi_align_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    # Bin rows along y are (box, ph), along x (box, pw): every bin of a box row shares them.
    y = (
        g.start_y[:, None] + np.arange(pooled_h, dtype=ct) * g.bin_h[:, None],
        np.repeat(g.bin_h[:, None], pooled_h, 1),
        np.repeat(g.grid_h[:, None], pooled_h, 1),
    )
    x = (
        g.start_x[:, None] + np.arange(pooled_w, dtype=ct) * g.bin_w[:, None],
        np.repeat(g.bin_w[:, None], pooled_w, 1),
        np.repeat(g.grid_w[:, None], pooled_w, 1),
    )
    cost = _sampling.samples_bound(*y, h).sum(1) * _sampling.samples_bound(*x, w).sum(1)
    return y, x, g.count, cost


def _reach(rois, plan, shape):
    """The cells every box's samples may read (_sampling.reach)."""
    y, x = plan[:2]
    return _sampling.reach(rois[:, 0], y[:2], x[:2], shape)


def _operator(rois, plan, shape, k0, k1, pixels=None):
    """Sparse operator of boxes ``k0:k1``: one row per bin, (box, ph, pw) in C order.

    Its columns are every pixel, or the rows of ``pixels`` (_sampling.pixels_read, reached).
    """
    _, h, w = shape
    y, x, count, _ = plan
    pooled_h, pooled_w = y[0].shape[1], x[0].shape[1]
    ys = _sampling.axis_taps(*(a[k0:k1].ravel() for a in y), h)
    xs = _sampling.axis_taps(*(a[k0:k1].ravel() for a in x), w)
    box = np.repeat(np.arange(k1 - k0), pooled_h * pooled_w)
    ph, pw = np.meshgrid(np.arange(pooled_h), np.arange(pooled_w), indexing="ij")
    return _sampling.operator(
        ys,
        xs,
        y_of_bin=box * pooled_h + np.tile(ph.ravel(), k1 - k0),
        x_of_bin=box * pooled_w + np.tile(pw.ravel(), k1 - k0),
        image_of_bin=rois[k0:k1, 0].astype(np.int64)[box],
        count_of_bin=count[k0:k1][box],
        shape=shape,
        dtype=rois.dtype,
        pixels=pixels,
    )


def _bins(rois, plan, shape):
    """``(rois, plan)`` with every bin a box of its own (_sampling.every_bin_a_box)."""
    _, h, w = shape
    y, x, count, _ = plan
    bins = y[0].shape[1] * x[0].shape[1]
    y, x = _sampling.every_bin_a_box(y, x)
    # A bin's samples lie within its extent, so its taps along an axis are at most the cells
    # the extent meets: a bound four times as tight as samples_bound's for a big bin.
    taps_y, taps_x = (
        np.minimum(_sampling.samples_bound(*a, size)[:, 0], np.ceil(np.abs(a[1][:, 0])) + 2)
        for a, size in ((y, h), (x, w))
    )
    return np.repeat(rois, bins, axis=0), (y, x, np.repeat(count, bins), taps_y * taps_x)


def roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode="avg"):
    if pool_mode == "max":
        return roi_align_max.forward(
            input, rois, spatial_scale, *output_size, sampling_ratio, aligned
        )
    pooled_h, pooled_w = output_size
    n, c, h, w = input.shape
    shape = (n, h, w)
    out = np.empty((len(rois), c, pooled_h, pooled_w), rois.dtype)
    plan = _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    # float16 is computed in float32, converted as it is copied.
    pixels = _sampling.pixels_read(input, _reach(rois, plan, shape), rois.dtype)
    target = out
    if _sampling.too_large(plan[-1]):  # every bin a box: (K * PH * PW, C, 1, 1)
        rois, plan = _bins(rois, plan, shape)
        target = np.empty((len(rois), c, 1, 1), rois.dtype)

    def run(k0, k1):  # every bin is one row of A @ X: no range depends on another
        a = _operator(rois, plan, shape, k0, k1, pixels)
        _sampling.apply(a, pixels.rows, target[k0:k1])

    for parts in _sampling.parts(plan[-1], _sampling.work_per_entry(c, bound=True)):
        _parallel.map_ordered(lambda r: run(*r), parts)
    _scratch.give(pixels.rows)
    if target is not out:
        _sampling.bins_to_boxes(target, out)
    return out.astype(input.dtype, copy=False)


def roi_align_backward(
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    input=None,
    deterministic=False,
    channels_last=False,
):
    """The input gradient (the max mode reads the features ``input``)."""
    if pool_mode == "max":
        args = (grad_output, input, rois, spatial_scale, sampling_ratio, aligned)
        return roi_align_max.backward(*args, channels_last=channels_last)
    n, c, h, w = input_shape
    shape = (n, h, w)
    _, _, pooled_h, pooled_w = grad_output.shape
    g_rows = _sampling.bin_rows(grad_output.astype(rois.dtype, copy=False))
    plan = _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    pixels = _sampling.pixels_reached(_reach(rois, plan, shape), shape, c)
    bins = pooled_h * pooled_w
    if _sampling.too_large(plan[-1]):  # every bin a box, in the order of the gradient's rows
        rois, plan = _bins(rois, plan, shape)
        bins = 1
    return _sampling.input_gradient(
        input_shape,
        grad_output.dtype,
        bins,
        _sampling.parts(plan[-1], _sampling.work_per_entry(c, bound=True)),
        lambda k0, k1: _operator(rois, plan, shape, k0, k1, pixels),
        g_rows,
        pixels,
        channels_last,
    )


def roi_align_box_backward(
    grad_output,
    input,
    rois,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    deterministic=False,
):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    args = (grad_output, input, rois, spatial_scale, sampling_ratio, aligned)
    if pool_mode == "max":
        return roi_align_max.box_backward(*args)
    from cuproi._cpu import _box_gradients  # it imports deform_roi_pool, which imports this

    return _box_gradients.roi_align(*args)
