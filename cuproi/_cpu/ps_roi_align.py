"""Position-sensitive RoI Align on the CPU.

RoI Align's sparse sampling operator (_sampling), aligned and without a minimum box size,
applied per bin to that bin's score maps (_ps).
"""

import numpy as np

from cuproi._cpu import _ps, _sampling


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """Sampling rows along y (K, PH) and x (K, PW), each box's divisor, and its cost.

    ``y`` and ``x`` are the (start, bin size, samples) of every bin row and column; ``cost``
    bounds the entries of each box's operator.
    """
    _, h, w = shape
    ct = rois.dtype.type
    g = _sampling.make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, 0.5, False)
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


def _operators(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """Sparse operators of the chunks of boxes, rows ordered (ph, pw, box): see _ps."""
    _, h, w = shape
    y, x, count, cost = _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio)

    def build(k0, k1):
        ys = _sampling.axis_taps(*(a[k0:k1].ravel() for a in y), h)
        xs = _sampling.axis_taps(*(a[k0:k1].ravel() for a in x), w)
        box, ph, pw = _ps.bin_order(k1 - k0, pooled_h, pooled_w)
        return _sampling.operator(
            ys,
            xs,
            y_of_bin=box * pooled_h + ph,
            x_of_bin=box * pooled_w + pw,
            image_of_bin=rois[k0:k1, 0].astype(np.int64)[box],
            count_of_bin=count[k0:k1][box],
            shape=shape,
            dtype=rois.dtype,
        )

    return _ps.chunked(cost, build)


def ps_roi_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    n, _, h, w = input.shape
    x = input.astype(rois.dtype, copy=False)  # float16 is computed in float32
    maps = _ps.score_maps(x, pooled_h, pooled_w)
    ops = _operators(rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio)
    return _ps.forward(ops, maps, len(rois), pooled_h, pooled_w, input.dtype)


def ps_roi_align_backward(
    grad_output, rois, input_shape, spatial_scale, sampling_ratio, deterministic=False
):
    n, _, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    ops = _operators(rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio)
    return _ps.backward(ops, grad_output, input_shape, rois.dtype)
