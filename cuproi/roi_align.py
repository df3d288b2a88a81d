"""RoI Align (Mask R-CNN): average of bilinear samples in every bin, torchvision's semantics."""

from cuproi import _arguments, _dispatch, _docstrings, _validate
from cuproi._types import ArrayT, Boxes, OutputSize, PoolMode, Shape

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
    zero or negative size gives zeros (as torchvision's CUDA kernel does; its CPU kernel raises
    a ValueError for a box flipped by a bin or more along one side only). Coordinates are
    computed in float32 (float64 for float64 features); float16 features accumulate in float32.
"""


_MAX_MODE = """
    ``pool_mode="max"`` (mmcv's ``RoIAlign(pool_mode='max')``) keeps the largest of the bin's
    ``gh x gw`` bilinear samples instead of their average, on the same sampling grid (both
    ``aligned`` conventions). As in mmcv a sample outside ``[-1, H] x [-1, W]`` takes part with
    value 0; the first maximum in scan order (sample rows, then columns) wins ties; a NaN sample
    wins, so NaN propagates as in :func:`roi_pool`; a bin without samples (a zero-size aligned
    box with adaptive sampling) gives 0, where mmcv gives -FLT_MAX on CUDA and -10000 on CPU.
"""


@_dispatch.on_input_device
@_docstrings.fill(conventions=_CONVENTIONS, max_mode=_MAX_MODE)
def roi_align(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: PoolMode = "avg",
) -> ArrayT:
    """Pool a fixed-size feature from every box by bilinear sampling (RoI Align).

    Parameters
    ----------
    input : (N, C, H, W) array
        Feature maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU). C-contiguous or
        stored channels last (torch's ``channels_last``), read as they are; any other strides
        are copied to C order first.
    {boxes}
    {output_size}
    {spatial_scale}
    {sampling_ratio}
    aligned : bool, optional
        Shift boxes by -0.5 cell (half-pixel convention).
    pool_mode : {"avg", "max"}, optional
        Average the samples of every bin (torchvision, the default) or keep their maximum
        (mmcv's max mode). See Notes.

    Returns
    -------
    {pooled}

    Raises
    ------
    {type_error}
    ValueError
        Wrong ranks or shapes (a (K, 4) box array), non-positive sizes or scale, non-finite or
        fractional box values, arrays on different devices; sizes beyond cuproi's limits
        (``output_size`` above 16384 bins per side, an output above 2**32 elements,
        ``spatial_scale`` above 2**20, coordinates beyond 2**20 feature cells once scaled).
    {index_error}

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
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)
    >>> cuproi.roi_align(x, boxes, output_size=1, sampling_ratio=2, aligned=True)
    array([[[[2.5]]]], dtype=float32)
    >>> cuproi.roi_align(x, boxes, output_size=1, sampling_ratio=2, aligned=True, pool_mode="max")
    array([[[[5.]]]], dtype=float32)
    """
    checks = (
        (_validate.sampling_ratio, sampling_ratio),
        (_validate.flag, aligned, "aligned"),
        (_validate.pool_mode, pool_mode),
    )
    call = _arguments.forward(input, boxes, output_size, spatial_scale, *checks)
    return call.run("roi_align", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="roi_align")
def roi_align_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    input_shape: Shape,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    pool_mode: PoolMode = "avg",
    input: ArrayT | None = None,
    deterministic: bool = False,
    channels_last: bool = False,
) -> ArrayT:
    """Gradient of :func:`roi_align` with respect to its input features.

    Parameters
    ----------
    {grad_output}
    {forward_boxes}
    {input_shape}
    output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        As in the forward call.
    input : (N, C, H, W) array, optional
        The features of the forward call, of shape ``input_shape``. Required with
        ``pool_mode="max"``: the backward finds every bin's winning sample again from them
        (no argmax is stored, so the forward's output is all a caller keeps). Checked but not
        read in avg mode, whose gradient does not depend on the features.
    {deterministic}
    {channels_last}

    Returns
    -------
    (N, C, H, W) array
        Gradient with respect to the features, same array type and dtype as ``grad_output``.
        In max mode each bin's gradient goes to the 4 bilinear neighbours of its winning
        sample (as mmcv's), nowhere when the winner is an out-of-range zero or the bin is empty.

    Raises
    ------
    {backward_errors}

    Notes
    -----
    The backward is the exact transpose of the forward (the adjoint identity ``<roi_align(x), g>
    == <x, roi_align_backward(g)>`` holds).
    {atomic_adds}
    {fixed_point}
    The gradient with respect to the boxes is :func:`roi_align_box_backward`.

    Examples
    --------
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
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.flag, aligned, "aligned")
    channels_last = _validate.flag(channels_last, "channels_last")
    max_mode = mode == "max"  # it reads the features, and computes in their dtype
    call = _arguments.backward(
        grad_output,
        boxes,
        input_shape,
        output_size,
        spatial_scale,
        *checks,
        input=input,
        reads_input=max_mode,
    )
    grad = call.backend.roi_align_backward(
        call.g,
        call.rois,
        call.shape,
        call.scale,
        *call.options,
        pool_mode=mode,
        input=call.x,
        deterministic=_validate.flag(deterministic, "deterministic"),
        channels_last=channels_last,
    )
    return call.restore(_validate.cast(grad, call.grad_dtype))


@_dispatch.on_input_device
@_docstrings.fill(op="roi_align")
def roi_align_box_backward(
    grad_output: ArrayT,
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    pool_mode: PoolMode = "avg",
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`roi_align` with respect to the box coordinates.

    Parameters
    ----------
    {grad_output}
    input : (N, C, H, W) array
        The features of the forward call (the gradient is their slope at every sample).
    boxes, output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        As in the forward call.
    {box_deterministic}

    Returns
    -------
    {box_gradient}

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
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # slope 1 along x, 4 along y
    >>> boxes = np.array([[0, 0.5, 0.5, 2.5, 2.5]])
    >>> g = np.ones((1, 1, 1, 1))
    >>> cuproi.roi_align_box_backward(g, x, boxes, 1, sampling_ratio=2, aligned=True)
    array([[0. , 0.5, 2. , 0.5, 2. ]])
    """
    mode = _validate.pool_mode(pool_mode)
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.flag, aligned, "aligned")
    call = _arguments.box_backward(grad_output, input, boxes, output_size, spatial_scale, *checks)
    arguments = call.g, call.x, call.rois, call.scale
    return call.run(
        "roi_align_box_backward", *arguments, pool_mode=mode, deterministic=deterministic
    )
