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


_MAX_MODE = """
    ``pool_mode="max"`` (mmcv's ``RoIAlign(pool_mode='max')``) keeps the largest of the bin's
    ``gh x gw`` bilinear samples instead of their average, on the same sampling grid (both
    ``aligned`` conventions). As in mmcv a sample outside ``[-1, H] x [-1, W]`` takes part with
    value 0; the first maximum in scan order (sample rows, then columns) wins ties; a NaN sample
    wins, so NaN propagates as in :func:`roi_pool`; a bin without samples (a zero-size aligned
    box with adaptive sampling) gives 0, where mmcv gives -FLT_MAX on CUDA and -10000 on CPU.
"""


def _forward_input(backend, value, shape, name="input"):
    """The forward's features given to a backward: validated and matching ``input_shape``."""
    x = _validate.features(backend.xp, value, name, channels_last=True)
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but input_shape is {tuple(shape)}")
    return x


@_dispatch.on_input_device
def roi_align(
    input,
    boxes,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
):
    """Pool a fixed-size feature from every box by bilinear sampling (RoI Align).

    Parameters
    ----------
    input : (N, C, H, W) array
        Feature maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU). C-contiguous or
        stored channels last (torch's ``channels_last``), read as they are; any other strides
        are copied to C order first.
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
    pool_mode : {{"avg", "max"}}, optional
        Average the samples of every bin (torchvision, the default) or keep their maximum
        (mmcv's max mode). See Notes.

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
        fractional box values, arrays on different devices; sizes beyond cuproi's limits
        (``output_size`` above 16384 bins per side, an output above 2**32 elements,
        ``spatial_scale`` above 2**20, coordinates beyond 2**20 feature cells once scaled).
    IndexError
        A batch index outside ``[0, N)``.

    Notes
    -----
    {conventions}
    {max_mode}

    See Also
    --------
    roi_align_backward, roi_align_box_backward, roi_pool, deform_roi_pool

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
    >>> cuproi.roi_align(x, boxes, output_size=1, sampling_ratio=2, aligned=True, pool_mode="max")
    array([[[[5.]]]], dtype=float32)
    """
    backend, (x, b), restore = _dispatch.prepare(input=input, boxes=boxes)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    mode = _validate.pool_mode(pool_mode)
    x = _validate.features(backend.xp, x, channels_last=True)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    _validate.pooled_result(len(rois), x.shape[1], pooled)
    aligned = _validate.flag(aligned, "aligned")
    return restore(backend.roi_align(x, rois, pooled, scale, ratio, aligned, mode))


@_dispatch.on_input_device
def roi_align_backward(
    grad_output,
    boxes,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    pool_mode="avg",
    input=None,
    deterministic=False,
    channels_last=False,
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
    output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        As in the forward call.
    input : (N, C, H, W) array, optional
        The features of the forward call, of shape ``input_shape``. Required with
        ``pool_mode="max"``: the backward finds every bin's winning sample again from them
        (no argmax is stored, so the forward's output is all a caller keeps). Not read in
        avg mode, whose gradient does not depend on the features.
    deterministic : bool, optional
        Sum overlapping contributions in a fixed-point format whose total does not depend on
        the order of the additions, so that the GPU gives bit-identical gradients from run to
        run (default: floating-point atomic adds, faster). See Notes.
    channels_last : bool, optional
        Return the gradient stored channels last (an (N, C, H, W) view of (N, H, W, C) memory,
        torch's ``channels_last`` format), the layout of channels-last features; on the GPU
        that saves a transpose. Default: C-contiguous.

    Returns
    -------
    (N, C, H, W) array
        Gradient with respect to the features, same array type and dtype as ``grad_output``.
        In max mode each bin's gradient goes to the 4 bilinear neighbours of its winning
        sample (as mmcv's), nowhere when the winner is an out-of-range zero or the bin is empty.

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
    default. The CPU backend is always deterministic. The gradient with respect to the boxes
    is :func:`roi_align_box_backward`.

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
    mode = _validate.pool_mode(pool_mode)
    if mode == "max" and input is None:
        raise ValueError(
            "roi_align_backward with pool_mode='max' needs input=, the features of the forward "
            "call (the winning samples are found again from them)"
        )
    arrays = {"grad_output": grad_output, "boxes": boxes}
    if mode == "max":
        arrays["input"] = input
    backend, prepared, restore = _dispatch.prepare(**arrays)
    g, b = prepared[:2]
    shape = _validate.input_shape(input_shape)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    dtype = g.dtype
    det = _validate.flag(deterministic, "deterministic")
    aligned = _validate.flag(aligned, "aligned")
    channels_last = _validate.flag(channels_last, "channels_last")
    if mode == "max":  # reads the features too: computes in their dtype
        x = _forward_input(backend, prepared[2], shape)
        rois = _validate.boxes(backend.xp, b, shape[0], scale, x.dtype)
        g = _validate.grad_output(backend.xp, g, len(rois), shape[1], pooled, dtype=x.dtype)
        grad = backend.roi_align_backward(
            g,
            rois,
            shape,
            scale,
            ratio,
            aligned,
            pool_mode=mode,
            input=x,
            deterministic=det,
            channels_last=channels_last,
        )
        return restore(grad.astype(dtype, copy=False))
    rois = _validate.boxes(backend.xp, b, shape[0], scale, g.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), shape[1], pooled)
    return restore(
        backend.roi_align_backward(
            g,
            rois,
            shape,
            scale,
            ratio,
            aligned,
            deterministic=det,
            channels_last=channels_last,
        )
    )


@_dispatch.on_input_device
def roi_align_box_backward(
    grad_output,
    input,
    boxes,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    pool_mode="avg",
    deterministic=False,
):
    """Gradient of :func:`roi_align` with respect to the box coordinates.

    Parameters
    ----------
    grad_output : (K, C, PH, PW) array
        Gradient of a loss with respect to the output of :func:`roi_align`.
    input : (N, C, H, W) array
        The features of the forward call (the gradient is their slope at every sample).
    boxes, output_size, spatial_scale, sampling_ratio, aligned, pool_mode
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
        per-image ``(L_i, 4)`` arrays get the rows of their concatenation, in order: the
        gradient of list entry ``i`` is ``rows[sum(L[:i]) : sum(L[:i + 1]), 1:]``.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`roi_align_backward`; also when ``input`` does not match ``grad_output``.

    Notes
    -----
    This is the exact derivative of the forward: a sample at fraction ``u`` of the box width
    sits at ``x1 * spatial_scale - shift + u * box_width``, so its value moves with ``x1`` by
    ``slope * spatial_scale * (1 - u)`` and with ``x2`` by ``slope * spatial_scale * u`` (same
    along y), summed over samples, channels and bins with the weights of the forward (1/count
    in avg mode, the winning sample in max mode). The slope is the right derivative of the
    bilinear surface, so it is correct at integer sample positions (where TensorFlow's
    ``crop_and_resize`` and DCN, using floor/ceil neighbours, give 0); it is 0 across the edge
    bands ``[-1, 0)`` and ``(H-1, H]`` where the forward replicates the edge, and outside
    ``[-1, H]``. Two parts of the forward are piecewise constant and contribute 0: the
    adaptive sample count ``ceil(box_size / output_size)`` and, with ``aligned=False``, the
    legacy minimum size of one cell (while it holds, only the box start moves the samples,
    so ``x2`` gets 0). In max mode the winner is also piecewise constant. None of the peers
    gives box gradients for RoI Align. The public backward functions each return one gradient
    (``roi_align_backward``: features; this function: boxes), so each keeps a stable return
    type and the box gradient, which reads the features, is only paid for when asked.

    Examples
    --------
    >>> import numpy as np
    >>> import cuproi
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # slope 1 along x, 4 along y
    >>> boxes = np.array([[0, 0.5, 0.5, 2.5, 2.5]])
    >>> g = np.ones((1, 1, 1, 1))
    >>> cuproi.roi_align_box_backward(g, x, boxes, 1, sampling_ratio=2, aligned=True)
    array([[0. , 0.5, 2. , 0.5, 2. ]])
    """
    mode = _validate.pool_mode(pool_mode)
    backend, (g, x, b), restore = _dispatch.prepare(
        grad_output=grad_output, input=input, boxes=boxes
    )
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    x = _forward_input(backend, x, None)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    g = _validate.grad_output(backend.xp, g, len(rois), x.shape[1], pooled, dtype=x.dtype)
    det = _validate.flag(deterministic, "deterministic")
    aligned = _validate.flag(aligned, "aligned")
    grad = backend.roi_align_box_backward(
        g, x, rois, scale, ratio, aligned, pool_mode=mode, deterministic=det
    )
    return restore(grad)


roi_align.__doc__ = roi_align.__doc__.format(conventions=_CONVENTIONS, max_mode=_MAX_MODE)
