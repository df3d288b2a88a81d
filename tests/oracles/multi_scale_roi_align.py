"""Float64 loop oracle for multi-level (FPN) RoI Align, from torchvision's MultiScaleRoIAlign.

Written from the published semantics (torchvision.ops.poolers.LevelMapper and
_multiscale_roi_align; FPN paper Eq. 1), not from cuproi: each box's level is

    k_min = -log2(scale_0), k_max = -log2(scale_last)
    lvl   = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)
    level = clamp(lvl, k_min, k_max) - k_min,      area = (x2 - x1) * (y2 - y1)

evaluated here with Python floats (float64 math.log2 / math.sqrt), one box at a time, and the box is
pooled by the single-level loop oracle ``oracles.roi_align.roi_align`` on that level. cuproi's
documented choice for a box of zero or negative area (torchvision: sqrt of a negative number is NaN,
which matches no level) is the finest level: a zero area has log2 = -inf, clamped to k_min."""

import math

import numpy as np

from oracles import roi_align as single_level
from oracles.sampling import checked_pair

EPS = 1e-6


def box_level(box, spatial_scales, canonical_scale=224, canonical_level=4):
    """Level index (0 = finest) of one box ``[b, x1, y1, x2, y2]`` (image coordinates)."""
    k_min = round(-math.log2(spatial_scales[0]))
    k_max = round(-math.log2(spatial_scales[-1]))
    x1, y1, x2, y2 = (float(v) for v in box[1:5])
    area = (x2 - x1) * (y2 - y1)
    if area <= 0:
        return 0
    lvl = math.floor(canonical_level + math.log2(math.sqrt(area) / canonical_scale) + EPS)
    return min(max(lvl, k_min), k_max) - k_min


def box_levels(rois, spatial_scales, canonical_scale=224, canonical_level=4):
    return np.array(
        [box_level(r, spatial_scales, canonical_scale, canonical_level) for r in rois], np.int64
    )


def multi_scale_roi_align(features, rois, output_size, spatial_scales, sampling_ratio=-1,
                          aligned=False, canonical_scale=224, canonical_level=4, *,
                          coord_dtype=np.float64):  # fmt: skip
    """(K, C, PH, PW) float64: every box pooled by the single-level oracle from its level."""
    rois = np.asarray(rois)
    levels = box_levels(rois, spatial_scales, canonical_scale, canonical_level)
    out = np.zeros((len(rois), features[0].shape[1], *checked_pair(output_size)))
    for k, level in enumerate(levels):
        box, args = rois[k : k + 1], (output_size, spatial_scales[level], sampling_ratio, aligned)
        out[k] = single_level.roi_align(features[level], box, *args, coord_dtype=coord_dtype)[0]
    return out


def multi_scale_roi_align_backward(grad_output, rois, input_shapes, output_size, spatial_scales,
                                   sampling_ratio=-1, aligned=False, canonical_scale=224,
                                   canonical_level=4, *, coord_dtype=np.float64):  # fmt: skip
    """Per-level float64 gradients: each box's gradient added to its level only."""
    rois = np.asarray(rois)
    levels = box_levels(rois, spatial_scales, canonical_scale, canonical_level)
    grads = [np.zeros(s) for s in input_shapes]
    for k, level in enumerate(levels):
        g, box = np.asarray(grad_output[k : k + 1], np.float64), rois[k : k + 1]
        args = (input_shapes[level], output_size, spatial_scales[level], sampling_ratio, aligned)
        grads[level] += single_level.roi_align_backward(g, box, *args, coord_dtype=coord_dtype)
    return grads
