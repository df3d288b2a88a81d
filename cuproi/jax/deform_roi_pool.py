"""Deformable RoI Pooling (and modulated, with a mask), differentiable for every array."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from typing import NamedTuple

from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _callback, _vjp


class _Options(NamedTuple):
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    gamma: float


def _inputs(x, rois, offset, mask):
    return {"input": x, "boxes": rois, "offset": offset, "mask": mask}


def _primal(options, x, rois, offset, mask):
    result = _callback.pooled(x, rois, options.output_size)
    inputs = _inputs(x, rois, offset, mask)
    return _callback.run("deform_roi_pool", result, inputs, **options._asdict())


def _backward(options, arrays, saved, wanted, grad):
    x, rois, offset, mask = arrays
    static = dict(options._asdict(), deterministic=_vjp.deterministic())
    inputs = {"grad_output": grad, **_inputs(x, rois, offset, mask)}
    grad_x = grad_offset = grad_mask = grad_rois = None
    if wanted[0] or wanted[2] or wanted[3]:  # one call gives all three
        result = tuple(None if a is None else _callback.like(a) for a in (x, offset, mask))
        grad_x, grad_offset, grad_mask = _callback.run(
            "deform_roi_pool_backward", result, inputs, **static
        )
    if wanted[1]:
        grad_rois = _callback.run(
            "deform_roi_pool_box_backward", _callback.like(rois), inputs, **static
        )
    return grad_x, grad_rois, grad_offset, grad_mask


_deform_roi_pool = _vjp.op(_primal, _backward)


@_arguments.documented("deform_roi_pool")
@_arguments.bfloat16_in_float32
def deform_roi_pool(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    offset: ArrayLike | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: ArrayLike | None = None,
) -> Array:
    """Differentiable :func:`cuproi.deform_roi_pool` on JAX arrays (Deformable RoI Pooling).

    Parameters
    ----------
    {jax_input}
    {jax_boxes}
    offset : (K, 2, PH, PW) jax.Array or None
        Per-bin shift, channel 0 along x and channel 1 along y, in units of the box width and
        height, multiplied by ``gamma``; floating. None pools without shifts.
    output_size, spatial_scale, sampling_ratio, gamma
        As in :func:`cuproi.deform_roi_pool`; static.
    mask : (K, 1, PH, PW) jax.Array, optional
        Per-bin modulation (Deformable ConvNets v2), floating.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``. Differentiable with respect to ``input``, ``offset`` and
        ``mask`` (:func:`cuproi.deform_roi_pool_backward`; each gradient in its array's
        dtype) and to the boxes (:func:`cuproi.deform_roi_pool_box_backward`).

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> offset = jnp.zeros((1, 2, 1, 1)).at[0, 0].set(5.0)  # right by 0.1 * 2 * 5 = 1 cell
    >>> cuproi.jax.deform_roi_pool(x, boxes, offset, 1, sampling_ratio=2)
    Array([[[[3.5]]]], dtype=float32)
    >>> loss = lambda o: cuproi.jax.deform_roi_pool(x, boxes, o, 1, sampling_ratio=2).sum()
    >>> jax.grad(loss)(jnp.zeros((1, 2, 1, 1))).ravel()  # 0.1 * 2 cells * slopes 1 and 4
    Array([0.2, 0.8], dtype=float32)
    """
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    call = _arguments.forward(input, boxes, output_size, spatial_scale, *checks)
    ratio, shift = call.options
    k, x = call.rois.shape[0], call.x
    offset = _arguments.modulation(offset, k, call.pooled, x.dtype, _validate.offset)
    mask = _arguments.modulation(mask, k, call.pooled, x.dtype, _validate.mask)
    options = _Options(call.pooled, call.scale, ratio, shift)
    return _deform_roi_pool(options, x, call.rois, offset, mask)
