"""Position-sensitive RoI Pool (R-FCN), differentiable for the score maps."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _vjp

_GROUPS = _validate.position_sensitive_channels  # output channels C / (PH * PW), or ValueError


_ps_roi_pool = _vjp.pooling("ps_roi_pool", channels=_GROUPS)


@_arguments.documented("ps_roi_pool")
@_arguments.bfloat16_in_float32
def ps_roi_pool(
    input: ArrayLike, boxes: Boxes[ArrayLike], output_size: OutputSize, spatial_scale: float = 1.0
) -> Array:
    """Differentiable :func:`cuproi.ps_roi_pool` on JAX arrays (position-sensitive RoI Pool).

    Parameters
    ----------
    {jax_score_maps}
    {jax_boxes}
    output_size, spatial_scale
        As in :func:`cuproi.ps_roi_pool`; static.

    Returns
    -------
    (K, C_out, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input``
        (:func:`cuproi.ps_roi_pool_backward`). The boxes' gradient is zero (the bins are
        rounded to whole cells).

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> x = jnp.arange(64.0).reshape(1, 4, 4, 4)
    >>> boxes = jnp.array([[0, 0.0, 0.0, 4.0, 4.0]])
    >>> cuproi.jax.ps_roi_pool(x, boxes, 2)
    Array([[[[ 2.5, 20.5],
             [42.5, 60.5]]]], dtype=float32)
    >>> jax.grad(lambda x: cuproi.jax.ps_roi_pool(x, boxes, 2).sum())(x)[0, 1]
    Array([[0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    """
    call = _arguments.forward(input, boxes, output_size, spatial_scale, channels=_GROUPS)
    return _ps_roi_pool(_vjp.Options(call.pooled, call.scale), call.x, call.rois)
