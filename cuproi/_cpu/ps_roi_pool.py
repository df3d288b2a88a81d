"""Position-sensitive RoI Pool on the CPU.

The average of every quantized bin as a sparse operator (a bin's weights are the outer product
of its row and column indicators over its area), applied per bin to that bin's score maps (_ps).
"""

import numpy as np

from cuproi._cpu import _ps, _sampling
from cuproi._cpu.roi_pool import _bins


def _indicator(lo, hi):
    """AxisTaps of ranges [lo, hi) (rows in C order): weight 1 on every cell of the range."""
    lo, n = lo.ravel(), (hi - lo).ravel()
    ptr = np.concatenate([[0], np.cumsum(n)])
    row = np.repeat(np.arange(len(n)), n)
    index = lo[row] + (np.arange(ptr[-1]) - ptr[row])
    ones = np.ones(len(index))
    return _sampling.AxisTaps(ptr, index, ones, np.zeros_like(ones))


def _operators(rois, shape, spatial_scale, pooled_h, pooled_w):
    """Sparse averaging operators of the chunks of boxes, rows ordered (ph, pw, box)."""
    _, h, w = shape
    h0, h1, w0, w1 = _bins(rois, spatial_scale, pooled_h, pooled_w, h, w, inclusive=False)
    rows, cols = h1 - h0, w1 - w0
    cost = rows.sum(1) * cols.sum(1)

    def build(k0, k1):
        box, ph, pw = _ps.bin_order(k1 - k0, pooled_h, pooled_w)
        area = rows[k0:k1][box, ph] * cols[k0:k1][box, pw]
        return _sampling.operator(
            _indicator(h0[k0:k1], h1[k0:k1]),
            _indicator(w0[k0:k1], w1[k0:k1]),
            y_of_bin=box * pooled_h + ph,
            x_of_bin=box * pooled_w + pw,
            image_of_bin=rois[k0:k1, 0].astype(np.int64)[box],
            count_of_bin=np.maximum(area, 1),  # an empty bin has no entries: it gives 0
            shape=shape,
            dtype=rois.dtype,
        )

    return _ps.chunked(cost, build)


def ps_roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    n, _, h, w = input.shape
    x = input.astype(rois.dtype, copy=False)  # float16 is computed in float32
    maps = _ps.score_maps(x, pooled_h, pooled_w)
    ops = _operators(rois, (n, h, w), spatial_scale, pooled_h, pooled_w)
    return _ps.forward(ops, maps, len(rois), pooled_h, pooled_w, input.dtype)


def ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale, deterministic=False):
    n, _, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    ops = _operators(rois, (n, h, w), spatial_scale, pooled_h, pooled_w)
    return _ps.backward(ops, grad_output, input_shape, rois.dtype)
