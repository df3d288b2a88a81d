"""Position-sensitive RoI Align (R-FCN): every bin samples its own score map.

torchvision's semantics, without its 0/0 on boxes of zero size.
"""

from cuproi import _arguments, _dispatch, _docstrings, _validate
from cuproi._types import ArrayT, Boxes, OutputSize, Shape

# Output channels of the score maps, or ValueError: C / (PH * PW).
_GROUPS = _validate.position_sensitive_channels

_CONVENTIONS = """
    The input's ``C`` channels are ``C_out = C / (PH * PW)`` groups of ``PH * PW``
    position-sensitive score maps: bin ``(ph, pw)`` of output channel ``c`` reads input channel
    ``(c * PH + ph) * PW + pw`` (R-FCN; torchvision's channel mapping, which cuproi recomputes
    in the backward instead of returning it). Boxes are ``[batch_index, x1, y1, x2, y2]`` in
    input-image coordinates; ``spatial_scale`` maps them onto the feature map, and they are
    always shifted by -0.5 cell (the half-pixel convention of ``roi_align(aligned=True)``) with
    no minimum size. Each of the ``PH x PW`` bins averages a ``gh x gw`` grid of bilinear
    samples, ``gh = sampling_ratio`` or, when ``sampling_ratio <= 0``,
    ``ceil(box_height / PH)`` (likewise ``gw``). A sample outside ``[-1, H] x [-1, W]`` counts
    as zero; inside that band but off the map it takes the value of the nearest edge. The
    average divides by ``max(gh * gw, 1)``: with adaptive sampling a box of zero or negative
    size gives zeros, where ``torchvision.ops.ps_roi_align`` divides 0 by 0 and returns NaN;
    every other box gives torchvision's values. Coordinates are computed in float32 (float64
    for float64 features); float16 features accumulate in float32.
"""


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS)
def ps_roi_align(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> ArrayT:
    """Pool a fixed-size feature from every box, each bin from its own score map (PS RoI Align).

    Parameters
    ----------
    {score_maps_parameters}
    {sampling_ratio}

    Returns
    -------
    {score_maps_pooled}

    Raises
    ------
    {score_maps_errors}

    Notes
    -----
    {conventions}

    See Also
    --------
    ps_roi_align_backward, ps_roi_pool, roi_align

    References
    ----------
    {rfcn}

    Examples
    --------
    Four score maps for a 2 x 2 output: each bin reads its own map.

    >>> x = np.stack([np.full((4, 4), v, np.float32) for v in (1, 2, 3, 4)])[None]
    >>> boxes = np.array([[0, 0.0, 0.0, 4.0, 4.0]], dtype=np.float32)
    >>> cuproi.ps_roi_align(x, boxes, output_size=2, sampling_ratio=2)
    array([[[[1., 2.],
             [3., 4.]]]], dtype=float32)
    """
    ratio = (_validate.sampling_ratio, sampling_ratio)
    call = _arguments.forward(
        input, boxes, output_size, spatial_scale, ratio, channels=_GROUPS, channels_last=False
    )
    return call.run("ps_roi_align", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="ps_roi_align")
def ps_roi_align_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shape: Shape,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`ps_roi_align` with respect to its input features.

    Parameters
    ----------
    {score_maps_grad_output}
    {forward_boxes}
    {score_maps_input_shape}
    output_size, spatial_scale, sampling_ratio
        As in the forward call.
    {deterministic}

    Returns
    -------
    {grad_input}

    Raises
    ------
    {score_maps_backward_errors}

    Notes
    -----
    The backward is the exact transpose of the forward (the adjoint identity
    ``<ps_roi_align(x), g> == <x, ps_roi_align_backward(g)>`` holds); no channel mapping is
    needed, the input channel of every bin is recomputed.
    {atomic_adds}
    {fixed_point}
    No gradient flows to the boxes.

    Examples
    --------
    >>> boxes = np.array([[0, 0.0, 0.0, 4.0, 4.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> cuproi.ps_roi_align_backward(g, boxes, (1, 4, 4, 4), 2, sampling_ratio=1)[0, 3]
    array([[0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.25, 0.25]], dtype=float32)
    """
    ratio = (_validate.sampling_ratio, sampling_ratio)
    call = _arguments.backward(
        grad_output, boxes, input_shape, output_size, spatial_scale, ratio, channels=_GROUPS
    )
    arguments = call.g, call.rois, call.shape, call.scale
    return call.run("ps_roi_align_backward", *arguments, deterministic=deterministic)
