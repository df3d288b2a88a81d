"""JAX adapter: cuproi.jax equals the array API forward, jax.grad equals cuproi's backward
functions (eager and under jax.jit), finite differences for the offsets, errors, lazy import."""

import doctest
import re
import subprocess
import sys
from pathlib import Path

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
DTYPES = [np.float16, np.float32, np.float64]


@pytest.fixture(autouse=True)
def x64():
    """float64 needs JAX's x64 mode; restore the previous setting for other test modules."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def data(dtype, seed=0):
    """Features, boxes of every special case, offsets and an output gradient, as NumPy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(dtype)
    boxes = box_zoo(SCALE).astype(np.float32)
    offset = rng.uniform(-1, 1, (len(boxes), 2, *OUT)).astype(dtype)
    grad = rng.standard_normal((len(boxes), SHAPE[1], *OUT)).astype(dtype)
    return x, boxes, offset, grad


# Each op as (cuproi.jax call, the array API's forward, the array API's backward) on
# (x, boxes, offset[, grad]); the backward returns (grad_input, grad_offset or None).
OPS = {
    "roi_align": (
        lambda x, b, o: cj.roi_align(x, b, OUT, SCALE, 2, True),
        lambda x, b, o: cuproi.roi_align(x, b, OUT, SCALE, 2, True),
        lambda x, b, o, g: (cuproi.roi_align_backward(g, b, x.shape, OUT, SCALE, 2, True), None),
    ),
    "roi_align_adaptive": (
        lambda x, b, o: cj.roi_align(x, b, OUT, SCALE),
        lambda x, b, o: cuproi.roi_align(x, b, OUT, SCALE),
        lambda x, b, o, g: (cuproi.roi_align_backward(g, b, x.shape, OUT, SCALE), None),
    ),
    "roi_pool": (
        lambda x, b, o: cj.roi_pool(x, b, OUT, SCALE),
        lambda x, b, o: cuproi.roi_pool(x, b, OUT, SCALE),
        lambda x, b, o, g: (
            cuproi.roi_pool_backward(
                g, b, cuproi.roi_pool(x, b, OUT, SCALE, return_argmax=True)[1], x.shape
            ),
            None,
        ),
    ),
    "deform_roi_pool": (
        lambda x, b, o: cj.deform_roi_pool(x, b, o, OUT, SCALE, 2, 0.1),
        lambda x, b, o: cuproi.deform_roi_pool(x, b, o, OUT, SCALE, 2, 0.1),
        lambda x, b, o, g: cuproi.deform_roi_pool_backward(g, x, b, o, OUT, SCALE, 2, 0.1)[:2],
    ),
    "deform_roi_pool_no_offset": (
        lambda x, b, o: cj.deform_roi_pool(x, b, None, OUT, SCALE),
        lambda x, b, o: cuproi.deform_roi_pool(x, b, None, OUT, SCALE),
        lambda x, b, o, g: cuproi.deform_roi_pool_backward(g, x, b, None, OUT, SCALE)[:2],
    ),
}


# ---- forward and gradients against the array API -------------------------------------------


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_forward_equals_array_api(op, dtype, jit):
    x, boxes, offset, _ = data(dtype)
    call, forward, _ = OPS[op]
    fn = jax.jit(call) if jit else call
    out = fn(jnp.asarray(x), jnp.asarray(boxes), jnp.asarray(offset))
    expected = forward(x, boxes, offset)
    assert isinstance(out, jax.Array)
    assert out.dtype == dtype and out.shape == (len(boxes), SHAPE[1], *OUT)
    np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_grad_equals_backward(op, dtype, jit):
    x, boxes, offset, g = data(dtype)
    call, _, backward = OPS[op]

    def loss(x, boxes, offset):
        return jnp.sum(call(x, boxes, offset) * g)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    if jit:
        grad = jax.jit(grad)
    grad_x, grad_boxes, grad_offset = grad(*map(jnp.asarray, (x, boxes, offset)))
    expected_x, expected_offset = backward(x, boxes, offset, g)
    assert isinstance(grad_x, jax.Array) and grad_x.dtype == dtype
    np.testing.assert_array_equal(np.asarray(grad_x), expected_x)
    assert grad_boxes.shape == boxes.shape and not np.asarray(grad_boxes).any()
    if expected_offset is None:  # the op ignores offset: its gradient is zero
        assert not np.asarray(grad_offset).any()
    else:
        assert grad_offset.dtype == dtype
        np.testing.assert_array_equal(np.asarray(grad_offset), expected_offset)


def test_per_image_boxes_equal_k5_boxes():
    x, boxes, offset, g = data(np.float64)
    order = np.argsort(boxes[:, 0], kind="stable")
    boxes, offset, g = boxes[order], offset[order], g[order]
    per_image = [jnp.asarray(boxes[boxes[:, 0] == i, 1:]) for i in range(SHAPE[0])]

    def loss(x, b, o):
        return jnp.sum(cj.deform_roi_pool(x, b, o, OUT, SCALE) * g)

    xj, oj = jnp.asarray(x), jnp.asarray(offset)
    grad = jax.grad(loss, argnums=(0, 1, 2))
    flat = grad(xj, jnp.asarray(boxes), oj)
    for listed in (grad(xj, per_image, oj), jax.jit(grad)(xj, per_image, oj)):
        np.testing.assert_array_equal(np.asarray(flat[0]), np.asarray(listed[0]))
        np.testing.assert_array_equal(np.asarray(flat[2]), np.asarray(listed[2]))
        assert [b.shape for b in listed[1]] == [b.shape for b in per_image]
        assert not any(np.asarray(b).any() for b in listed[1])


def test_vmap_loops_over_the_batch():
    x, boxes, offset, g = data(np.float32)
    xs = jnp.stack([jnp.asarray(x), 2 * jnp.asarray(x) + 1])
    b = jnp.asarray(boxes)
    out = jax.jit(jax.vmap(lambda x: cj.roi_align(x, b, OUT, SCALE)))(xs)
    for i in range(2):
        np.testing.assert_array_equal(
            np.asarray(out[i]), cuproi.roi_align(np.asarray(xs[i]), boxes, OUT, SCALE)
        )
    grads = jax.vmap(jax.grad(lambda x: jnp.sum(cj.roi_pool(x, b, OUT, SCALE) * g)))(xs)
    for i in range(2):
        _, argmax = cuproi.roi_pool(np.asarray(xs[i]), boxes, OUT, SCALE, return_argmax=True)
        expected = cuproi.roi_pool_backward(g, boxes, argmax, SHAPE)
        np.testing.assert_array_equal(np.asarray(grads[i]), expected)


def test_offset_gradient_by_finite_differences():
    """Reverse mode against central differences in float64, at a smooth point: random offsets
    put no sample on an integer position, a band edge or the [-1, H] limits."""
    from jax.test_util import check_grads

    x, boxes, offset, _ = data(np.float64, seed=1)
    b = jnp.asarray(boxes)

    def f(x, offset):
        return cj.deform_roi_pool(x, b, offset, OUT, SCALE, 2, 0.3)

    check_grads(f, (jnp.asarray(x), jnp.asarray(offset)), order=1, modes=["rev"], eps=1e-6)
    check_grads(jax.jit(f), (jnp.asarray(x), jnp.asarray(offset)), 1, modes=["rev"], eps=1e-6)


def test_empty_boxes():
    x, _, _, _ = data(np.float32)
    xj, none = jnp.asarray(x), jnp.zeros((0, 5), jnp.float32)
    assert cj.roi_align(xj, none, OUT).shape == (0, SHAPE[1], *OUT)
    assert cj.roi_pool(xj, [], OUT).shape == (0, SHAPE[1], *OUT)
    grad = jax.grad(lambda x: cj.roi_pool(x, none, OUT).sum())(xj)
    assert grad.shape == SHAPE and not np.asarray(grad).any()


# ---- errors ---------------------------------------------------------------------------------


def _bad(x=None, boxes=None, offset=None, **static):
    """A call with one bad argument, made on NumPy arrays or JAX arrays."""
    return {"x": x, "boxes": boxes, "offset": offset, **static}


def _cases():
    x, boxes, offset, _ = data(np.float32)
    wrong_batch, fractional, infinite = boxes.copy(), boxes.copy(), boxes.copy()
    wrong_batch[3, 0] = 2
    fractional[1, 0] = 0.5
    infinite[2, 3] = np.inf
    return {
        "integer features": _bad(x=x.astype(np.int32)),
        "3-D features": _bad(x=x[0]),
        "boxes without batch index": _bad(boxes=boxes[:, 1:]),
        "boolean boxes": _bad(boxes=boxes > 0),
        "per-image box of 5 columns": _bad(boxes=[boxes[:2], boxes[2:, 1:]]),
        "batch index out of range": _bad(boxes=wrong_batch),
        "fractional batch index": _bad(boxes=fractional),
        "infinite coordinate": _bad(boxes=infinite),
        "offset of the wrong shape": _bad(offset=offset[:, :, :2]),
        "integer offset": _bad(offset=offset.astype(np.int64)),
        "output_size zero": _bad(output_size=0),
        "negative spatial_scale": _bad(spatial_scale=-1.0),
        "fractional sampling_ratio": _bad(sampling_ratio=1.5),
        "infinite gamma": _bad(gamma=float("inf")),
    }


CASES = _cases()
VALUE_CASES = {"batch index out of range", "fractional batch index", "infinite coordinate"}


def _call(module, case, x, boxes, offset):
    static = {"output_size": OUT, "spatial_scale": SCALE, "sampling_ratio": 2, "gamma": 0.1}
    static.update({k: v for k, v in case.items() if k not in ("x", "boxes", "offset")})
    return module.deform_roi_pool(x, boxes, offset, **static)


def _arguments(case, to=np.asarray):
    x, boxes, offset, _ = data(np.float32)
    x = case["x"] if case["x"] is not None else x
    boxes = case["boxes"] if case["boxes"] is not None else boxes
    offset = case["offset"] if case["offset"] is not None else offset
    boxes = [to(b) for b in boxes] if isinstance(boxes, list) else to(boxes)
    return to(x), boxes, to(offset)


def _expected(case):
    """cuproi's own error on NumPy arrays: the type and message the adapter must give."""
    with pytest.raises((TypeError, ValueError, IndexError)) as info:
        _call(cuproi, case, *_arguments(case))
    return info.type, str(info.value)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_cuproi_error(name):
    kind, message = _expected(CASES[name])
    arguments = _arguments(CASES[name], jnp.asarray)
    with pytest.raises(kind, match=re.escape(message)):  # eager
        _call(cj, CASES[name], *arguments)
    with pytest.raises(kind, match=re.escape(message)):  # the boxes known while jit traces
        jax.jit(lambda x, o: _call(cj, CASES[name], x, arguments[1], o))(arguments[0], arguments[2])


@pytest.mark.parametrize("name", sorted(set(CASES) - VALUE_CASES))
def test_bad_shapes_dtypes_and_scalars_fail_while_tracing(name):
    kind, message = _expected(CASES[name])
    with pytest.raises(kind, match=re.escape(message)):
        jax.jit(lambda *a: _call(cj, CASES[name], *a))(*_arguments(CASES[name], jnp.asarray))


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_bad_traced_boxes_fail_at_run_time_with_cuproi_message(name):
    """Box values traced under jit are checked in the callback: JAX wraps the error."""
    kind, message = _expected(CASES[name])
    with pytest.raises(Exception) as info:
        out = jax.jit(lambda *a: _call(cj, CASES[name], *a))(*_arguments(CASES[name], jnp.asarray))
        out.block_until_ready()
    assert f"{kind.__name__}: {message}" in str(info.value)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("op", OPS)
def test_bfloat16_is_float32_rounded(op, jit):
    """bfloat16 features, boxes and offsets (NumPy has no bfloat16): the values and gradients
    of their float32 values, rounded to bfloat16."""
    x, boxes, offset, g = (jnp.asarray(a, jnp.bfloat16) for a in data(np.float32))
    wide = [np.asarray(a, np.float32) for a in (x, boxes, offset, g)]
    call, forward, backward = OPS[op]

    def loss(x, boxes, offset):
        return jnp.sum(call(x, boxes, offset) * g)

    fn, grad = call, jax.grad(loss, argnums=(0, 2))
    if jit:
        fn, grad = jax.jit(fn), jax.jit(grad)
    out = fn(x, boxes, offset)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, jnp.asarray(forward(*wide[:3]), jnp.bfloat16))
    grad_x, grad_offset = grad(x, boxes, offset)
    expected_x, expected_offset = backward(*wide)
    assert grad_x.dtype == grad_offset.dtype == jnp.bfloat16
    np.testing.assert_array_equal(grad_x, jnp.asarray(expected_x, jnp.bfloat16))
    if expected_offset is not None:
        np.testing.assert_array_equal(grad_offset, jnp.asarray(expected_offset, jnp.bfloat16))
    assert np.asarray(grad_x, np.float32).any()


# ---- packaging ------------------------------------------------------------------------------


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


def test_docstring_examples():
    jax.config.update("jax_enable_x64", False)  # the examples show float32; the fixture restores
    result = doctest.testmod(cj, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
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
