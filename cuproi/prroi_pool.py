"""Precise RoI Pooling (IoU-Net): the exact integral of the bilinear surface over every bin.

mmcv's ``PrRoIPool`` semantics (from vacancy/PreciseRoIPooling), in float16, float32 and
float64, with gradients for the features and for the box coordinates.
"""

from cuproi import _dispatch, _validate

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
def prroi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Average the bilinear feature surface exactly over every bin (Precise RoI Pooling).

    Parameters
    ----------
    input : (N, C, H, W) array
        Feature maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU).
    boxes : (K, 5) array or list of (L_i, 4) arrays
        ``[batch_index, x1, y1, x2, y2]`` per box, or one ``[x1, y1, x2, y2]`` array per image
        (torchvision's convention), on the same device as ``input``.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    spatial_scale : float, optional
        Factor from box coordinates to feature coordinates, e.g. 1/16 for stride 16.

    Returns
    -------
    (K, C, PH, PW) array
        Same array type, device and dtype as ``input``.

    Raises
    ------
    TypeError
        Arrays of an unsupported type or dtype (integer, bool, complex features), non-integer
        sizes.
    ValueError
        Wrong ranks or shapes (a (K, 4) box array), non-positive sizes or scale, non-finite or
        fractional box values, arrays on different devices.
    IndexError
        A batch index outside ``[0, N)``.

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

    >>> import numpy as np
    >>> import cuproi
    >>> x = np.tile(np.arange(6, dtype=np.float32), (6, 1))[None, None]
    >>> boxes = np.array([[0, 1.0, 1.0, 4.0, 4.0]], dtype=np.float32)
    >>> cuproi.prroi_pool(x, boxes, output_size=(1, 2)).round(4)
    array([[[[1.75, 3.25]]]], dtype=float32)
    """
    backend, (x, b), restore = _dispatch.prepare(input=input, boxes=boxes)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    x = _validate.features(backend.xp, x, channels_last=True)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    _validate.pooled_result(len(rois), x.shape[1], pooled)
    return restore(backend.prroi_pool(x, rois, pooled, scale))


@_dispatch.on_input_device
def prroi_pool_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, *, deterministic=False
):
    """Gradient of :func:`prroi_pool` with respect to its input features.

    Parameters
    ----------
    grad_output : (K, C, PH, PW) array
        Gradient of a loss with respect to the output of :func:`prroi_pool`.
    boxes : (K, 5) array or list of (L_i, 4) arrays
        The boxes of the forward call.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)`` of the forward input.
    output_size, spatial_scale
        As in the forward call.
    deterministic : bool, optional
        Sum overlapping contributions in a fixed-point format whose total does not depend on
        the order of the additions, so that the GPU gives bit-identical gradients from run to
        run (default: floating-point atomic adds, faster). See Notes.

    Returns
    -------
    (N, C, H, W) array
        Gradient with respect to the features, same array type and dtype as ``grad_output``.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`prroi_pool`; also when ``grad_output`` does not match the boxes, the
        channels of ``input_shape`` or ``output_size``.

    Notes
    -----
    The op is linear in the features, so no features are needed: the backward is the exact
    transpose of the forward (``<prroi_pool(x), g> == <x, prroi_pool_backward(g)>``). On the
    GPU it accumulates with atomic adds by default, so the order of the sums, and the last bits
    of the result, may differ between runs; float16 accumulates in float32. With
    ``deterministic=True`` the GPU sums in 128-bit fixed point (see
    :func:`roi_align_backward`): bit-identical from run to run. The CPU backend is always
    deterministic. The gradient with respect to the boxes is
    :func:`prroi_pool_box_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> boxes = np.array([[0, 1.0, 1.0, 2.0, 2.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> cuproi.prroi_pool_backward(g, boxes, (1, 1, 3, 3), 1)[0, 0]
    array([[0.  , 0.  , 0.  ],
           [0.  , 0.25, 0.25],
           [0.  , 0.25, 0.25]], dtype=float32)
    """
    backend, (g, b), restore = _dispatch.prepare(grad_output=grad_output, boxes=boxes)
    shape = _validate.input_shape(input_shape)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    rois = _validate.boxes(backend.xp, b, shape[0], scale, g.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), shape[1], pooled)
    return restore(
        backend.prroi_pool_backward(
            g, rois, shape, scale, deterministic=_validate.flag(deterministic, "deterministic")
        )
    )


@_dispatch.on_input_device
def prroi_pool_box_backward(
    grad_output, input, boxes, output_size, spatial_scale=1.0, *, deterministic=False
):
    """Gradient of :func:`prroi_pool` with respect to the box coordinates.

    Parameters
    ----------
    grad_output : (K, C, PH, PW) array
        Gradient of a loss with respect to the output of :func:`prroi_pool`.
    input : (N, C, H, W) array
        The features of the forward call.
    boxes, output_size, spatial_scale
        As in the forward call.
    deterministic : bool, optional
        Sum the terms of every box in a fixed order (GPU; default: atomic adds). It then holds
        ``4 * K * C * PH * PW`` per-element terms in the compute dtype before summing them.

    Returns
    -------
    (K, 5) array
        ``d loss / d [batch_index, x1, y1, x2, y2]``, in the compute dtype (float32 for
        float16 and float32 features, float64 for float64) and the array type of
        ``grad_output``. Column 0 (the batch index) is always 0. Boxes given as a list of
        per-image ``(L_i, 4)`` arrays get the rows of their concatenation, in order.

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
    >>> import numpy as np
    >>> import cuproi
    >>> x = np.tile(np.arange(6, dtype=np.float64), (6, 1))[None, None]  # slope 1 along x
    >>> boxes = np.array([[0, 1.0, 1.0, 4.0, 4.0]])
    >>> g = np.ones((1, 1, 1, 1))
    >>> cuproi.prroi_pool_box_backward(g, x, boxes, 1)[:, [1, 3]]  # d / d x1, d / d x2
    array([[0.5, 0.5]])
    """
    backend, (g, x, b), restore = _dispatch.prepare(
        grad_output=grad_output, input=input, boxes=boxes
    )
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    x = _validate.features(backend.xp, x, channels_last=True)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), x.shape[1], pooled, dtype=x.dtype)
    grad = backend.prroi_pool_box_backward(
        g, x, rois, scale, deterministic=_validate.flag(deterministic, "deterministic")
    )
    return restore(grad)


prroi_pool.__doc__ = prroi_pool.__doc__.format(conventions=_CONVENTIONS)
