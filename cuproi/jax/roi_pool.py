"""RoI Pool (max over quantized bins), differentiable for the features."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from typing import Literal, NamedTuple, overload

import jax
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _callback, _vjp


class _Options(NamedTuple):
    output_size: tuple
    spatial_scale: float
    return_argmax: bool


def _with_argmax(options, x, rois):
    out = _callback.pooled(x, rois, options.output_size)
    result = (out, jax.ShapeDtypeStruct(out.shape, np.int32))
    static = dict(options._asdict(), return_argmax=True)
    return _callback.run("roi_pool", result, {"input": x, "boxes": rois}, **static)


def _primal(options, x, rois):
    if options.return_argmax:
        return _with_argmax(options, x, rois)
    # No gradient to take: no argmax, which the CPU finds twice as fast.
    result = _callback.pooled(x, rois, options.output_size)
    return _callback.run("roi_pool", result, {"input": x, "boxes": rois}, **options._asdict())


def _forward(options, x, rois):
    out, argmax = _with_argmax(options, x, rois)
    result = (out, argmax) if options.return_argmax else out
    return result, argmax  # the argmax saved for the backward


def _backward(options, arrays, argmax, wanted, grad):
    x, _ = arrays
    grad = grad[0] if options.return_argmax else grad  # the argmax has no gradient
    if not wanted[0] or isinstance(grad, jax.custom_derivatives.SymbolicZero):
        return None, None  # the boxes' gradient is zero: the bins are rounded to cells
    inputs = {"grad_output": grad, "boxes": arrays[1], "argmax": argmax}
    static = {"input_shape": tuple(x.shape), "deterministic": _vjp.deterministic()}
    return _callback.run("roi_pool_backward", _callback.like(x), inputs, **static), None


_roi_pool = _vjp.op(_primal, _backward, _forward)


@overload
def roi_pool(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    return_argmax: Literal[False] = False,
) -> Array: ...


@overload
def roi_pool(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    return_argmax: Literal[True],
) -> tuple[Array, Array]: ...


@overload
def roi_pool(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float,
    return_argmax: Literal[True],
) -> tuple[Array, Array]: ...


@_arguments.documented("roi_pool")
@_arguments.bfloat16_in_float32
def roi_pool(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    return_argmax: bool = False,
) -> Array | tuple[Array, Array]:
    """Differentiable :func:`cuproi.roi_pool` on JAX arrays (RoI Pool, max over bins).

    Parameters
    ----------
    {jax_input}
    {jax_boxes}
    output_size, spatial_scale, return_argmax
        As in :func:`cuproi.roi_pool`; static.

    Returns
    -------
    out : (K, C, PH, PW) jax.Array
        Same dtype as ``input``. Differentiable with respect to ``input``: the backward sends
        every output gradient to the cell its bin took the maximum from
        (:func:`cuproi.roi_pool_backward` with the argmax of the forward). The boxes' gradient
        is zero (the bins are rounded to whole cells).
    argmax : (K, C, PH, PW) jax.Array of int32
        With ``return_argmax`` only: each bin's cell ``h * W + w``, -1 for an empty bin.

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0, 0, 3, 3]])
    >>> cuproi.jax.roi_pool(x, boxes, 2)[0, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    >>> jax.grad(lambda x: cuproi.jax.roi_pool(x, boxes, 2).sum())(x)[0, 0]
    Array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """
    call = _arguments.forward(input, boxes, output_size, spatial_scale)
    argmax = _validate.flag(return_argmax, "return_argmax")
    return _roi_pool(_Options(call.pooled, call.scale, argmax), call.x, call.rois)
