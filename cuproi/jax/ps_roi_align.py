"""Position-sensitive RoI Align (R-FCN), differentiable for the score maps."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from typing import NamedTuple

from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _vjp

_GROUPS = _validate.position_sensitive_channels  # output channels C / (PH * PW), or ValueError


class _Options(NamedTuple):
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int


_ps_roi_align = _vjp.pooling("ps_roi_align", channels=_GROUPS)


@_arguments.documented("ps_roi_align")
@_arguments.bfloat16_in_float32
def ps_roi_align(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Array:
    """Differentiable :func:`cuproi.ps_roi_align` on JAX arrays (position-sensitive RoI Align).

    Parameters
    ----------
    {jax_score_maps}
    {jax_boxes}
    output_size, spatial_scale, sampling_ratio
        As in :func:`cuproi.ps_roi_align`; static.

    Returns
    -------
    (K, C_out, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input``
        (:func:`cuproi.ps_roi_align_backward`). The boxes' gradient is zero.

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> x = jnp.stack([jnp.full((4, 4), v, jnp.float32) for v in (1, 2, 3, 4)])[None]
    >>> boxes = jnp.array([[0, 0.0, 0.0, 4.0, 4.0]])
    >>> cuproi.jax.ps_roi_align(x, boxes, 2, sampling_ratio=2)
    Array([[[[1., 2.],
             [3., 4.]]]], dtype=float32)
    >>> grad = jax.grad(lambda x: cuproi.jax.ps_roi_align(x, boxes, 2, sampling_ratio=1).sum())
    >>> grad(x)[0, 3]  # the last bin reads the last map, over the bottom-right quarter
    Array([[0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.25, 0.25],
           [0.  , 0.  , 0.25, 0.25]], dtype=float32)
    """
    ratio = (_validate.sampling_ratio, sampling_ratio)
    call = _arguments.forward(input, boxes, output_size, spatial_scale, ratio, channels=_GROUPS)
    options = _Options(call.pooled, call.scale, *call.options)
    return _ps_roi_align(options, call.x, call.rois)
