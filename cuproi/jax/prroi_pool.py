"""Precise RoI Pooling (IoU-Net), differentiable for the features and the boxes."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from jax import Array
from jax.typing import ArrayLike

from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _vjp

_prroi_pool = _vjp.pooling("prroi_pool", box_gradient=True)


@_arguments.documented("prroi_pool")
@_arguments.bfloat16_in_float32
def prroi_pool(
    input: ArrayLike, boxes: Boxes[ArrayLike], output_size: OutputSize, spatial_scale: float = 1.0
) -> Array:
    """Differentiable :func:`cuproi.prroi_pool` on JAX arrays (Precise RoI Pooling).

    Parameters
    ----------
    {jax_input}
    {jax_boxes}
    output_size, spatial_scale
        As in :func:`cuproi.prroi_pool`; static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``. Differentiable with respect to ``input``
        (:func:`cuproi.prroi_pool_backward`) and to the boxes
        (:func:`cuproi.prroi_pool_box_backward`).

    Raises
    ------
    {jax_raises}

    Examples
    --------
    A ramp along x: the average of a linear surface is its value at the bin centre, which
    moves by half of a box edge's shift.

    >>> x = jnp.tile(jnp.arange(6.0), (6, 1))[None, None]
    >>> boxes = jnp.array([[0, 1.0, 1.0, 4.0, 4.0]])
    >>> cuproi.jax.prroi_pool(x, boxes, (1, 2)).round(4)
    Array([[[[1.75, 3.25]]]], dtype=float32)
    >>> grad = jax.grad(lambda b: cuproi.jax.prroi_pool(x, b, 1).sum())(boxes)
    >>> grad[0, 1::2].round(4)  # x1 and x2
    Array([0.5, 0.5], dtype=float32)
    """
    call = _arguments.forward(input, boxes, output_size, spatial_scale)
    return _prroi_pool(_vjp.Options(call.pooled, call.scale), call.x, call.rois)
