"""The checks of a call of cuproi.jax, in cuproi's order, and what the ops share before them.

cuproi's array functions check their arguments in one fixed order (:mod:`cuproi._arguments`).
An op of cuproi.jax makes the same checks when it is called, also while ``jax.jit`` traces it,
so that it raises cuproi's TypeError, ValueError or IndexError with cuproi's message: on
:class:`Spec` stand-ins of the JAX arrays (shapes and dtypes), and on a host copy of the boxes
whenever their values are known (not traced). The values of traced boxes are checked by cuproi
itself in the callback, when the computation runs.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from cuproi import _arguments, _docstrings, _pyramid, _validate
from cuproi._spec import Spec, xp
from cuproi._types import F

# Docstring blocks of the ops, placed by cuproi._docstrings.fill (a ``{name}`` line).
_DOCSTRINGS = {
    "jax_input": """
        input : (N, C, H, W) jax.Array
            Features, float16, float32 or float64 (float64 needs ``jax_enable_x64``); bfloat16
            is computed in float32 and returned as bfloat16.
        """,
    "jax_score_maps": """
        input : (N, C, H, W) jax.Array
            Score maps, ``C = C_out * PH * PW``; float16, float32 or float64 (bfloat16 is
            computed in float32 and returned as bfloat16).
        """,
    "jax_boxes": """
        boxes : (K, 5) jax.Array or list of (L_i, 4) jax.Array
            ``[batch_index, x1, y1, x2, y2]`` per box in input-image coordinates, or one
            ``[x1, y1, x2, y2]`` array per image (torchvision's convention).
        """,
    "jax_raises": """
        TypeError, ValueError, IndexError
            As :func:`cuproi.{op}`, when called, also while ``jax.jit`` traces. Bad values of
            traced boxes are found when the computation runs: on the CPU JAX raises a
            ``JaxRuntimeError`` that holds cuproi's error and message (see :mod:`cuproi.jax`).
        """,
}


def documented(op: str) -> Callable[[F], F]:
    """Decorator: the docstring blocks of cuproi.jax in the docstring of ``op``."""
    return _docstrings.fill(op=op, **_DOCSTRINGS)


def spec(array):
    return Spec(array.shape, array.dtype)


def _host(array):
    """The array's values on the host; zeros of its shape and dtype when they are traced."""
    try:
        return np.asarray(array)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return np.zeros(array.shape, array.dtype)


def rois(value, images, scale, dtype, rotated=False):
    """The boxes as one (K, 5) JAX array (K, 6 rotated) in the compute dtype of ``dtype``.

    From a (K, 5) array or a list of per-image (L, 4) arrays (torchvision's convention; the
    concatenation is a JAX operation, so per-image boxes get their own gradients). cuproi's own
    check runs on a host copy: all of it (batch indices, finite and bounded values) when the
    values are known, shapes and dtypes when they are traced.
    """
    check = _validate.rotated_boxes if rotated else _validate.boxes
    per_image = isinstance(value, (list, tuple))
    arrays = [jnp.asarray(b) for b in value] if per_image else jnp.asarray(value)
    check(np, [_host(b) for b in arrays] if per_image else _host(arrays), images, scale, dtype)
    ct = _validate.compute_dtype(dtype)
    if not per_image:
        return arrays.astype(ct)
    parts = [
        jnp.concatenate([jnp.full((b.shape[0], 1), i, ct), b.astype(ct)], axis=1)
        for i, b in enumerate(arrays)
    ]
    return jnp.concatenate(parts) if parts else jnp.zeros((0, 6 if rotated else 5), ct)


class Call(NamedTuple):
    """A forward's checked arguments: JAX features and boxes, and the static values."""

    x: jax.Array
    rois: jax.Array
    pooled: tuple[int, int]
    scale: float
    options: tuple


def forward(input, boxes, output_size, spatial_scale, *checks, rotated=False, channels=None):
    """A forward's arguments, checked in the order of :func:`cuproi._arguments.forward`.

    ``output_size``, ``spatial_scale``, the option ``checks`` (``(check, value, *args)``),
    the features, ``channels`` (the output's channels from the input's, raising for a count it
    refuses), the boxes (rotated ones with ``rotated``), the size of the output.
    """
    x = jnp.asarray(input)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    values = _arguments.options(checks)
    _validate.features(xp, spec(x))
    out_channels = x.shape[1] if channels is None else channels(x.shape[1], pooled)
    r = rois(boxes, x.shape[0], scale, x.dtype, rotated)
    _validate.pooled_result(r.shape[0], out_channels, pooled)
    return Call(x, r, pooled, scale, values)


def levels(features):
    """Pyramid levels as JAX arrays, checked as :func:`cuproi._pyramid.level_features` does."""
    _pyramid.count_levels(features, "features")
    arrays = [jnp.asarray(x) for x in features]
    _pyramid.level_features(xp, [spec(x) for x in arrays])
    return arrays


def modulation(value, k, pooled, dtype, check):
    """An offset or a mask (or None) as a JAX array, checked (``check``: its _validate check)."""
    if value is None:
        return None
    value = jnp.asarray(value)
    check(xp, spec(value), k, pooled, dtype)
    return value


def _float32(value):
    """``value`` with its bfloat16 arrays (also inside lists and tuples) cast to float32."""
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(item) for item in value)
    if getattr(value, "dtype", None) == jnp.bfloat16:
        return jnp.asarray(value, jnp.float32)
    return value


def _bfloat16(result):
    """A float result as bfloat16 (roi_pool's argmax stays int32)."""
    return result.astype(jnp.bfloat16) if jnp.issubdtype(result.dtype, jnp.floating) else result


def bfloat16_in_float32(function: F) -> F:
    """Compute ``function``'s bfloat16 arrays in float32; bfloat16 features give bfloat16.

    NumPy and CuPy hold no bfloat16, what mixed precision in JAX makes. The casts are JAX
    operations: ``jax.grad`` and ``jax.jit`` see through them, and the gradients of bfloat16
    arrays come back in bfloat16. The features are the first argument (or its first level).
    """

    @functools.wraps(function)
    def wrapper(input, *args, **kwargs):
        kwargs = {name: _float32(value) for name, value in kwargs.items()}
        result = function(_float32(input), *_float32(args), **kwargs)
        first = input[0] if isinstance(input, (list, tuple)) and input else input
        if getattr(first, "dtype", None) == jnp.bfloat16:
            return jax.tree.map(_bfloat16, result)
        return result

    return cast(F, wrapper)
