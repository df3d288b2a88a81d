"""The feature pyramid of multi_scale_roi_align: its levels, scales and level rule, checked.

Shared by :mod:`cuproi.multi_scale_roi_align` and the torch adapter, which checks its
arguments before its op runs.
"""

import math
import numbers

import numpy as np

from cuproi import _validate

# Levels the fused kernels take: FPN detectors use 4 or 5 (P2-P5, P2-P6).
MAX_LEVELS = 8
# torchvision's LevelMapper adds this to the level before the floor (outside the log2).
LEVEL_EPS = 1e-6

MAX_CANONICAL_LEVEL = 64
"""Largest ``abs(canonical_level)``: 64.

Level ``k`` has stride ``2**k`` pixels, and FPN's levels are 2 to 6. A canonical level beyond
+-64 is a mistake that would send every box to one end of the pyramid (10**400 even to the
wrong end, its thresholds being out of float64's range): it raises ValueError instead.
"""

MAX_CANONICAL_SCALE = 2.0**20
"""Largest ``canonical_scale``: 2**20 pixels.

The side of a box pooled from ``canonical_level``, 224 in FPN; 2**20 pixels is far beyond any
image. A larger one raises ValueError.
"""


def level_scales(spatial_scales, count):
    """One positive finite float per level (cuproi.torch checks them before its op too)."""
    if isinstance(spatial_scales, (str, bytes)) or not hasattr(spatial_scales, "__len__"):
        raise TypeError(
            f"spatial_scales must be a sequence of floats, one per level; got {spatial_scales!r}"
        )
    if len(spatial_scales) != count:
        raise ValueError(
            f"spatial_scales must hold one scale per level of features ({count}); "
            f"got {len(spatial_scales)}"
        )
    return [
        _validate.spatial_scale(s, f"spatial_scales[{i}]") for i, s in enumerate(spatial_scales)
    ]


def canonical(canonical_scale, canonical_level):
    """The level rule's constants: a float in (0, MAX_CANONICAL_SCALE], an int within +-64."""
    limit = f"{MAX_CANONICAL_SCALE:.0f} pixels (MAX_CANONICAL_SCALE)"
    size = _validate.positive(canonical_scale, "canonical_scale", MAX_CANONICAL_SCALE, limit)
    level = _validate.integer(canonical_level, "canonical_level")
    if abs(level) > MAX_CANONICAL_LEVEL:
        raise ValueError(
            f"canonical_level must be within +-{MAX_CANONICAL_LEVEL} (MAX_CANONICAL_LEVEL; "
            f"level k has stride 2**k); got {_validate.shown(level)}"
        )
    return size, level


def level_rule(spatial_scales, count, dtype, canonical_scale, canonical_level):
    """Validated scales (floats) and the area thresholds of levels 1.. (float64)."""
    scales = level_scales(spatial_scales, count)
    ct = _validate.compute_dtype(dtype)
    for s in scales:
        if not 0 < ct.type(s) < np.inf:
            raise ValueError(
                f"spatial_scales value {s} is not a positive {ct} (the compute dtype of "
                f"{np.dtype(dtype)} features)"
            )
    k = [round(-math.log2(s)) for s in scales]
    if k != list(range(k[0], k[0] + count)):
        raise ValueError(
            "spatial_scales must halve from each level to the next, finest first (e.g. "
            f"[1/4, 1/8, 1/16, 1/32]); got {list(spatial_scales)}, i.e. levels "
            f"{k} (-log2 of the scales, rounded)"
        )
    size, level = canonical(canonical_scale, canonical_level)
    return scales, tuple(threshold(size, k[0] + j - level) for j in range(1, count))


def threshold(canonical_scale, k):
    """Box area from which LevelMapper's level reaches ``canonical_level + k``, in float64."""
    try:
        return (canonical_scale * 2.0 ** (k - LEVEL_EPS)) ** 2
    except OverflowError:  # an absurd canonical_level: no box reaches the level
        return math.inf


def level_features(xp, features):
    """Validated per-level features: same dtype, batch size and channels."""
    levels = [
        _validate.features(xp, x, f"features[{i}]", channels_last=True)
        for i, x in enumerate(features)
    ]
    n, c = levels[0].shape[:2]
    for i, x in enumerate(levels[1:], start=1):
        if x.dtype != levels[0].dtype:
            raise TypeError(
                f"features must share one dtype; features[0] is {levels[0].dtype}, "
                f"features[{i}] is {x.dtype}"
            )
        if x.shape[:2] != (n, c):
            raise ValueError(
                f"every level must have the same batch size and channels (N, C); features[0] "
                f"has {(n, c)}, features[{i}] has {x.shape[:2]} (shape {x.shape})"
            )
    return levels


def count_levels(levels, name):
    """Number of levels in ``levels``, a list of 1 to MAX_LEVELS entries (``name`` names it)."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (list, tuple)):
        got = type(levels).__name__
        if hasattr(levels, "shape"):  # one array for the whole list: name its shape, not values
            got = f"an array of shape {tuple(levels.shape)}"
        raise TypeError(f"{name} must be a list with one entry per pyramid level; got {got}")
    if levels and isinstance(levels[0], numbers.Integral):
        raise TypeError(
            f"{name} must be a list with one (N, C, H, W) shape per level; got one shape {levels}"
        )
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"{name} must hold 1 to {MAX_LEVELS} levels; got {len(levels)}")
    return len(levels)


def gradient_shapes(input_shapes):
    """The (N, C, H, W) of every level's gradient, checked.

    Every level has one batch size and channel count, and all of them together stay within
    MAX_OUTPUT_ELEMENTS (the GPU's gradients share one buffer).
    """
    shapes = [_validate.input_shape(s, f"input_shapes[{i}]") for i, s in enumerate(input_shapes)]
    total = sum(math.prod(s) for s in shapes)
    _validate.result_shape((total,), "input_shapes (all levels together)")
    for i, s in enumerate(shapes[1:], start=1):
        if s[:2] != shapes[0][:2]:
            raise ValueError(
                f"every level must have the same batch size and channels (N, C); "
                f"input_shapes[0] has {shapes[0][:2]}, input_shapes[{i}] has {s[:2]}"
            )
    return shapes
