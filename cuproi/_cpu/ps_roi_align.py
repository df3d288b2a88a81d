"""Position-sensitive RoI Align on the CPU.

RoI Align's sparse sampling operator (_sampling), aligned and without a minimum box size,
applied per row of bins to that row's score maps (_ps).
"""

import numpy as np

from cuproi._cpu import _geometry, _ps, _sampling


def _plan(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """The taps of every bin row and column, each box's divisor and its cost (_ps.Plan)."""
    _, h, w = shape
    g = _geometry.make_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, 0.5, False)
    y, x = _geometry.bin_rows(g, pooled_h, pooled_w)
    # Entries of one bin of each box: at most its largest row's taps times its largest column's.
    cost = _sampling.samples_bound(*y, h).max(1) * _sampling.samples_bound(*x, w).max(1)
    return _ps.Plan(
        ys=_sampling.axis_taps(*(a.ravel() for a in y), h),
        xs=_sampling.axis_taps(*(a.ravel() for a in x), w),
        image=rois[:, 0].astype(np.int64),
        count=np.broadcast_to(g.count[:, None, None], (len(rois), pooled_h, pooled_w)),
        cost=cost,
        shape=shape,
        dtype=rois.dtype,  # float16 is computed in float32
    )


def ps_roi_align(input, rois, output_size, spatial_scale, sampling_ratio):
    pooled_h, pooled_w = output_size
    n, _, h, w = input.shape
    plan = _plan(rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio)
    return _ps.forward(input, plan)


def ps_roi_align_backward(
    grad_output, rois, input_shape, spatial_scale, sampling_ratio, *, deterministic=False
):
    n, _, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    plan = _plan(rois, (n, h, w), spatial_scale, pooled_h, pooled_w, sampling_ratio)
    return _ps.backward(grad_output, plan, input_shape)
