"""RoI Align on the CPU: the sparse sampling operator of _sampling, chunked over boxes."""

import numpy as np

from cuproi._cpu import _sampling


def _operators(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Yield (first box, last box + 1, sparse operator) for chunks of boxes."""
    n, h, w = shape
    ct = rois.dtype.type
    g = _sampling.make_grid(
        rois,
        spatial_scale,
        pooled_h,
        pooled_w,
        sampling_ratio,
        0.5 if aligned else 0.0,
        not aligned,
    )
    # Bin rows along y are (box, ph), along x (box, pw): every bin of a box row shares them.
    y_start = g.start_y[:, None] + np.arange(pooled_h, dtype=ct) * g.bin_h[:, None]
    x_start = g.start_x[:, None] + np.arange(pooled_w, dtype=ct) * g.bin_w[:, None]
    y_bin = np.repeat(g.bin_h[:, None], pooled_h, 1)
    x_bin = np.repeat(g.bin_w[:, None], pooled_w, 1)
    y_grid = np.repeat(g.grid_h[:, None], pooled_h, 1)
    x_grid = np.repeat(g.grid_w[:, None], pooled_w, 1)
    cost = _sampling.samples_bound(y_start, y_bin, y_grid, h).sum(1) * _sampling.samples_bound(
        x_start, x_bin, x_grid, w
    ).sum(1)
    ph, pw = np.meshgrid(np.arange(pooled_h), np.arange(pooled_w), indexing="ij")
    for k0, k1 in _sampling.chunks(cost):
        ys = _sampling.axis_taps(*(a[k0:k1].ravel() for a in (y_start, y_bin, y_grid)), h)
        xs = _sampling.axis_taps(*(a[k0:k1].ravel() for a in (x_start, x_bin, x_grid)), w)
        box = np.repeat(np.arange(k1 - k0), pooled_h * pooled_w)
        a = _sampling.operator(
            ys,
            xs,
            y_of_bin=box * pooled_h + np.tile(ph.ravel(), k1 - k0),
            x_of_bin=box * pooled_w + np.tile(pw.ravel(), k1 - k0),
            image_of_bin=rois[k0:k1, 0].astype(np.int64)[box],
            count_of_bin=g.count[k0:k1][box],
            shape=shape,
            dtype=ct,
        )
        yield k0, k1, a


def roi_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    n, c, h, w = input.shape
    x = input.astype(rois.dtype, copy=False)  # float16 is computed in float32
    out = np.zeros((len(rois), c, pooled_h, pooled_w), rois.dtype)
    x_rows = _sampling.pixels_by_channel(x)
    for k0, k1, a in _operators(
        rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    ):
        out[k0:k1] = _sampling.apply(a, x_rows, (k1 - k0, pooled_h, pooled_w))
    return out.astype(input.dtype, copy=False)


def roi_align_backward(
    grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned, deterministic=False
):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    g_rows = _sampling.bin_rows(grad_output.astype(rois.dtype, copy=False))
    grad_rows = np.zeros((n * h * w, c), rois.dtype)
    bins = pooled_h * pooled_w
    for k0, k1, a in _operators(
        rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    ):
        _sampling.add_transposed(grad_rows, a, g_rows[k0 * bins : k1 * bins])
    grad = grad_rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(grad, dtype=grad_output.dtype)
