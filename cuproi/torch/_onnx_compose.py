"""ONNX translations of the ops that no ONNX operator computes: compositions of standard ones.

Imported by :func:`cuproi.torch._onnx._register` when onnxscript's registry is (this module
imports onnxscript). Every function builds its graph in trace-only mode: Python runs once at
export, with the op's static arguments as Python values.

- ``multi_scale_roi_align``: the level of every box by cuproi's rule (its area in float64
  against the float64 thresholds of :func:`cuproi._pyramid.level_rule`), then one ``RoiAlign``
  per level on that level's boxes (``NonZero``, ``GatherND``), scattered back into box order
  (``ScatterND``).
"""

import numpy as np
import onnx_ir as ir
from onnxscript.onnx_opset import opset18 as op

from cuproi import _pyramid

INT64 = 7
DOUBLE = 11


def rois_and_indices(rois):
    """ONNX's (K, 4) boxes and (K,) int64 batch indices from (K, 5) boxes."""
    indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64)
    return op.Slice(rois, [1], [5], [1]), indices


def roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """``RoiAlign`` of (K, 5) boxes: cuproi's avg mode (onnxruntime's kernel is torchvision's)."""
    boxes, indices = rois_and_indices(rois)
    if aligned and sampling_ratio <= 0:
        # A flipped side gives no samples (zeros) in cuproi, but a negative sample count, which
        # overflows, in onnxruntime: it is made zero-size, which gives the same zeros there.
        start = op.Slice(boxes, [0], [2], [1])
        boxes = op.Concat(start, op.Max(op.Slice(boxes, [2], [4], [1]), start), axis=1)
    return op.RoiAlign(
        input,
        boxes,
        indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_h,
        output_width=pooled_w,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )


def constant(value, dtype):
    """A constant tensor of ``value`` in numpy ``dtype``."""
    return op.Constant(value=ir.tensor(np.asarray(value, dtype)))


def column(rois, j):
    """Column ``j`` of a (K, M) tensor, as (K,)."""
    return op.Squeeze(op.Slice(rois, [j], [j + 1], [1]), [1])


def box_levels(rois, thresholds):
    """(K,) int64 level of every box: how many of the float64 ``thresholds`` its area reaches.

    The area ``(x2 - x1) * (y2 - y1)`` is computed in float64 from the box coordinates, as the
    backends compute it (cuproi/_cpu/multi_scale_roi_align.py).
    """
    r = op.Cast(rois, to=DOUBLE)
    area = op.Mul(op.Sub(column(r, 3), column(r, 1)), op.Sub(column(r, 4), column(r, 2)))
    reached = [
        op.Cast(op.GreaterOrEqual(area, constant(t, np.float64)), to=INT64) for t in thresholds
    ]
    levels = reached[0]
    for more in reached[1:]:
        levels = op.Add(levels, more)
    return levels


def multi_scale_roi_align(
    features,
    rois,
    pooled_h: int,
    pooled_w: int,
    spatial_scales,
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
):
    """cuproi::multi_scale_roi_align: one ``RoiAlign`` per level on the boxes of that level."""
    count = _pyramid.count_levels(list(features), "features")
    rule = canonical_scale, canonical_level
    scales, thresholds = _pyramid.level_rule(spatial_scales, count, np.float32, *rule)
    options = pooled_h, pooled_w
    if count == 1:
        return roi_align(features[0], rois, *options, scales[0], sampling_ratio, aligned)
    levels = box_levels(rois, thresholds)
    # Zeros of the output's shape (K, C, PH, PW), then each level's rows written in place.
    k, c = op.Shape(rois, start=0, end=1), op.Shape(features[0], start=1, end=2)
    shape = op.Concat(k, c, constant([pooled_h, pooled_w], np.int64), axis=0)
    out = op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]), shape)
    for level, (x, scale) in enumerate(zip(features, scales, strict=True)):
        at = op.Transpose(op.NonZero(op.Equal(levels, level)))  # (K_l, 1) rows of the level
        picked = op.GatherND(rois, at)
        pooled = roi_align(x, picked, *options, scale, sampling_ratio, aligned)
        out = op.ScatterND(out, at, pooled)
    return out


def register(registration):
    """Register the translations of this module in onnxscript's registry ``registration``."""
    registration.torch_op("cuproi::multi_scale_roi_align", trace_only=True)(multi_scale_roi_align)
