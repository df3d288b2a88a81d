"""Multi-level (FPN) RoI Align: every box pooled from the pyramid level its size selects."""

import math
import numbers

import numpy as np

from cuproi import _dispatch, _validate

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

_CONVENTIONS = """
    **Level rule** (torchvision's ``MultiScaleRoIAlign``/``LevelMapper``, the FPN paper's
    Eq. 1). Level ``l`` of ``features`` has ``k_l = round(-log2(spatial_scales[l]))``; these must
    be consecutive integers ``k_min, k_min + 1, ...`` (a pyramid that halves at every level,
    finest first); the scales themselves are used for sampling. A box with area
    ``A = (x2 - x1) * (y2 - y1)`` (image coordinates) goes to
    ``clamp(floor(canonical_level + log2(sqrt(A) / canonical_scale) + 1e-6), k_min, k_max)``,
    so a box of ``canonical_scale**2`` pixels is pooled from level ``canonical_level``, one
    twice as large (per side) from the next coarser level. The rule is evaluated without a
    logarithm, by comparing ``A`` in float64 with the thresholds
    ``(canonical_scale * 2**(k - canonical_level - 1e-6))**2`` at which it steps, computed once
    in float64: that is the real-number value of torchvision's formula, and the CPU and GPU
    backends make the very same float64 operations, so they assign every box to the same
    level. torchvision evaluates the formula in the box dtype (float32 for float32 boxes), so a
    box within about 1e-7 (relative) of a step may land one level apart. A box of zero or
    negative area (a point, a line, one flipped side) goes to the finest level; torchvision's
    ``sqrt`` of a negative area is NaN, which matches no level, so there it gets zeros.

    **Difference from detectron2** (``ROIPooler``, ``assign_boxes_to_levels``): detectron2
    uses ``floor(canonical_level + log2(sqrt(A) / canonical_box_size + 1e-8))``: its epsilon
    sits inside the log and is absolute, so a box steps up to level ``k`` once
    ``sqrt(A) >= canonical_box_size * (2**(k - canonical_level) - 1e-8)``, while torchvision
    (and cuproi) need only ``sqrt(A) >= canonical_box_size * 2**(k - canonical_level) *
    2**-1e-6``, a relative tolerance of about 6.9e-7. Boxes exactly on a step agree; a box whose
    side falls short of a step by a relative 1e-8 to 6.9e-7 (e.g. ``sqrt(A) = 223.9999``
    against 224) goes one level coarser here than in detectron2. detectron2 also defaults to
    ``aligned=True`` (``ROIAlignV2``) and ``sampling_ratio=0``; torchvision hard-wires
    ``aligned=False``, which is the default here.

    Each box is then pooled exactly as :func:`cuproi.roi_align` pools it from its level (with
    that level's scale); the output is in box order. On the GPU all levels run in one kernel
    launch, with each box's level computed in the kernel: no host synchronisation, no sort or
    gather of boxes per level (torchvision runs one ``nonzero``, which synchronises, and one
    ``roi_align`` per level).
"""


def _scales(spatial_scales, count):
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


def _canonical(canonical_scale, canonical_level):
    """The level rule's constants: a float in (0, MAX_CANONICAL_SCALE], an int within +-64."""
    limit = f"{MAX_CANONICAL_SCALE:.0f} pixels (MAX_CANONICAL_SCALE)"
    size = _validate.positive(canonical_scale, "canonical_scale", MAX_CANONICAL_SCALE, limit)
    level = _validate._integer(canonical_level, "canonical_level")
    if abs(level) > MAX_CANONICAL_LEVEL:
        raise ValueError(
            f"canonical_level must be within +-{MAX_CANONICAL_LEVEL} (MAX_CANONICAL_LEVEL; "
            f"level k has stride 2**k); got {_validate.shown(level)}"
        )
    return size, level


def _levels(spatial_scales, count, dtype, canonical_scale, canonical_level):
    """Validated scales (floats) and the area thresholds of levels 1.. (float64)."""
    scales = _scales(spatial_scales, count)
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
    size, level = _canonical(canonical_scale, canonical_level)
    return scales, tuple(_threshold(size, k[0] + j - level) for j in range(1, count))


def _threshold(canonical_scale, k):
    """Box area from which LevelMapper's level reaches ``canonical_level + k``, in float64."""
    try:
        return (canonical_scale * 2.0 ** (k - LEVEL_EPS)) ** 2
    except OverflowError:  # an absurd canonical_level: no box reaches the level
        return math.inf


def _features(xp, features):
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


def _count(levels, name):
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


@_dispatch.on_input_device
def multi_scale_roi_align(
    features,
    boxes,
    output_size,
    spatial_scales,
    sampling_ratio=-1,
    aligned=False,
    canonical_scale=224,
    canonical_level=4,
):
    """Pool every box from the feature-pyramid level that fits its size (FPN RoI Align).

    Parameters
    ----------
    features : list of (N, C, H_l, W_l) arrays
        The pyramid, finest level first; float16, float32 or float64, all of one dtype, batch
        size and channel count; NumPy (CPU) or CuPy (GPU), 1 to 8 levels.
    boxes : (K, 5) array or list of (L_i, 4) arrays
        ``[batch_index, x1, y1, x2, y2]`` per box in input-image coordinates, or one
        ``[x1, y1, x2, y2]`` array per image, on the device of ``features``.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    spatial_scales : sequence of float
        Scale of every level (1 / stride), e.g. ``[1/4, 1/8, 1/16, 1/32]``: halving from one
        level to the next.
    sampling_ratio : int, optional
        Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)`` on the
        box's level.
    aligned : bool, optional
        Shift boxes by -0.5 cell (half-pixel convention). torchvision's ``MultiScaleRoIAlign``
        always uses False.
    canonical_scale : float, optional
        Box side (pixels) pooled from ``canonical_level``: 224 (ImageNet) in the FPN paper.
    canonical_level : int, optional
        Level ``k`` (stride ``2**k``) of a ``canonical_scale``-sized box: 4 in the FPN paper.

    Returns
    -------
    (K, C, PH, PW) array
        Same array type, device and dtype as ``features``; row ``k`` pooled from box ``k``'s
        level.

    Raises
    ------
    TypeError
        ``features`` not a list, levels of different dtypes, unsupported dtypes, non-integer
        sizes or ``canonical_level``.
    ValueError
        No level or more than 8, levels with different ``N`` or ``C``, one scale per level
        missing, scales that are not positive or do not halve per level, wrong box shapes,
        non-finite or fractional box values, non-positive sizes, arrays on different devices;
        sizes and scalars beyond cuproi's limits (``output_size`` above 16384 bins per side, an
        output above 2**32 elements, scales above 2**20, ``canonical_scale`` above 2**20
        pixels, ``canonical_level`` beyond +-64).
    IndexError
        A batch index outside ``[0, N)``.

    Notes
    -----
    {conventions}

    See Also
    --------
    multi_scale_roi_align_backward, roi_align

    References
    ----------
    T.-Y. Lin, P. Dollar, R. Girshick, K. He, B. Hariharan, S. Belongie, "Feature Pyramid
    Networks for Object Detection", CVPR 2017, Eq. 1.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> p2 = np.zeros((1, 1, 64, 64), np.float32)  # stride 4
    >>> p3 = np.ones((1, 1, 32, 32), np.float32)  # stride 8
    >>> boxes = np.array([[0, 0, 0, 50, 50], [0, 0, 0, 200, 200]], np.float32)
    >>> out = cuproi.multi_scale_roi_align([p2, p3], boxes, 2, [1 / 4, 1 / 8])
    >>> out[:, 0, 0, 0].round(4)  # the small box reads P2 (zeros), the large one P3 (ones)
    array([0., 1.], dtype=float32)
    """
    count = _count(features, "features")
    names = {f"features[{i}]": x for i, x in enumerate(features)}
    backend, arrays, restore = _dispatch.prepare(**names, boxes=boxes)
    *levels, b = arrays
    pooled = _validate.output_size(output_size)
    ratio = _validate.sampling_ratio(sampling_ratio)
    levels = _features(backend.xp, levels)
    dtype = levels[0].dtype
    scales, thresholds = _levels(spatial_scales, count, dtype, canonical_scale, canonical_level)
    rois = _validate.boxes(backend.xp, b, levels[0].shape[0], max(scales), dtype)
    _validate.pooled_result(len(rois), levels[0].shape[1], pooled)
    return restore(
        backend.multi_scale_roi_align(
            levels, rois, pooled, scales, ratio, _validate.flag(aligned, "aligned"), thresholds
        )
    )


def _gradient_shapes(input_shapes):
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


@_dispatch.on_input_device
def multi_scale_roi_align_backward(
    grad_output,
    boxes,
    input_shapes,
    output_size,
    spatial_scales,
    sampling_ratio=-1,
    aligned=False,
    canonical_scale=224,
    canonical_level=4,
    *,
    deterministic=False,
):
    """Gradient of :func:`multi_scale_roi_align` with respect to every level's features.

    Parameters
    ----------
    grad_output : (K, C, PH, PW) array
        Gradient of a loss with respect to the output of :func:`multi_scale_roi_align`.
    boxes : (K, 5) array or list of (L_i, 4) arrays
        The boxes of the forward call.
    input_shapes : list of tuples of 4 ints
        ``(N, C, H_l, W_l)`` of every level of the forward call, finest first.
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
        As in the forward call.
    deterministic : bool, optional
        Sum overlapping contributions in order-independent fixed point on the GPU, so that
        the gradients are bit-identical from run to run (see :func:`roi_align_backward`).

    Returns
    -------
    list of (N, C, H_l, W_l) arrays
        One gradient per level, same array type and dtype as ``grad_output``; a level that no
        box is assigned to gets zeros. On the GPU the levels are views of one buffer, filled
        by one kernel launch.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`multi_scale_roi_align`; also when ``grad_output`` does not match the boxes,
        the channels of ``input_shapes`` or ``output_size``.

    Notes
    -----
    Each box's gradient goes to its level only (the level rule of the forward); the backward
    is the exact transpose of the forward (``<multi_scale_roi_align(x), g> == sum_l <x_l,
    grad_l>``). The GPU accumulates with atomic adds by default, so the last bits may differ
    between runs; ``deterministic=True`` removes that. The CPU backend is always
    deterministic. No gradient flows to the boxes.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> boxes = np.array([[0, 0, 0, 8, 8], [0, 0, 0, 200, 200]], np.float32)
    >>> g = np.ones((2, 1, 1, 1), np.float32)
    >>> shapes = [(1, 1, 64, 64), (1, 1, 32, 32)]
    >>> grads = cuproi.multi_scale_roi_align_backward(g, boxes, shapes, 1, [1 / 4, 1 / 8])
    >>> [round(float(gl.sum()), 4) for gl in grads]  # each box's unit gradient, on its level
    [1.0, 1.0]
    """
    count = _count(input_shapes, "input_shapes")
    backend, (g, b), restore = _dispatch.prepare(grad_output=grad_output, boxes=boxes)
    shapes = _gradient_shapes(input_shapes)
    pooled = _validate.output_size(output_size)
    ratio = _validate.sampling_ratio(sampling_ratio)
    scales, thresholds = _levels(spatial_scales, count, g.dtype, canonical_scale, canonical_level)
    rois = _validate.boxes(backend.xp, b, shapes[0][0], max(scales), g.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), shapes[0][1], pooled)
    grads = backend.multi_scale_roi_align_backward(
        g,
        rois,
        shapes,
        scales,
        ratio,
        _validate.flag(aligned, "aligned"),
        thresholds,
        deterministic=_validate.flag(deterministic, "deterministic"),
    )
    return [restore(x) for x in grads]


multi_scale_roi_align.__doc__ = multi_scale_roi_align.__doc__.format(conventions=_CONVENTIONS)
