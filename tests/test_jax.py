"""cuproi.jax: every op equals its array function, and jax.grad equals cuproi's backward
functions (features, offsets, masks, levels, and the boxes where cuproi has a box backward),
eagerly and under jax.jit, in every dtype; jax.vmap as one call; bfloat16; per-image and
empty boxes; finite differences for the offsets; signatures, examples and imports.

Errors are in test_jax_errors.py, where the computation runs (XLA's buffers, the fallback, a
GPU) in test_jax_buffers.py, several devices in test_jax_devices.py.
"""

import doctest
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax_helpers import (
    CASES,
    OUT,
    SCALE,
    SHAPE,
    assert_cotangent,
    assert_gradients,
    cj,
    deformable,
    gradient_of,
    jax,
    jnp,
    output_gradient,
    plain,
    to_jax,
)

import cuproi

pytestmark = pytest.mark.usefixtures("x64")  # float64 arrays
DTYPES = [np.float16, np.float32, np.float64]


# ---- forward and gradients against the array functions ----------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_equal_the_array_functions(name, dtype):
    """The output and jax.grad of every array, under jit; eagerly too for float32 (eager
    JAX compiles every small operation of the gradient on its own: slow to do for all)."""
    case = CASES[name]
    arrays = case.arrays(dtype)
    g = output_gradient(case, arrays)
    expected = case.call(cuproi, *arrays)
    grad = gradient_of(case, g)
    modes = {"jit": jax.jit(grad), "eager": grad} if dtype == np.float32 else {"jit": jax.jit(grad)}
    for mode, fn in modes.items():
        grads, out = fn(*to_jax(arrays))
        assert isinstance(out, jax.Array) and out.dtype == dtype, mode
        np.testing.assert_array_equal(np.asarray(out), expected, err_msg=mode)
        assert_gradients(grads, case, arrays, g)
    out = case.call(cj, *to_jax(arrays))  # the primal alone, eagerly, no gradient taken
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_only_the_gradients_asked_for_are_computed():
    """The box gradient (which reads the features) runs only when the boxes get one."""
    case = CASES["roi_align"]
    x, b = to_jax(case.arrays(np.float32))

    def callbacks(argnums):
        text = str(jax.make_jaxpr(jax.grad(lambda x, b: case.call(cj, x, b).sum(), argnums))(x, b))
        return [
            text.count(f"function='{f}'") for f in ("roi_align_box_backward", "roi_align_backward")
        ]

    assert callbacks(0) == [0, 1]
    assert callbacks(1) == [1, 0]
    assert callbacks((0, 1)) == [1, 1]


@pytest.mark.parametrize("flags", ["", "--xla_gpu_deterministic_ops=true"])
def test_xlas_deterministic_switch_makes_the_backwards_deterministic(flags, monkeypatch):
    """XLA_FLAGS=--xla_gpu_deterministic_ops=true: every backward sums in fixed point."""
    monkeypatch.setenv("XLA_FLAGS", flags)
    case = CASES["deform_roi_pool"]
    arrays = to_jax(case.arrays(np.float32))
    grad = jax.grad(lambda *a: case.call(cj, *a).sum(), argnums=(0, 1, 2, 3))
    text = str(jax.make_jaxpr(grad)(*arrays))
    on = ("deterministic", bool(flags))
    assert text.count(f"{on}") == 2 and text.count(f"{(on[0], not on[1])}") == 0


def test_roi_pool_return_argmax():
    x, b = plain(np.float32)
    out, argmax = jax.jit(lambda x: cj.roi_pool(x, b, OUT, SCALE, True))(jnp.asarray(x))
    want_out, want_argmax = cuproi.roi_pool(x, b, OUT, SCALE, return_argmax=True)
    np.testing.assert_array_equal(np.asarray(out), want_out)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(argmax), want_argmax)
    g = output_gradient(CASES["roi_pool"], (x, b))
    grad = jax.grad(lambda x: jnp.sum(cj.roi_pool(x, b, OUT, SCALE, True)[0] * g))(jnp.asarray(x))
    np.testing.assert_array_equal(
        np.asarray(grad), cuproi.roi_pool_backward(g, b, want_argmax, SHAPE)
    )


# ---- jax.vmap: one call for the whole batch ----------------------------------------------


def _batch(arrays, count=2):
    """``count`` elements of a case's arrays: features scaled and shifted, box coordinates
    (not their batch indices) moved, offsets and masks scaled; stacked."""

    def element(i):
        def change(a, role):
            if role == "boxes":
                return np.concatenate([a[:, :1], a[:, 1:] * (1 + 0.1 * i) + i], axis=1)
            return a * (1 + i) + (i if role == "features" else 0) * 0.5

        features, boxes, *rest = arrays
        moved = jax.tree.map(lambda a: change(a, "features"), features)
        return (moved, change(boxes, "boxes"), *[change(a, "other") for a in rest])

    elements = [element(i) for i in range(count)]
    stacked = jax.tree.map(lambda *a: np.stack(a), *elements)
    return elements, stacked


@pytest.mark.parametrize("name", CASES)
def test_vmap_equals_each_element(name):
    """jit(vmap(grad)) over features, boxes and the other arrays at once."""
    case = CASES[name]
    elements, stacked = _batch(case.arrays(np.float32))
    g = output_gradient(case, elements[0])
    grad = gradient_of(case, g)
    grads, out = jax.jit(jax.vmap(grad))(*to_jax(stacked))
    for i, arrays in enumerate(elements):
        np.testing.assert_array_equal(np.asarray(out[i]), case.call(cuproi, *arrays))
        assert_gradients(jax.tree.map(lambda a, i=i: a[i], grads), case, arrays, g)


def test_vmap_over_boxes_of_shared_features_and_nested():
    """Features shared by the batch (in_axes None), and vmap of vmap."""
    case = CASES["roi_align"]
    x, b = case.arrays(np.float32)
    _, (_, boxes) = _batch((x, b), 3)
    g = output_gradient(case, (x, b))
    grad = gradient_of(case, g)
    (grad_x, grad_b), out = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(*to_jax((x, boxes)))
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out[i]), case.call(cuproi, x, boxes[i]))
        assert_gradients((grad_x[i], grad_b[i]), case, (x, boxes[i]), g)
    grid = jnp.stack([to_jax(boxes), to_jax(boxes[::-1])])  # (2, 3, K, 5)
    features = jnp.stack([jnp.asarray(x), 2 * jnp.asarray(x)])  # (2, N, C, H, W)
    nested = jax.vmap(jax.vmap(lambda x, b: case.call(cj, x, b), (None, 0)), (0, 0))
    out = nested(features, grid)
    for i, j in np.ndindex(2, 3):
        want = case.call(cuproi, np.asarray(features[i]), np.asarray(grid[i, j]))
        np.testing.assert_array_equal(np.asarray(out[i, j]), want)


# ---- bfloat16, per-image and empty boxes, finite differences -----------------------------


# The casts are the same for every op: one of each kind of arguments (features and boxes,
# argmax, offset and mask, none, a list of levels).
BFLOAT16 = ["roi_align", "roi_align_max_adaptive", "roi_pool", "deform_roi_pool"]
BFLOAT16 += ["deform_roi_pool_no_offset", "multi_scale_roi_align"]


@pytest.mark.parametrize("name", BFLOAT16)
def test_bfloat16_is_float32_rounded(name):
    """bfloat16 arrays (NumPy has no bfloat16) under jit, and the output eagerly: the values
    and gradients of their float32 values, rounded to bfloat16 once."""
    case = CASES[name]
    arrays = to_jax(case.arrays(np.float32), jnp.bfloat16)
    wide = jax.tree.map(lambda a: np.asarray(a, np.float32), arrays)
    g = jnp.asarray(output_gradient(case, wide), jnp.bfloat16)
    grads, out = jax.jit(gradient_of(case, g))(*arrays)
    expected = jnp.asarray(case.call(cuproi, *wide), jnp.bfloat16)
    for got in (out, case.call(cj, *arrays)):  # under jit, and eagerly
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got, expected)
    expected = case.backward(*wide, np.asarray(g, np.float32))
    assert all(got.dtype == jnp.bfloat16 for got in jax.tree.leaves(grads))
    rounded = jax.tree.map(lambda a: None if a is None else jnp.asarray(a, jnp.bfloat16), expected)
    for got, want, array in zip(grads, rounded, arrays, strict=True):
        assert_cotangent(got, want, array)
    assert np.asarray(jax.tree.leaves(grads)[0], np.float32).any()


@pytest.mark.parametrize("name", ["roi_align", "deform_roi_pool", "roi_align_rotated"])
def test_per_image_boxes_equal_k5_boxes(name):
    """torchvision's per-image lists: the same values and gradients, the boxes' gradient on
    their coordinates."""
    case = CASES[name]
    x, boxes, *rest = case.arrays(np.float64)
    order = np.argsort(boxes[:, 0], kind="stable")
    boxes, rest = boxes[order], [a[order] for a in rest]
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(SHAPE[0])]
    g = output_gradient(case, (x, boxes, *rest))
    grad = gradient_of(case, g)
    (flat, out) = jax.jit(grad)(*to_jax((x, boxes, *rest)))
    for fn in (jax.jit(grad), grad) if name == "deform_roi_pool" else (jax.jit(grad),):
        listed, listed_out = fn(*to_jax((x, per_image, *rest)))
        np.testing.assert_array_equal(np.asarray(listed_out), np.asarray(out))
        for got, want in zip(listed[:1] + listed[2:], flat[:1] + flat[2:], strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.concatenate(listed[1]), np.asarray(flat[1])[:, 1:])


def test_empty_boxes():
    x, _ = plain(np.float32)
    xj, none = jnp.asarray(x), jnp.zeros((0, 5), jnp.float32)
    assert cj.roi_align(xj, none, OUT).shape == (0, SHAPE[1], *OUT)
    assert cj.roi_pool(xj, [], OUT).shape == (0, SHAPE[1], *OUT)
    grad = jax.grad(lambda x: cj.roi_pool(x, none, OUT).sum())(xj)
    assert grad.shape == SHAPE and not np.asarray(grad).any()
    grad = jax.jit(jax.vmap(jax.grad(lambda x: cj.prroi_pool(x, none, OUT).sum())))(xj[None])
    assert grad.shape == (1, *SHAPE) and not np.asarray(grad).any()


def test_offset_and_mask_gradients_by_finite_differences():
    """Reverse mode against central differences in float64, at a smooth point: random offsets
    put no sample on an integer position, a band edge or the [-1, H] limits."""
    from jax.test_util import check_grads

    x, boxes, offset, mask = deformable(np.float64)

    def f(x, offset, mask):
        return cj.deform_roi_pool(x, boxes, offset, OUT, SCALE, 2, 0.3, mask)

    args = to_jax((x, offset, mask))
    check_grads(f, args, order=1, modes=["rev"], eps=1e-6)
    check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=1e-6)


# ---- the package ------------------------------------------------------------------------


def test_import_cuproi_does_not_import_jax_and_adapter_not_cupy():
    code = (
        "import sys, cuproi\n"
        "assert 'jax' not in sys.modules, 'import cuproi imported jax'\n"
        "import cuproi.jax\n"
        "assert 'jax' in sys.modules\n"
        "assert 'cupy' not in sys.modules, 'import cuproi.jax imported cupy'\n"
    )
    root = Path(cuproi.__file__).parents[1]  # this checkout's (or installation's) cuproi
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_every_op_is_exported_with_the_array_functions_signature():
    ops = {"roi_align", "roi_pool", "deform_roi_pool", "ps_roi_align", "ps_roi_pool"}
    ops |= {"roi_align_rotated", "prroi_pool", "multi_scale_roi_align"}
    assert set(cj.__all__) == ops
    for name in ops:
        assert getattr(cj, name).__module__ == f"cuproi.jax.{name}"
        ours, theirs = (inspect.signature(getattr(m, name)).parameters for m in (cj, cuproi))
        signature = [(p.name, p.default, p.kind) for p in theirs.values()]
        assert [(p.name, p.default, p.kind) for p in ours.values()] == signature, name


@pytest.mark.parametrize("module", ["cuproi.jax", *[f"cuproi.jax.{op}" for op in cj.__all__]])
def test_docstring_examples(module, doctest_namespace):
    jax.config.update("jax_enable_x64", False)  # the examples show float32; the fixture restores
    result = doctest.testmod(
        importlib.import_module(module),
        extraglobs=doctest_namespace | {"jax": jax, "jnp": jnp},
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0
    assert result.attempted > 0 or module == "cuproi.jax"


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_functions_take_and_return_jax_arrays(dtype):
    """The array API through DLPack: JAX in, JAX out, same dtype and values as NumPy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    boxes = np.array([[0, 1.0, 1.5, 7.0, 6.0], [1, -2.0, 0.0, 5.0, 9.5]], np.float32)
    offset = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    xj, bj, oj = (jnp.asarray(a) for a in (x, boxes, offset))
    out = cuproi.deform_roi_pool(xj, bj, oj, 3, 1.0, 2)
    assert isinstance(out, jax.Array) and out.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(out), cuproi.deform_roi_pool(x, boxes, offset, 3, 1.0, 2)
    )
    per_image = [bj[:1, 1:], bj[1:, 1:]]
    pooled, argmax = cuproi.roi_pool(xj, per_image, 3, return_argmax=True)
    assert isinstance(pooled, jax.Array) and isinstance(argmax, jax.Array)
    grad = cuproi.roi_pool_backward(jnp.ones_like(pooled), bj, argmax, x.shape)
    assert isinstance(grad, jax.Array) and grad.shape == x.shape
