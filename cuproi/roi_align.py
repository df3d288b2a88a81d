"""RoI Align (Mask R-CNN): average of bilinear samples in every bin, torchvision's semantics."""

from cuproi import _dispatch, _validate

_CONVENTIONS = """
    Boxes are ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates; ``spatial_scale``
    maps them onto the feature map. With ``aligned=True`` the box is shifted by -0.5 cell, so that
    pixel ``i`` is centred at continuous coordinate ``i + 0.5`` (the half-pixel convention of
    Detectron2, mmcv and ONNX ``half_pixel``); with ``aligned=False`` (torchvision's default) it
    is not shifted and a box smaller than one cell is widened to one cell. Each of the
    ``PH x PW`` bins averages a ``gh x gw`` grid of bilinear samples, ``gh = sampling_ratio`` or,
    when ``sampling_ratio <= 0``, ``ceil(box_height / PH)`` (likewise ``gw``). A sample outside
    ``[-1, H] x [-1, W]`` counts as zero; inside that band but off the map it takes the value of
    the nearest edge. The results equal ``torchvision.ops.roi_align`` for every box, including
    degenerate, flipped and out-of-map ones; with ``aligned=True`` and adaptive sampling a box of
    zero or negative size gives zeros. Coordinates are computed in float32 (float64 for float64
    features); float16 features accumulate in float32.
"""


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Pool a fixed-size feature from every box by bilinear sampling (RoI Align).

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
    sampling_ratio : int, optional
        Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)``.
    aligned : bool, optional
        Shift boxes by -0.5 cell (half-pixel convention).

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
    roi_align_backward, roi_pool, deform_roi_pool

    References
    ----------
    K. He, G. Gkioxari, P. Dollar, R. Girshick, "Mask R-CNN", ICCV 2017.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)
    >>> cuproi.roi_align(x, boxes, output_size=1, sampling_ratio=2, aligned=True)
    array([[[[2.5]]]], dtype=float32)
    """
    backend, (x, b), restore = _dispatch.prepare(input=input, boxes=boxes)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    x = _validate.features(backend.xp, x)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    return restore(backend.roi_align_forward(x, rois, scale, *pooled, ratio, bool(aligned)))


def roi_align_backward(
    grad_output,
    boxes,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    deterministic=False,
):
    """Gradient of :func:`roi_align` with respect to its input features.

    Parameters
    ----------
    grad_output : (K, C, PH, PW) array
        Gradient of a loss with respect to the output of :func:`roi_align`.
    boxes : (K, 5) array or list of (L_i, 4) arrays
        The boxes of the forward call.
    input_shape : tuple of 4 ints
        ``(N, C, H, W)`` of the forward input.
    output_size, spatial_scale, sampling_ratio, aligned
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
        As :func:`roi_align`; also when ``grad_output`` does not match the boxes, the channels
        of ``input_shape`` or ``output_size``.

    Notes
    -----
    The backward is the exact transpose of the forward (the adjoint identity ``<roi_align(x), g>
    == <x, roi_align_backward(g)>`` holds). On the GPU it accumulates with atomic adds by
    default, so the order of the sums, and the last bits of the result, may differ between runs;
    float16 accumulates in float32. With ``deterministic=True`` the GPU sums in 128-bit fixed
    point, at a resolution of ``2**-124 * max|grad_output| * grad_output.size`` or finer, with
    16 bytes of scratch per input element: the sum is exact and rounded once at the end, so it
    is also more accurate than the default. inf and NaN in ``grad_output`` propagate as in the
    default. The CPU backend is always deterministic. No gradient flows to the boxes.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)
    >>> g = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> cuproi.roi_align_backward(g, boxes, (1, 1, 3, 3), 1, sampling_ratio=1, aligned=True)[0, 0]
    array([[0.25, 0.25, 0.  ],
           [0.25, 0.25, 0.  ],
           [0.  , 0.  , 0.  ]], dtype=float32)
    """
    backend, (g, b), restore = _dispatch.prepare(grad_output=grad_output, boxes=boxes)
    shape = _validate.input_shape(input_shape)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    rois = _validate.boxes(backend.xp, b, shape[0], scale, g.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), shape[1], pooled)
    return restore(
        backend.roi_align_backward(
            g, rois, shape, scale, ratio, bool(aligned), deterministic=bool(deterministic)
        )
    )


roi_align.__doc__ = roi_align.__doc__.format(conventions=_CONVENTIONS)
