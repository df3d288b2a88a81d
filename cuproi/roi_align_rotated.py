"""Rotated RoI Align: RoI Align on boxes turned about their centre (detectron2, mmcv)."""

from cuproi import _arguments, _dispatch, _docstrings, _validate
from cuproi._types import ArrayT, Boxes, OutputSize, Shape

_CONVENTIONS = """
    Boxes are ``[batch_index, cx, cy, w, h, angle]`` in input-image coordinates: centre, width,
    height and an angle in **degrees, counter-clockwise** as seen on the image (y pointing down),
    detectron2's ``ROIAlignRotated`` convention. ``clockwise=True`` negates the angle (mmcv's
    flag). mmcv's ``RoIAlignRotated`` takes the angle in radians: pass
    ``angle_radians * 180 / pi``.

    ``spatial_scale`` maps the boxes onto the feature map. With ``aligned=True`` (the default,
    and detectron2's only mode) the centre is shifted by -0.5 cell, ``c = (cx, cy) * scale -
    0.5``, and the size ``(w, h) * scale`` is used as it is; with ``aligned=False`` the centre
    is not shifted and a size below one cell is raised to one cell (mmcv's legacy mode). Bin
    ``(ph, pw)`` averages a ``gh x gw`` grid of samples, ``gh = sampling_ratio`` or, when
    ``sampling_ratio <= 0``, ``ceil(h * scale / PH)`` (likewise ``gw``). A sample is placed in
    the box frame, from the corner ``(-h/2, -w/2)``:
    ``yy = -h/2 + ph * bin_h + (iy + 0.5) * bin_h / gh`` (likewise ``xx``), then rotated about
    the centre with ``theta = angle * pi / 180`` (``-angle`` when clockwise):
    ``y = yy * cos(theta) - xx * sin(theta) + c_y`` and
    ``x = yy * sin(theta) + xx * cos(theta) + c_x``.
    Each sample is bilinear as in :func:`roi_align`: outside ``[-1, H] x [-1, W]`` it counts as
    zero; inside that band but off the map it takes the value of the nearest edge. The average
    divides by ``max(gh * gw, 1)``: with adaptive sampling a box of zero or negative size gives
    zeros (detectron2's CPU kernel asserts a non-negative size instead). With angle 0 the
    result equals :func:`roi_align` on the box ``[cx - w/2, cy - h/2, cx + w/2, cy + h/2]``
    (same ``aligned``) up to rounding.

    Coordinates are computed in float32 (float64 for float64 features) in the kernels'
    operation order; float16 features accumulate in float32. ``cos`` and ``sin`` are computed
    in double precision from the angle reduced to ``[-45, 45]`` degrees about the nearest
    multiple of 90 degrees (so 0, 90, 180 and 270 degrees are exact rotations) and rounded to
    the compute type, the same way on the CPU and the GPU; the backends may still differ in the
    last ulp of a double ``cos``/``sin``, which is invisible after rounding to float32.
"""


def _checks(sampling_ratio, aligned, clockwise):
    """The option checks of both functions, in the backend's order of the options."""
    return (
        (_validate.sampling_ratio, sampling_ratio),
        (_validate.flag, aligned, "aligned"),
        (_validate.flag, clockwise, "clockwise"),
    )


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS)
def roi_align_rotated(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> ArrayT:
    """Pool a fixed-size feature from every rotated box by bilinear sampling.

    Parameters
    ----------
    input : (N, C, H, W) array
        Features, float16, float32 or float64; NumPy (CPU) or CuPy (GPU).
    boxes : (K, 6) array or list of (L_i, 5) arrays
        ``[batch_index, cx, cy, w, h, angle]`` per box (angle in degrees, counter-clockwise),
        or one ``[cx, cy, w, h, angle]`` array per image, on the same device as ``input``.
    {output_size}
    {spatial_scale}
    sampling_ratio : int, optional
        Samples per bin along each box axis; ``<= 0`` (default) picks
        ``ceil(box_size / output_size)``.
    aligned : bool, optional
        Half-pixel convention (default, detectron2); False is mmcv's legacy mode (no shift,
        minimum size 1).
    clockwise : bool, optional
        The angles turn clockwise (mmcv's flag): the same as negating them.

    Returns
    -------
    {pooled}

    Raises
    ------
    {type_error}
    ValueError
        Wrong ranks or shapes (a (K, 5) box array), non-positive sizes or scale, non-finite or
        fractional box values, centres or sizes beyond 2**20 feature cells, arrays on different
        devices.
    {index_error}

    Notes
    -----
    {conventions}

    See Also
    --------
    roi_align_rotated_backward, roi_align

    References
    ----------
    J. Ma et al., "Arbitrary-Oriented Scene Text Detection via Rotation Proposals", IEEE
    Transactions on Multimedia, 2018 (Rotation RoI pooling); detectron2 ``ROIAlignRotated``.

    Examples
    --------
    A 4 x 2 box and the same box turned by 90 degrees counter-clockwise: its first bin (the
    left half) moves below the centre, its second bin above.

    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 2.0, 2.0, 4.0, 2.0, 0.0], [0, 2.0, 2.0, 4.0, 2.0, 90.0]])
    >>> cuproi.roi_align_rotated(x, boxes.astype(np.float32), (1, 2), sampling_ratio=1)
    array([[[[ 6.5,  8.5]]],
    <BLANKLINE>
    <BLANKLINE>
           [[[11.5,  3.5]]]], dtype=float32)
    """
    checks = _checks(sampling_ratio, aligned, clockwise)
    call = _arguments.forward(input, boxes, output_size, spatial_scale, *checks, rotated=True)
    return call.run("roi_align_rotated", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="roi_align_rotated")
def roi_align_rotated_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shape: Shape,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`roi_align_rotated` with respect to its input features.

    Parameters
    ----------
    {grad_output}
    boxes : (K, 6) array or list of (L_i, 5) arrays
        The boxes of the forward call.
    {input_shape}
    output_size, spatial_scale, sampling_ratio, aligned, clockwise
        As in the forward call.
    {deterministic}

    Returns
    -------
    {grad_input}

    Raises
    ------
    {backward_errors}

    Notes
    -----
    The backward is the exact transpose of the forward (the adjoint identity
    ``<roi_align_rotated(x), g> == <x, roi_align_rotated_backward(g)>`` holds).
    {atomic_adds}
    {fixed_point}
    No gradient flows to the boxes.

    Examples
    --------
    >>> boxes = np.array([[0, 2.0, 2.0, 2.0, 2.0, 90.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> cuproi.roi_align_rotated_backward(g, boxes, (1, 1, 4, 4), 1, sampling_ratio=1)[0, 0]
    array([[0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.25, 0.25, 0.  ],
           [0.  , 0.25, 0.25, 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    """
    checks = _checks(sampling_ratio, aligned, clockwise)
    call = _arguments.backward(
        grad_output, boxes, input_shape, output_size, spatial_scale, *checks, rotated=True
    )
    arguments = call.g, call.rois, call.shape, call.scale
    return call.run("roi_align_rotated_backward", *arguments, deterministic=deterministic)
