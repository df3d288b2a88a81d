"""Rotated RoI Align (detectron2, mmcv), differentiable for the features."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from typing import NamedTuple

from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _vjp


class _Options(NamedTuple):
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    clockwise: bool


_roi_align_rotated = _vjp.pooling("roi_align_rotated")


@_arguments.documented("roi_align_rotated")
@_arguments.bfloat16_in_float32
def roi_align_rotated(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Array:
    """Differentiable :func:`cuproi.roi_align_rotated` on JAX arrays (rotated RoI Align).

    Parameters
    ----------
    {jax_input}
    boxes : (K, 6) jax.Array or list of (L_i, 5) jax.Array
        ``[batch_index, cx, cy, w, h, angle]`` per box (angle in degrees, counter-clockwise),
        or one ``[cx, cy, w, h, angle]`` array per image.
    output_size, spatial_scale, sampling_ratio, aligned, clockwise
        As in :func:`cuproi.roi_align_rotated`; static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input``
        (:func:`cuproi.roi_align_rotated_backward`). The boxes get no gradient (cuproi has no
        box backward for rotated boxes): their cotangent is zero.

    Raises
    ------
    {jax_raises}

    Examples
    --------
    A ramp along x, read by a box of height 2 turned by 90 degrees: its two rows of bins lie
    side by side along x, about the centre 4 - 0.5 (``aligned=True``).

    >>> x = jnp.tile(jnp.arange(8.0), (8, 1))[None, None]
    >>> boxes = jnp.array([[0, 4.0, 4.0, 4.0, 2.0, 90.0]])
    >>> cuproi.jax.roi_align_rotated(x, boxes, (2, 1), sampling_ratio=1)[0, 0, :, 0]
    Array([3., 4.], dtype=float32)
    """
    ratio = (_validate.sampling_ratio, sampling_ratio)
    call = _arguments.forward(input, boxes, output_size, spatial_scale, ratio, rotated=True)
    flags = _validate.flag(aligned, "aligned"), _validate.flag(clockwise, "clockwise")
    options = _Options(call.pooled, call.scale, *call.options, *flags)
    return _roi_align_rotated(options, call.x, call.rois)
