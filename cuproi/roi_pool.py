"""RoI Pool (Fast R-CNN): max over quantized bins, torchvision's semantics."""

from typing import Literal, overload

from cuproi import _arguments, _dispatch, _docstrings, _validate
from cuproi._types import ArrayT, Boxes, OutputSize, Shape


@overload
def roi_pool(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    return_argmax: Literal[False] = False,
) -> ArrayT: ...


@overload
def roi_pool(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    return_argmax: Literal[True],
) -> tuple[ArrayT, ArrayT]: ...


@overload
def roi_pool(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float,
    return_argmax: Literal[True],
) -> tuple[ArrayT, ArrayT]: ...


@_dispatch.on_input_device
@_docstrings.fill()
def roi_pool(
    input: ArrayT,
    boxes: Boxes[ArrayT],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    return_argmax: bool = False,
) -> ArrayT | tuple[ArrayT, ArrayT]:
    """Pool a fixed-size feature from every box by max pooling over quantized bins (RoI Pool).

    Parameters
    ----------
    {input}
    {boxes}
    {output_size}
    {spatial_scale}
    return_argmax : bool, optional
        Also return the position of every maximum, which :func:`roi_pool_backward` needs.

    Returns
    -------
    out : (K, C, PH, PW) array
        Same array type, device and dtype as ``input``.
    argmax : (K, C, PH, PW) int32 array
        Only with ``return_argmax``: flat index ``h * W + w`` of each maximum within its
        ``(H, W)`` plane, or -1 for an empty bin.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.roi_align`.

    Notes
    -----
    The box is quantized to whole cells, ``round(x * spatial_scale)`` (half away from zero), its
    end inclusive and its size at least one cell; bin ``p`` spans
    ``[floor(p * size / P), ceil((p + 1) * size / P))`` cells from the box start (bins may
    overlap), clipped to the map. A bin left empty gives 0 with argmax -1. The first maximum in
    scan order (rows, then columns) wins ties. These equal ``torchvision.ops.roi_pool``. Beyond
    torchvision: a bin whose values are all -inf gives -inf (not -FLT_MAX) with a valid argmax,
    and a NaN in a bin propagates to the output.

    References
    ----------
    R. Girshick, "Fast R-CNN", ICCV 2015.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0, 0, 3, 3]], dtype=np.float32)
    >>> out, argmax = cuproi.roi_pool(x, boxes, 2, return_argmax=True)
    >>> out[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    >>> argmax[0, 0]
    array([[ 5,  7],
           [13, 15]], dtype=int32)
    """
    argmax = (_validate.flag, return_argmax, "return_argmax")
    call = _arguments.forward(input, boxes, output_size, spatial_scale, argmax)
    return call.run("roi_pool", call.x, call.rois, call.pooled, call.scale)


@_dispatch.on_input_device
@_docstrings.fill(op="roi_pool")
def roi_pool_backward(
    grad_output: ArrayT,
    boxes: Boxes[ArrayT],
    argmax: ArrayT,
    input_shape: Shape,
    *,
    deterministic: bool = False,
) -> ArrayT:
    """Gradient of :func:`roi_pool` with respect to its input features.

    Parameters
    ----------
    {grad_output}
    boxes : (K, 5) array or list of (L_i, 4) arrays
        The boxes of the forward call (for their batch indices).
    argmax : (K, C, PH, PW) integer array
        The ``argmax`` returned by ``roi_pool(..., return_argmax=True)``.
    {input_shape}
    {deterministic}

    Returns
    -------
    (N, C, H, W) array
        Every output gradient added to the cell its bin took the maximum from; same array type
        and dtype as ``grad_output``.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.roi_align`; also for an ``argmax`` of another shape or a non-integer
        dtype.

    Notes
    -----
    Overlapping bins can add to one cell; on the GPU these sums use atomic adds by default, so
    their order may vary between runs.
    {fixed_point}
    Empty bins (argmax -1) contribute nothing.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0, 0, 3, 3]], dtype=np.float32)
    >>> out, argmax = cuproi.roi_pool(x, boxes, 2, return_argmax=True)
    >>> cuproi.roi_pool_backward(np.ones_like(out), boxes, argmax, x.shape)[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """
    backend, (g, b, a), restore = _dispatch.prepare(
        grad_output=grad_output, boxes=boxes, argmax=argmax
    )
    shape = _validate.input_shape(input_shape)
    rois = _validate.boxes(backend.xp, b, shape[0], None, g.dtype)  # only batch indices used
    if g.ndim != 4:
        raise ValueError(f"grad_output must be a 4-D array (K, C, PH, PW); got shape {g.shape}")
    g = _validate.grad_output(backend.xp, g, len(rois), shape[1], g.shape[2:])
    a = _validate.argmax(backend.xp, a, g.shape, shape[2] * shape[3])
    det = _validate.flag(deterministic, "deterministic")
    return restore(backend.roi_pool_backward(g, rois, a, shape, deterministic=det))
