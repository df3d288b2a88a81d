"""Multi-level (FPN) RoI Align on the CPU: boxes grouped by level, RoI Align per level.

Every box's level is computed exactly as the CUDA kernel computes it (``box_levels``); the boxes
of each level go through the CPU RoI Align of that level and the results are scattered back in
box order. The per-level calls are chunked and bounded in memory by RoI Align itself.
"""

import numpy as np

from cuproi import _results
from cuproi._cpu.roi_align import roi_align, roi_align_backward


def box_levels(rois, thresholds):
    """Pyramid level (0 = finest) of every box of a (K, 5) array.

    The area ``(x2 - x1) * (y2 - y1)`` is computed in float64 from the box coordinates and
    compared with the ascending ``thresholds`` (one per level after the first): the level is the
    number of thresholds it reaches. These are the very operations of the kernel
    (kernels/multi_scale_roi_align.cu), so both backends agree on every box.
    """
    r = rois.astype(np.float64, copy=False)
    area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    levels = np.zeros(len(rois), np.int64)
    for t in thresholds:
        levels += area >= t
    return levels


def multi_scale_roi_align(
    features, rois, output_size, spatial_scales, sampling_ratio, aligned, thresholds
):
    _, c = features[0].shape[:2]
    out = _results.zeros(np, (len(rois), c, *output_size), features[0].dtype)
    levels = box_levels(rois, thresholds)
    for level, (x, scale) in enumerate(zip(features, spatial_scales, strict=True)):
        idx = np.flatnonzero(levels == level)
        if idx.size:
            out[idx] = roi_align(x, rois[idx], output_size, scale, sampling_ratio, aligned)
    return out


def multi_scale_roi_align_backward(
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
    levels = box_levels(rois, thresholds)
    grads = []
    for level, (shape, scale) in enumerate(zip(input_shapes, spatial_scales, strict=True)):
        idx = np.flatnonzero(levels == level)
        if idx.size:
            g = np.ascontiguousarray(grad_output[idx])
            grads.append(roi_align_backward(g, rois[idx], shape, scale, sampling_ratio, aligned))
        else:
            grads.append(_results.zeros(np, shape, grad_output.dtype))
    return grads
