"""Position-sensitive RoI Pool (R-FCN): every quantized bin averages its own score map.

torchvision's semantics, with one clipping for forward and backward.
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
    input-image coordinates; ``spatial_scale`` maps them onto the feature map, where they are
    rounded to whole cells (half away from zero). The box is ``max(x2 - x1, 1)`` cells wide (no
    +1, unlike :func:`roi_pool`; likewise its height); bin ``(ph, pw)`` covers rows
    ``floor(ph * h / PH)`` to ``ceil((ph + 1) * h / PH)`` (exclusive) from the box's first row,
    and likewise columns, clipped to ``[0, H]`` and ``[0, W]``: bins may overlap. The output is
    the mean over the bin's cells; an empty bin (wholly off the map) gives 0.

    torchvision's forward (its CPU and CUDA kernels alike) clips the bins to ``[0, H - 1]`` and
    ``[0, W - 1]``, so it never reads the last row and column of the map, while its backward
    clips to ``[0, H]`` and ``[0, W]``: its gradient is not the derivative of its forward
    there. cuproi clips both to ``[0, H]`` and ``[0, W]``, so its backward is the exact
    transpose of its forward; its values differ from torchvision's only in bins that reach the
    last row or column. float16 features accumulate in float32.
"""


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS)
def ps_roi_pool(
    input: ArrayT, boxes: Boxes[ArrayT], output_size: OutputSize, spatial_scale: float = 1.0
) -> ArrayT:
    """Average every quantized bin of every box over its own score map (PS RoI Pool).

    Parameters
    ----------
    {score_maps_parameters}

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
    ps_roi_pool_backward, ps_roi_align, roi_pool

    References
    ----------
    {rfcn}

    Examples
    --------
    Four score maps for a 2 x 2 output: each bin averages its own map over its cells.

    >>> x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 4.0, 4.0]], dtype=np.float32)
    >>> cuproi.ps_roi_pool(x, boxes, output_size=2)
    array([[[[ 2.5, 20.5],
             [42.5, 60.5]]]], dtype=float32)
    """
    call = _arguments.forward(
        input, boxes, output_size, spatial_scale, channels=_GROUPS, channels_last=False
    )
    return call.run("ps_roi_pool", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="ps_roi_pool")
def ps_roi_pool_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shape: Shape,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`ps_roi_pool` with respect to its input features.

    Parameters
    ----------
    {score_maps_grad_output}
    {forward_boxes}
    {score_maps_input_shape}
    output_size, spatial_scale
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
    Every bin spreads its gradient evenly over the cells it averaged (the same cells as the
    forward, see :func:`ps_roi_pool`): the backward is the exact transpose of the forward.
    {atomic_adds}
    {fixed_point}
    No gradient flows to the boxes.

    Examples
    --------
    >>> boxes = np.array([[0, 0.0, 0.0, 4.0, 4.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> cuproi.ps_roi_pool_backward(g, boxes, (1, 4, 4, 4), 2)[0, 1]
    array([[0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    """
    call = _arguments.backward(
        grad_output, boxes, input_shape, output_size, spatial_scale, channels=_GROUPS
    )
    arguments = call.g, call.rois, call.shape, call.scale
    return call.run("ps_roi_pool_backward", *arguments, deterministic=deterministic)
