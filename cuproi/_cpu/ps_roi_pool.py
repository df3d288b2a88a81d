"""Position-sensitive RoI Pool on the CPU.

The average of every quantized bin as a sparse operator (a bin's weights are the outer product
of its row and column ranges of cells, over its area), applied per row of bins to that row's
score maps (_ps).
"""

import numpy as np

from cuproi._cpu import _geometry, _ps


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w):
    """The cells of every bin row and column, each bin's area and each box's cost (_ps.Plan)."""
    _, h, w = shape
    bins = _geometry.pool_bins(rois, spatial_scale, pooled_h, pooled_w, h, w, inclusive=False)
    h0, h1, w0, w1 = bins
    rows, cols = h1 - h0, w1 - w0
    return _ps.Plan(
        ys=_ps.Ranges(h0.ravel(), h1.ravel()),
        xs=_ps.Ranges(w0.ravel(), w1.ravel()),
        image=rois[:, 0].astype(np.int64),
        count=np.maximum(rows[:, :, None] * cols[:, None, :], 1),  # an empty bin gives 0
        cost=rows.max(1) * cols.max(1),
        shape=shape,
        dtype=rois.dtype,  # float16 is computed in float32
    )


def ps_roi_pool(input, rois, output_size, spatial_scale):
    n, _, h, w = input.shape
    return _ps.forward(input, _plan(rois, (n, h, w), spatial_scale, *output_size))


def ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale, *, deterministic=False):
    n, _, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    plan = _plan(rois, (n, h, w), spatial_scale, pooled_h, pooled_w)
    return _ps.backward(grad_output, plan, input_shape)
