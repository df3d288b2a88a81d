"""Multi-level (FPN) RoI Align over a list of levels, differentiable for every level."""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from collections.abc import Sequence
from typing import NamedTuple

from jax import Array
from jax.typing import ArrayLike

from cuproi import _pyramid, _validate
from cuproi._types import Boxes, OutputSize
from cuproi.jax import _arguments, _callback, _vjp


class _Options(NamedTuple):
    output_size: tuple
    spatial_scales: tuple
    sampling_ratio: int
    aligned: bool
    canonical_scale: float
    canonical_level: int


def _primal(options, levels, rois):
    result = _callback.pooled(levels[0], rois, options.output_size)
    inputs = {"features": levels, "boxes": rois}
    return _callback.run("multi_scale_roi_align", result, inputs, **options._asdict())


def _backward(options, arrays, saved, wanted, grad):
    levels, rois = arrays
    if not any(wanted[0]):
        return None, None  # the boxes' gradient is zero: no box backward for the level rule
    shapes = tuple(tuple(x.shape) for x in levels)
    static = dict(options._asdict(), input_shapes=shapes, deterministic=_vjp.deterministic())
    result = [_callback.like(x) for x in levels]
    inputs = {"grad_output": grad, "boxes": rois}
    return _callback.run("multi_scale_roi_align_backward", result, inputs, **static), None


_multi_scale_roi_align = _vjp.op(_primal, _backward)


@_arguments.documented("multi_scale_roi_align")
@_arguments.bfloat16_in_float32
def multi_scale_roi_align(
    features: Sequence[ArrayLike],
    boxes: Boxes[ArrayLike],
    output_size: OutputSize,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Array:
    """Differentiable :func:`cuproi.multi_scale_roi_align` on JAX arrays (FPN RoI Align).

    Parameters
    ----------
    features : list of (N, C, H_l, W_l) jax.Array
        The pyramid levels, finest first, of one dtype (float16, float32 or float64; bfloat16
        is computed in float32 and returned as bfloat16).
    {jax_boxes}
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
        As in :func:`cuproi.multi_scale_roi_align`; static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as the levels; differentiable with respect to every level
        (:func:`cuproi.multi_scale_roi_align_backward`). The boxes' gradient is zero.

    Raises
    ------
    {jax_raises}

    Examples
    --------
    >>> p2, p3 = jnp.zeros((1, 1, 64, 64)), jnp.ones((1, 1, 32, 32))  # strides 4 and 8
    >>> boxes = jnp.array([[0, 0, 0, 50, 50], [0, 0, 0, 200, 200]])
    >>> out = cuproi.jax.multi_scale_roi_align([p2, p3], boxes, 2, [1 / 4, 1 / 8])
    >>> out[:, 0, 0, 0].round(4)  # the small box reads P2 (zeros), the large one P3 (ones)
    Array([0., 1.], dtype=float32)
    >>> loss = lambda levels: cuproi.jax.multi_scale_roi_align(levels, boxes, 2, [1 / 4, 1 / 8])
    >>> [round(float(g.sum()), 4) for g in jax.grad(lambda p: loss(p).sum())([p2, p3])]
    [4.0, 4.0]
    """
    count = _pyramid.count_levels(features, "features")
    levels = _arguments.levels(features)
    pooled = _validate.output_size(output_size)
    ratio = _validate.sampling_ratio(sampling_ratio)
    dtype = levels[0].dtype
    rule = canonical_scale, canonical_level
    scales, _ = _pyramid.level_rule(spatial_scales, count, dtype, *rule)
    rois = _arguments.rois(boxes, levels[0].shape[0], max(scales), dtype)
    _validate.pooled_result(rois.shape[0], levels[0].shape[1], pooled)
    aligned = _validate.flag(aligned, "aligned")
    options = _Options(pooled, tuple(scales), ratio, aligned, *_pyramid.canonical(*rule))
    return _multi_scale_roi_align(options, levels, rois)
