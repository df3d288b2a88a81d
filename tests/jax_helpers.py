"""The ops of cuproi.jax as the JAX tests call them: every op's call on either module, its
inputs, and its expected cotangents from cuproi's backward functions (tests/test_jax*.py)."""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
from roi_op_tester import box_zoo

import cuproi

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
cj = pytest.importorskip("cuproi.jax")

SCALE = 0.7
OUT = (3, 4)
SHAPE = (2, 3, 10, 12)

# [batch_index, cx, cy, w, h, angle]: turned, empty, flipped, outside and beyond the map.
ROTATED = np.array(
    [
        [0, 5.0, 4.0, 6.0, 3.0, 0.0],
        [1, 6.0, 5.0, 7.5, 4.5, 30.0],
        [0, 3.0, 7.0, 4.0, 6.0, 90.0],
        [1, 8.0, 2.0, 5.0, 5.0, -45.0],
        [0, 6.0, 5.0, 0.0, 0.0, 10.0],
        [1, 6.0, 5.0, -2.0, 3.0, 20.0],
        [0, -6.0, 20.0, 4.0, 4.0, 60.0],
        [1, 6.0, 5.0, 30.0, 26.0, 77.0],
    ]
)
# FPN levels P2 and P3 of a 48 x 64 image; with canonical_scale 16 a box of side 8 or more
# goes to P3. Small, large, flipped, outside and level-straddling boxes of both images.
LEVELS = [(2, 3, 12, 16), (2, 3, 6, 8)]
LEVEL_SCALES = [1 / 4, 1 / 8]
LEVEL_BOXES = np.array(
    [
        [0, 2.0, 3.0, 7.0, 9.0],
        [1, 10.0, 4.0, 40.0, 30.0],
        [0, 30.0, 20.0, 33.0, 22.5],
        [1, -8.0, -4.0, 12.0, 18.0],
        [0, 50.0, 40.0, 44.0, 35.0],
        [1, 0.0, 0.0, 64.0, 48.0],
        [0, 60.0, 40.0, 70.0, 52.0],
    ]
)


def _ct(dtype):
    """The boxes' dtype for ``dtype`` features: cuproi's compute dtype."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def plain(dtype, channels=SHAPE[1]):
    """Features of ``channels`` channels (random, seed 0) and the box zoo."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SHAPE[0], channels, *SHAPE[2:])).astype(dtype)
    return x, box_zoo(SCALE).astype(_ct(dtype))


def _score_maps(dtype):
    return plain(dtype, SHAPE[1] * OUT[0] * OUT[1])


def deformable(dtype):
    """:func:`plain`'s features and boxes, offsets and a mask."""
    x, boxes = plain(dtype)
    rng = np.random.default_rng(1)
    offset = rng.uniform(-1, 1, (len(boxes), 2, *OUT)).astype(dtype)
    mask = rng.uniform(0.2, 1, (len(boxes), 1, *OUT)).astype(dtype)
    return x, boxes, offset, mask


def _rotated(dtype):
    return plain(dtype)[0], ROTATED.astype(_ct(dtype))


def _pyramid(dtype):
    rng = np.random.default_rng(2)
    levels = [rng.standard_normal(shape).astype(dtype) for shape in LEVELS]
    return levels, LEVEL_BOXES.astype(_ct(dtype))


class Case(NamedTuple):
    """An op of both modules: ``call(module, *arrays)`` with ``module`` cuproi or cuproi.jax,
    its arrays (NumPy, the features or levels first), and the expected cotangent of each
    array from cuproi's backward functions (None: zero)."""

    call: Callable
    arrays: Callable  # dtype -> tuple of arrays
    backward: Callable  # (arrays, g) -> tuple, one entry per array


def _roi_pool_backward(x, b, g):
    argmax = cuproi.roi_pool(x, b, OUT, SCALE, return_argmax=True)[1]
    return cuproi.roi_pool_backward(g, b, argmax, x.shape), None


def _deform_backward(x, b, o, m, g):
    args = (OUT, SCALE, 2, 0.1)
    grad_x, grad_o, grad_m = cuproi.deform_roi_pool_backward(g, x, b, o, *args, mask=m)
    return grad_x, cuproi.deform_roi_pool_box_backward(g, x, b, o, *args, mask=m), grad_o, grad_m


MAX = {"pool_mode": "max"}
CASES = {
    "roi_align": Case(
        lambda m, x, b: m.roi_align(x, b, OUT, SCALE, 2, True),
        plain,
        lambda x, b, g: (
            cuproi.roi_align_backward(g, b, x.shape, OUT, SCALE, 2, True),
            cuproi.roi_align_box_backward(g, x, b, OUT, SCALE, 2, True),
        ),
    ),
    "roi_align_max_adaptive": Case(
        lambda m, x, b: m.roi_align(x, b, OUT, SCALE, -1, False, "max"),
        plain,
        lambda x, b, g: (
            cuproi.roi_align_backward(g, b, x.shape, OUT, SCALE, input=x, **MAX),
            cuproi.roi_align_box_backward(g, x, b, OUT, SCALE, **MAX),
        ),
    ),
    "roi_pool": Case(lambda m, x, b: m.roi_pool(x, b, OUT, SCALE), plain, _roi_pool_backward),
    "deform_roi_pool": Case(
        lambda m, x, b, o, k: m.deform_roi_pool(x, b, o, OUT, SCALE, 2, 0.1, k),
        deformable,
        _deform_backward,
    ),
    "deform_roi_pool_no_offset": Case(
        lambda m, x, b: m.deform_roi_pool(x, b, None, OUT, SCALE),
        plain,
        lambda x, b, g: (
            cuproi.deform_roi_pool_backward(g, x, b, None, OUT, SCALE)[0],
            cuproi.deform_roi_pool_box_backward(g, x, b, None, OUT, SCALE),
        ),
    ),
    "ps_roi_align": Case(
        lambda m, x, b: m.ps_roi_align(x, b, OUT, SCALE, 2),
        _score_maps,
        lambda x, b, g: (cuproi.ps_roi_align_backward(g, b, x.shape, OUT, SCALE, 2), None),
    ),
    "ps_roi_pool": Case(
        lambda m, x, b: m.ps_roi_pool(x, b, OUT, SCALE),
        _score_maps,
        lambda x, b, g: (cuproi.ps_roi_pool_backward(g, b, x.shape, OUT, SCALE), None),
    ),
    "roi_align_rotated": Case(
        lambda m, x, b: m.roi_align_rotated(x, b, OUT, 0.5, 2, True, True),
        _rotated,
        lambda x, b, g: (
            cuproi.roi_align_rotated_backward(g, b, x.shape, OUT, 0.5, 2, True, True),
            None,
        ),
    ),
    "prroi_pool": Case(
        lambda m, x, b: m.prroi_pool(x, b, OUT, SCALE),
        plain,
        lambda x, b, g: (
            cuproi.prroi_pool_backward(g, b, x.shape, OUT, SCALE),
            cuproi.prroi_pool_box_backward(g, x, b, OUT, SCALE),
        ),
    ),
    "multi_scale_roi_align": Case(
        lambda m, levels, b: m.multi_scale_roi_align(levels, b, OUT, LEVEL_SCALES, 2, True, 16),
        _pyramid,
        lambda levels, b, g: (
            cuproi.multi_scale_roi_align_backward(
                g, b, [x.shape for x in levels], OUT, LEVEL_SCALES, 2, True, 16
            ),
            None,
        ),
    ),
}


def to_jax(arrays, dtype=None):
    """NumPy arrays (and lists of them) as JAX arrays (of ``dtype`` when given)."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), arrays)


def output_gradient(case, arrays, seed=3):
    """A random cotangent of the op's output, in its dtype."""
    out = case.call(cuproi, *arrays)
    return np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)


def gradient_of(case, g, argnums=None):
    """jax.grad of ``<op(*arrays), g>`` with respect to ``argnums`` (default: every array),
    returning (gradients, output)."""

    def loss(*arrays):
        out = case.call(cj, *arrays)
        return jnp.sum(out * g), out

    def grad(*arrays):
        wrt = tuple(range(len(arrays))) if argnums is None else argnums
        return jax.grad(loss, argnums=wrt, has_aux=True)(*arrays)

    return grad


def assert_cotangent(got, expected, like):
    """``got`` is cuproi's ``expected`` exactly (dtype too), or zeros shaped like ``like``."""
    if isinstance(like, list):
        expected = [None] * len(like) if expected is None else expected
        for got_level, want, level in zip(got, expected, like, strict=True):
            assert_cotangent(got_level, want, level)
        return
    assert got.shape == like.shape
    if expected is None:
        assert not np.asarray(got).any()
        return
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(got), expected)


def assert_gradients(grads, case, arrays, g):
    """``grads`` are cuproi's backward of every array, for the cotangent ``g``."""
    for got, want, array in zip(grads, case.backward(*arrays, g), arrays, strict=True):
        assert_cotangent(got, want, array)
