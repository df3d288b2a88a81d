"""Multi-level (FPN) RoI Align's launches (kernels/multi_scale_roi_align.cu).

One launch for all levels, forward and backward.
"""

import numpy as np

from cuproi import _results
from cuproi._cuda._launch import GradSum, Index, ints

LEVELS = 8  # levels the fused kernels take (kernels/multi_scale_roi_align.cu)


def _pyramid(shapes, spatial_scales, thresholds, ct):
    """The per-level scalars (h0..h7, w0..w7, s0..s7, t1..t7) of the kernels.

    Unused levels repeat level 0 and their thresholds are +inf, so no box is assigned to them.
    """
    pad = LEVELS - len(shapes)
    heights = [s[2] for s in shapes] + [shapes[0][2]] * pad
    widths = [s[3] for s in shapes] + [shapes[0][3]] * pad
    scales = [ct(s) for s in spatial_scales] + [ct(spatial_scales[0])] * pad
    limits = [np.float64(t) for t in thresholds] + [np.float64(np.inf)] * pad
    return (*ints(*heights), *ints(*widths), *scales, *limits)


def multi_scale_roi_align(
    device, features, rois, output_size, spatial_scales, sampling_ratio, aligned, thresholds
):
    features = [device.nchw(x) for x in features]
    n, c = features[0].shape[:2]
    dtype = features[0].dtype
    out = _results.empty(device.xp, (len(rois), c, *output_size), dtype)
    slots = list(features) + [features[0]] * (LEVELS - len(features))
    args = (
        *slots,
        rois,
        *ints(n, c, *output_size, sampling_ratio, aligned),
        *_pyramid([f.shape for f in features], spatial_scales, thresholds, rois.dtype.type),
        out,
    )
    device.run("multi_scale_roi_align", "forward", dtype, out.size, *args)
    return out


def multi_scale_roi_align_backward(
    device,
    grad_output,
    rois,
    input_shapes,
    spatial_scales,
    sampling_ratio,
    aligned,
    thresholds,
    *,
    deterministic=False,
):
    """Every level's gradient summed into one buffer in one launch, returned as views of it."""
    n, c = input_shapes[0][:2]
    sizes = [int(np.prod(s)) for s in input_shapes]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    grad = GradSum(device, (int(starts[-1]),), rois.dtype, grad_output, deterministic)
    offsets = [int(s) for s in starts[:-1]] + [0] * (LEVELS - len(input_shapes))
    args = (
        grad_output,
        rois,
        *ints(n, c, *grad_output.shape[2:], sampling_ratio, aligned),
        *_pyramid(input_shapes, spatial_scales, thresholds, rois.dtype.type),
        *map(Index, offsets),
        *grad.args(),
    )
    device.run("multi_scale_roi_align", "backward", grad_output.dtype, grad_output.size, *args)
    flat = grad.result(grad_output.dtype)
    return [flat[starts[i] : starts[i + 1]].reshape(shape) for i, shape in enumerate(input_shapes)]
