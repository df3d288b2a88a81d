"""Deformable RoI Pooling (Deformable ConvNets): RoI Align with learned per-bin offsets."""

from cuproi import _arguments, _dispatch, _docstrings, _validate
from cuproi._types import ArrayT, Boxes, OutputSize


def _unplaced(xp, offset):
    """(K, 1, PH, PW) bins whose offset is NaN or infinite, or None without offsets.

    Such a bin has no place on the map, so its output and its gradients with respect to its
    offset, its mask and its box are NaN (as from NaN features): a network whose offsets
    diverge sees it in its loss, rather than bins that silently pool 0. The features get
    nothing from it (its samples have no cells).
    """
    return None if offset is None else ~xp.isfinite(offset).all(axis=1, keepdims=True)


def _nan_where(xp, array, bins):
    """``array`` with NaN in the rows of ``bins`` (:func:`_unplaced`, broadcast), in place."""
    if array is not None and bins is not None:
        xp.copyto(array, float("nan"), where=bins)
    return array


def _modulation(call):
    """The call's offset and mask, checked against its boxes and output size, or None."""
    o, m = call.others
    xp, k, dtype = call.backend.xp, len(call.rois), call.x.dtype
    return (
        _validate.offset(xp, o, k, call.pooled, dtype),
        _validate.mask(xp, m, k, call.pooled, dtype),
    )


@_dispatch.on_input_device
@_docstrings.fill()
def deform_roi_pool(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    offset: ArrayT | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: ArrayT | None = None,
) -> ArrayT:
    """Pool every box with bins shifted by learned offsets (Deformable RoI Pooling).

    Parameters
    ----------
    input : (N, C, H, W) array
        Feature maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU). C-contiguous or
        stored channels last, as in :func:`cuproi.roi_align`.
    {boxes}
    offset : (K, 2, PH, PW) array or None
        Per-bin shift: channel 0 along x, channel 1 along y, in units of the box width and
        height, multiplied by ``gamma``. None pools without shifts.
    {output_size}
    {spatial_scale}
    {sampling_ratio}
    gamma : float, optional
        Scale of the offsets (0.1 in the paper and in mmcv).
    mask : (K, 1, PH, PW) array or None
        Modulation of every bin (DCNv2; mmcv's ``ModulatedDeformRoIPoolPack``): the output is
        ``mask * pooled``, multiplied inside the kernel in the same pass. None: no modulation.

    Returns
    -------
    {pooled}

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.roi_align`; also for an ``offset`` or ``mask`` of the wrong shape or
        dtype.

    Notes
    -----
    The semantics of ``mmcv.ops.deform_roi_pool``: an aligned RoI Align average (half-pixel
    shift, no minimum box size) in which bin ``(ph, pw)`` starts at the box corner plus
    ``(gamma * box_w * offset[k, 0, ph, pw], gamma * box_h * offset[k, 1, ph, pw])``. With
    ``offset=None`` this is ``roi_align(..., aligned=True)`` for boxes of at least one cell.
    It is an average of bilinear samples, not a max: it does not reduce to :func:`roi_pool`.
    mmcv and DCNv2 apply the mask outside their kernels (a second pass over the output); here
    it is one multiply per output element in the kernel, with the same result.

    References
    ----------
    J. Dai, H. Qi, Y. Xiong, Y. Li, G. Zhang, H. Hu, Y. Wei, "Deformable Convolutional
    Networks", ICCV 2017.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)
    >>> offset = np.zeros((1, 2, 1, 1), dtype=np.float32)
    >>> offset[0, 0] = 5.0  # shift the bin right by 0.1 * 2 * 5 = 1 cell
    >>> cuproi.deform_roi_pool(x, boxes, offset, 1, sampling_ratio=2)
    array([[[[3.5]]]], dtype=float32)
    >>> mask = np.full((1, 1, 1, 1), 0.5, dtype=np.float32)
    >>> cuproi.deform_roi_pool(x, boxes, offset, 1, sampling_ratio=2, mask=mask)
    array([[[[1.75]]]], dtype=float32)
    """
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    call = _arguments.forward(
        input, boxes, output_size, spatial_scale, *checks, offset=offset, mask=mask
    )
    o, m = _modulation(call)
    out = call.backend.deform_roi_pool(
        call.x, call.rois, o, call.pooled, call.scale, *call.options, m
    )
    return call.restore(_nan_where(call.backend.xp, out, _unplaced(call.backend.xp, o)))


@_dispatch.on_input_device
@_docstrings.fill(op="deform_roi_pool")
def deform_roi_pool_backward(
    grad_output: ArrayT,
    input: ArrayT,
    boxes: Boxes[ArrayT],
    offset: ArrayT | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: ArrayT | None = None,
    *,
    deterministic: bool = False,
    channels_last: bool = False,
) -> tuple[ArrayT, ArrayT | None, ArrayT | None]:
    """Gradients of :func:`deform_roi_pool` with respect to the features, offsets and mask.

    Parameters
    ----------
    {grad_output}
    input : (N, C, H, W) array
        The features of the forward call (the offset gradient reads them).
    boxes, offset, output_size, spatial_scale, sampling_ratio, gamma, mask
        As in the forward call.
    {deterministic}
    channels_last : bool, optional
        Return ``grad_input`` stored channels last, as :func:`cuproi.roi_align_backward` does.

    Returns
    -------
    grad_input : (N, C, H, W) array
        Same array type and dtype as ``grad_output``.
    grad_offset : (K, 2, PH, PW) array or None
        Same dtype as ``offset``; None when ``offset`` is None.
    grad_mask : (K, 1, PH, PW) array or None
        Same dtype as ``mask``: the sum over channels of ``grad_output`` times the unmodulated
        average; None when ``mask`` is None.

        Always three values, one per differentiable argument, None for an argument not given
        (the rule ``grad_offset`` already followed), so the return does not change shape with
        the arguments. The box gradient is :func:`deform_roi_pool_box_backward`.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`deform_roi_pool`; also when ``grad_output`` does not match.

    Notes
    -----
    ``grad_offset`` is the true derivative of the forward, taken from the right where the
    bilinear surface has a kink (at integer sample positions), and zero where the forward does
    not move: outside ``[-1, H] x [-1, W]`` and across the edge bands ``[-1, 0)`` and ``(H-1,
    H]`` along the clamped axis. Inside a band the derivative along the other axis is the slope
    of the edge row or column; mmcv gets that wrong (it computes it from the unclamped
    position). On the GPU both gradients accumulate with atomic adds by default, so their last
    bits may vary between runs.
    {fixed_point}
    The offset (mask) gradient is then summed over
    the channels from a per-channel array, ``K * C * 2 * PH * PW`` (``K * C * PH * PW``)
    values. With a mask, ``grad_input`` and ``grad_offset`` are those of the unmodulated op
    times the mask.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)
    >>> offset = np.zeros((1, 2, 1, 1), dtype=np.float32)
    >>> g = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> grad_x, grad_offset, _ = cuproi.deform_roi_pool_backward(g, x, boxes, offset, 1,
    ...                                                          sampling_ratio=2)
    >>> grad_offset.ravel()  # 0.1 * 2 cells * slopes of 1 (along x) and 4 (along y)
    array([0.2, 0.8], dtype=float32)
    """
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    call = _arguments.box_backward(
        grad_output, input, boxes, output_size, spatial_scale, *checks, offset=offset, mask=mask
    )
    o, m = _modulation(call)
    grads = call.backend.deform_roi_pool_backward(
        call.g,
        call.x,
        call.rois,
        o,
        call.scale,
        *call.options,
        m,
        deterministic=_validate.flag(deterministic, "deterministic"),
        channels_last=_validate.flag(channels_last, "channels_last"),
    )
    grad_input, *per_bin = grads
    unplaced = _unplaced(call.backend.xp, o)
    # Each gradient in the dtype of what it differentiates: grad_output's, the offset's, the mask's.
    per_bin = [_nan_where(call.backend.xp, grad, unplaced) for grad in per_bin]
    dtypes = (call.grad_dtype, *(None if a is None else a.dtype for a in call.others))
    return tuple(
        None if grad is None else call.restore(_validate.cast(grad, dtype))
        for grad, dtype in zip((grad_input, *per_bin), dtypes, strict=True)
    )


@_dispatch.on_input_device
@_docstrings.fill(op="deform_roi_pool")
def deform_roi_pool_box_backward(
    grad_output: ArrayT,
    input: ArrayT,
    boxes: Boxes[ArrayT],
    offset: ArrayT | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: ArrayT | None = None,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`deform_roi_pool` with respect to the box coordinates.

    Parameters
    ----------
    {grad_output}
    input : (N, C, H, W) array
        The features of the forward call.
    boxes, offset, output_size, spatial_scale, sampling_ratio, gamma, mask
        As in the forward call.
    {box_deterministic}

    Returns
    -------
    {box_gradient}

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`deform_roi_pool_backward`.

    Notes
    -----
    The exact derivative of the forward: bin ``(ph, pw)`` starts at ``x1 * spatial_scale -
    0.5 + gamma * offset_x * box_width`` and a sample at fraction ``u`` of the box sits
    ``u * box_width`` further, so it moves with ``x1`` by ``spatial_scale * (1 - gamma *
    offset_x - u)`` and with ``x2`` by ``spatial_scale * (gamma * offset_x + u)``, times the
    sample's slope (the right derivative of the bilinear surface, 0 in the edge bands), the
    forward's weight 1/count and the mask. The adaptive sample count is piecewise constant
    and contributes 0. Where a coefficient is negative (a large negative offset) the slope is
    still taken from the right of the sample, so at a kink this is the derivative from that
    side. Neither mmcv nor DCN gives a box gradient.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # slope 1 along x, 4 along y
    >>> boxes = np.array([[0, 1.0, 1.0, 3.0, 3.0]])
    >>> g = np.ones((1, 1, 1, 1))
    >>> cuproi.deform_roi_pool_box_backward(g, x, boxes, None, 1, sampling_ratio=2)
    array([[0. , 0.5, 2. , 0.5, 2. ]])
    """
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    call = _arguments.box_backward(
        grad_output, input, boxes, output_size, spatial_scale, *checks, offset=offset, mask=mask
    )
    o, m = _modulation(call)
    xp, det = call.backend.xp, _validate.flag(deterministic, "deterministic")
    grad = call.backend.deform_roi_pool_box_backward(
        call.g, call.x, call.rois, o, call.scale, *call.options, m, deterministic=det
    )
    if o is not None:  # a box with an unplaced bin: NaN for its coordinates
        _nan_where(xp, grad[:, 1:], _unplaced(xp, o).any(axis=(1, 2, 3))[:, None])
    return call.restore(grad)
