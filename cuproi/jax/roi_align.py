"""RoI Align (avg and max mode), differentiable for the features and the boxes."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from typing import NamedTuple

from jax import Array
from jax.typing import ArrayLike

from cuproi import _validate
from cuproi._types import Boxes, OutputSize, PoolMode
from cuproi.jax import _arguments, _vjp


class _Options(NamedTuple):
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    pool_mode: str


# The max mode's backward finds each bin's winning sample again from the features.
_roi_align = _vjp.pooling(
    "roi_align", box_gradient=True, reads_input=lambda options: options.pool_mode == "max"
)


@_arguments.documented("roi_align")
@_arguments.bfloat16_in_float32
def roi_align(
    input: ArrayLike,
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: PoolMode = "avg",
) -> Array:
    """Differentiable :func:`cuproi.roi_align` on JAX arrays (RoI Align).

    Parameters
    ----------
    {jax_input}
    {jax_boxes}
    output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        As in :func:`cuproi.roi_align`; static (Python values, not traced).

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``. Differentiable with respect to ``input``
        (:func:`cuproi.roi_align_backward`) and to the boxes
        (:func:`cuproi.roi_align_box_backward`; per-image boxes get theirs through the
        concatenation that builds the (K, 5) boxes, and the batch index gets 0).

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> cuproi.jax.roi_align(x, boxes, 1, sampling_ratio=2, aligned=True)
    Array([[[[2.5]]]], dtype=float32)
    >>> loss = lambda x: cuproi.jax.roi_align(x, boxes, 1, sampling_ratio=2, aligned=True).sum()
    >>> jax.jit(jax.grad(loss))(x)[0, 0]
    Array([[0.25, 0.25, 0.  , 0.  ],
           [0.25, 0.25, 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    >>> box_loss = lambda b: cuproi.jax.roi_align(x, b, 1, sampling_ratio=2, aligned=True).sum()
    >>> jax.grad(box_loss)(boxes)  # slopes 1 along x and 4 along y, half to each side
    Array([[0. , 0.5, 2. , 0.5, 2. ]], dtype=float32)
    """
    checks = (_validate.sampling_ratio, sampling_ratio), (_validate.pool_mode, pool_mode)
    call = _arguments.forward(input, boxes, output_size, spatial_scale, *checks)
    ratio, mode = call.options
    aligned = _validate.flag(aligned, "aligned")
    options = _Options(call.pooled, call.scale, ratio, aligned, mode)
    return _roi_align(options, call.x, call.rois)
