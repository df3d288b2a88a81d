"""Multi-level (FPN) RoI Align: every box pooled from the pyramid level its size selects."""

from collections.abc import Sequence

from cuproi import _dispatch, _docstrings, _pyramid, _validate
from cuproi._pyramid import LEVEL_EPS as LEVEL_EPS
from cuproi._pyramid import MAX_CANONICAL_LEVEL as MAX_CANONICAL_LEVEL
from cuproi._pyramid import MAX_CANONICAL_SCALE as MAX_CANONICAL_SCALE
from cuproi._pyramid import MAX_LEVELS as MAX_LEVELS
from cuproi._types import ArrayT, Boxes, OutputSize, Shape

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


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS)
def multi_scale_roi_align(
    features: Sequence[ArrayT],
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> ArrayT:
    """Pool every box from the feature-pyramid level that fits its size (FPN RoI Align).

    Parameters
    ----------
    features : list of (N, C, H_l, W_l) arrays
        The pyramid, finest level first; float16, float32 or float64, all of one dtype, batch
        size and channel count; NumPy (CPU) or CuPy (GPU), 1 to 8 levels.
    boxes : (K, 5) array or list of (L_i, 4) arrays
        ``[batch_index, x1, y1, x2, y2]`` per box in input-image coordinates, or one
        ``[x1, y1, x2, y2]`` array per image, on the device of ``features``.
    {output_size}
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
    {index_error}

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
    >>> p2 = np.zeros((1, 1, 64, 64), np.float32)  # stride 4
    >>> p3 = np.ones((1, 1, 32, 32), np.float32)  # stride 8
    >>> boxes = np.array([[0, 0, 0, 50, 50], [0, 0, 0, 200, 200]], np.float32)
    >>> out = cuproi.multi_scale_roi_align([p2, p3], boxes, 2, [1 / 4, 1 / 8])
    >>> out[:, 0, 0, 0].round(4)  # the small box reads P2 (zeros), the large one P3 (ones)
    array([0., 1.], dtype=float32)
    """
    count = _pyramid.count_levels(features, "features")
    names = {f"features[{i}]": x for i, x in enumerate(features)}
    backend, arrays, restore = _dispatch.prepare(**names, boxes=boxes)
    *levels, b = arrays
    pooled = _validate.output_size(output_size)
    ratio = _validate.sampling_ratio(sampling_ratio)
    levels = _pyramid.level_features(backend.xp, levels)
    dtype = levels[0].dtype
    rule = canonical_scale, canonical_level
    scales, thresholds = _pyramid.level_rule(spatial_scales, count, dtype, *rule)
    rois = _validate.boxes(backend.xp, b, levels[0].shape[0], max(scales), dtype)
    _validate.pooled_result(len(rois), levels[0].shape[1], pooled)
    return restore(
        backend.multi_scale_roi_align(
            levels, rois, pooled, scales, ratio, _validate.flag(aligned, "aligned"), thresholds
        )
    )


@_dispatch.on_input_device
@_docstrings.fill(op="multi_scale_roi_align")
def multi_scale_roi_align_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shapes: Sequence[Shape],
    output_size: OutputSize,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    *,
    deterministic: bool = False,
) -> list[ArrayT]:
    """Gradient of :func:`multi_scale_roi_align` with respect to every level's features.

    Parameters
    ----------
    {grad_output}
    {forward_boxes}
    input_shapes : list of tuples of 4 ints
        ``(N, C, H_l, W_l)`` of every level of the forward call, finest first.
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
        As in the forward call.
    {deterministic}

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
    grad_l>``).
    {atomic_adds}
    {fixed_point}
    No gradient flows to the boxes.

    Examples
    --------
    >>> boxes = np.array([[0, 0, 0, 8, 8], [0, 0, 0, 200, 200]], np.float32)
    >>> g = np.ones((2, 1, 1, 1), np.float32)
    >>> shapes = [(1, 1, 64, 64), (1, 1, 32, 32)]
    >>> grads = cuproi.multi_scale_roi_align_backward(g, boxes, shapes, 1, [1 / 4, 1 / 8])
    >>> [round(float(gl.sum()), 4) for gl in grads]  # each box's unit gradient, on its level
    [1.0, 1.0]
    """
    count = _pyramid.count_levels(input_shapes, "input_shapes")
    backend, (g, b), restore = _dispatch.prepare(grad_output=grad_output, boxes=boxes)
    shapes = _pyramid.gradient_shapes(input_shapes)
    pooled = _validate.output_size(output_size)
    ratio = _validate.sampling_ratio(sampling_ratio)
    rule = canonical_scale, canonical_level
    scales, thresholds = _pyramid.level_rule(spatial_scales, count, g.dtype, *rule)
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
