"""Precise RoI Pooling (IoU-Net): the exact integral of the bilinear surface over every bin.

mmcv's ``PrRoIPool`` semantics (from vacancy/PreciseRoIPooling), in float16, float32 and
float64, with gradients for the features and for the box coordinates.
"""

from cuproi import _arguments, _dispatch, _docstrings
from cuproi._types import ArrayT, Boxes, OutputSize, Shape

_CONVENTIONS = """
    The feature map is the continuous surface ``f(y, x) = sum_{h, w} v[h, w] hat(y - h)
    hat(x - w)`` with ``hat(t) = max(0, 1 - |t|)``: pixel ``(h, w)`` sits at the integer
    coordinate ``(h, w)`` (no half-pixel shift), the surface is bilinear between pixels and, as
    if the map were padded with zeros, falls linearly to 0 over the cell beyond its last row and
    column and is 0 further out (no clamping, no edge replication). Boxes are
    ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates; bin ``(ph, pw)`` of a box is
    ``[x1 * s + pw * bw, x1 * s + (pw + 1) * bw] x [y1 * s + ph * bh, y1 * s + (ph + 1) * bh]``
    with ``s = spatial_scale``, ``bw = max(x2 * s - x1 * s, 0) / PW`` and
    ``bh = max(y2 * s - y1 * s, 0) / PH``: no minimum size, and a flipped box has size 0. Each
    output is the exact integral of ``f`` over its bin divided by the bin's area; a bin of zero
    area outputs 0. The integral is computed in closed form as ``sum v[h, w] Wy[h] Wx[w]``,
    ``Wy[h]`` the integral of ``hat(y - h)`` over the bin's rows divided by ``bh``; only the
    pixels whose hat meets the bin are visited, so the work of a box is bounded by the map.
    Coordinates are computed in float32 (float64 for float64 features); float16 features
    accumulate in float32. mmcv's ``PrRoIPool`` gives the same values in float32 only (it
    raises ValueError for other dtypes) and runs on CUDA only.
"""


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS)
def prroi_pool(
    input: ArrayT, boxes: Boxes[ArrayT], output_size: OutputSize, spatial_scale: float = 1.0
) -> ArrayT:
    """Average the bilinear feature surface exactly over every bin (Precise RoI Pooling).

    Parameters
    ----------
    {input}
    {boxes}
    {output_size}
    {spatial_scale}

    Returns
    -------
    {pooled}

    Raises
    ------
    {type_error}
    ValueError
        Wrong ranks or shapes (a (K, 4) box array), non-positive sizes or scale, non-finite or
        fractional box values, arrays on different devices.
    {index_error}

    Notes
    -----
    {conventions}

    See Also
    --------
    prroi_pool_backward, prroi_pool_box_backward, roi_align

    References
    ----------
    B. Jiang, R. Luo, J. Mao, T. Xiao, Y. Jiang, "Acquisition of Localization Confidence for
    Accurate Object Detection", ECCV 2018.

    Examples
    --------
    A ramp along x: the average of a linear surface is its value at the bin centre.

    >>> x = np.tile(np.arange(6, dtype=np.float32), (6, 1))[None, None]
    >>> boxes = np.array([[0, 1.0, 1.0, 4.0, 4.0]], dtype=np.float32)
    >>> cuproi.prroi_pool(x, boxes, output_size=(1, 2)).round(4)
    array([[[[1.75, 3.25]]]], dtype=float32)
    """
    call = _arguments.forward(input, boxes, output_size, spatial_scale)
    return call.run("prroi_pool", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="prroi_pool")
def prroi_pool_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shape: Shape,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`prroi_pool` with respect to its input features.

    Parameters
    ----------
    {grad_output}
    {forward_boxes}
    {input_shape}
    output_size, spatial_scale
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
    The op is linear in the features, so no features are needed: the backward is the exact
    transpose of the forward (``<prroi_pool(x), g> == <x, prroi_pool_backward(g)>``).
    {atomic_adds}
    {fixed_point}
    The gradient with respect to the boxes is
    :func:`prroi_pool_box_backward`.

    Examples
    --------
    >>> boxes = np.array([[0, 1.0, 1.0, 2.0, 2.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> cuproi.prroi_pool_backward(g, boxes, (1, 1, 3, 3), 1)[0, 0]
    array([[0.  , 0.  , 0.  ],
           [0.  , 0.25, 0.25],
           [0.  , 0.25, 0.25]], dtype=float32)
    """
    call = _arguments.backward(grad_output, boxes, input_shape, output_size, spatial_scale)
    arguments = call.g, call.rois, call.shape, call.scale
    return call.run("prroi_pool_backward", *arguments, deterministic=deterministic)


@_dispatch.on_input_device
@_docstrings.fill(op="prroi_pool")
def prroi_pool_box_backward(
    grad_output: ArrayT,
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`prroi_pool` with respect to the box coordinates.

    Parameters
    ----------
    {grad_output}
    input : (N, C, H, W) array
        The features of the forward call.
    boxes, output_size, spatial_scale
        As in the forward call.
    {box_deterministic}

    Returns
    -------
    {box_gradient}

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`prroi_pool_backward`; also when ``input`` does not match ``grad_output``.

    Notes
    -----
    The exact derivative of the forward. A bin's output is ``J / (bw * bh)`` with ``J`` the
    integral of the surface over it; moving its top edge ``y0`` changes ``J`` by minus the
    integral of the surface along that edge, so ``d out / d y0 = (out - top) / bh`` and
    ``d out / d y1' = (bottom - out) / bh`` with ``top`` and ``bottom`` the averages of the
    surface along the bin's top and bottom edges (likewise ``left``, ``right`` along x). The
    edges of bin ``ph`` are ``y1 * s + u * (y2 - y1) * s`` with ``u = ph / PH`` and
    ``(ph + 1) / PH``, which chains these to ``y1`` and ``y2``. The surface is continuous, so
    the gradient is continuous in the boxes except where a box's width or height reaches 0:
    there ``bw = max(x2 * s - x1 * s, 0) / PW`` is clamped, every bin outputs the constant 0
    and the gradient is 0 (the forward jumps from the edge average to 0 as the size reaches 0).
    This is mmcv's ``prroi_pool_coor_backward``, without its skip of bins whose output is
    exactly 0, in every dtype. The differences ``out - top`` are divided by the bin size, so
    their rounding error grows like ``eps / bin size``: in float32, bins much smaller than a
    cell (below about 1e-3) get box gradients accurate to a few digits only.

    Examples
    --------
    >>> x = np.tile(np.arange(6, dtype=np.float64), (6, 1))[None, None]  # slope 1 along x
    >>> boxes = np.array([[0, 1.0, 1.0, 4.0, 4.0]])
    >>> g = np.ones((1, 1, 1, 1))
    >>> cuproi.prroi_pool_box_backward(g, x, boxes, 1)[:, [1, 3]]  # d / d x1, d / d x2
    array([[0.5, 0.5]])
    """
    call = _arguments.box_backward(grad_output, input, boxes, output_size, spatial_scale)
    arguments = call.g, call.x, call.rois, call.scale
    return call.run("prroi_pool_box_backward", *arguments, deterministic=deterministic)
