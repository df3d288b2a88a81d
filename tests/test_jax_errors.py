"""cuproi.jax raises cuproi's own errors: the type and message of the array function, when
called (also while jax.jit traces), and for traced box values when the computation runs."""

import re

import numpy as np
import pytest
from roi_op_tester import box_zoo
from test_jax import OUT, SCALE, SHAPE, x64  # noqa: F401  (x64 autouse: an int64 offset)

import cuproi

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
cj = pytest.importorskip("cuproi.jax")


def data():
    """Features, boxes of every special case and offsets, as NumPy float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    boxes = box_zoo(SCALE).astype(np.float32)
    offset = rng.uniform(-1, 1, (len(boxes), 2, *OUT)).astype(np.float32)
    return x, boxes, offset


def _bad(x=None, boxes=None, offset=None, **static):
    """A call of deform_roi_pool with one bad argument."""
    return {"x": x, "boxes": boxes, "offset": offset, **static}


def _cases():
    x, boxes, offset = data()
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
    x, boxes, offset = data()
    x = case["x"] if case["x"] is not None else x
    boxes = case["boxes"] if case["boxes"] is not None else boxes
    offset = case["offset"] if case["offset"] is not None else offset
    boxes = [to(b) for b in boxes] if isinstance(boxes, list) else to(boxes)
    return to(x), boxes, to(offset)


def _expected(call):
    """cuproi's own error on NumPy arrays: the type and message the adapter must give."""
    with pytest.raises((TypeError, ValueError, IndexError)) as info:
        call()
    return info.type, str(info.value)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_cuproi_error(name):
    kind, message = _expected(lambda: _call(cuproi, CASES[name], *_arguments(CASES[name])))
    arguments = _arguments(CASES[name], jnp.asarray)
    with pytest.raises(kind, match=re.escape(message)):  # eager
        _call(cj, CASES[name], *arguments)
    with pytest.raises(kind, match=re.escape(message)):  # the boxes known while jit traces
        jax.jit(lambda x, o: _call(cj, CASES[name], x, arguments[1], o))(arguments[0], arguments[2])


@pytest.mark.parametrize("name", sorted(set(CASES) - VALUE_CASES))
def test_bad_shapes_dtypes_and_scalars_fail_while_tracing(name):
    kind, message = _expected(lambda: _call(cuproi, CASES[name], *_arguments(CASES[name])))
    with pytest.raises(kind, match=re.escape(message)):
        jax.jit(lambda *a: _call(cj, CASES[name], *a))(*_arguments(CASES[name], jnp.asarray))


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_bad_traced_boxes_fail_at_run_time_with_cuproi_message(name):
    """Box values traced under jit are checked in the callback: JAX wraps the error."""
    kind, message = _expected(lambda: _call(cuproi, CASES[name], *_arguments(CASES[name])))
    with pytest.raises(Exception) as info:
        out = jax.jit(lambda *a: _call(cj, CASES[name], *a))(*_arguments(CASES[name], jnp.asarray))
        out.block_until_ready()
    assert f"{kind.__name__}: {message}" in str(info.value)


def test_bad_traced_boxes_under_vmap_name_the_stacked_row():
    """Each element's boxes are checked against its own images before the batch is folded:
    an index valid for the folded batch (2 + 2 images) but not for one element raises."""
    x, boxes, _ = data()
    bad = boxes.copy()
    bad[3, 0] = 2
    stacked = jnp.stack([jnp.asarray(boxes), jnp.asarray(bad)])
    features = jnp.stack([jnp.asarray(x)] * 2)
    with pytest.raises(Exception) as info:
        out = jax.jit(jax.vmap(lambda x, b: cj.roi_align(x, b, OUT, SCALE)))(features, stacked)
        out.block_until_ready()
    k = len(boxes) + 3  # row 3 of the second element
    assert f"IndexError: boxes[{k}] has batch index 2 but the input holds 2 images" in str(
        info.value
    )


def _other_ops():
    """Checks of the other ops' own arguments: a call of cuproi or cuproi.jax per case."""
    x, boxes, _ = data()
    rotated = np.array([[0, 5.0, 4.0, 6.0, 3.0, 0.0], [1, 6.0, 5.0, 7.5, np.nan, 30.0]])
    p2, p3 = x, x[:, :, ::2, ::2].copy()
    return {
        "ps channels not a multiple of the bins": lambda m, to: m.ps_roi_align(
            to(x), to(boxes), OUT
        ),
        "ps_roi_pool output_size": lambda m, to: m.ps_roi_pool(to(x), to(boxes), (2, 0)),
        "rotated boxes of 5 columns": lambda m, to: m.roi_align_rotated(to(x), to(boxes), OUT),
        "rotated box with a NaN height": lambda m, to: m.roi_align_rotated(to(x), to(rotated), OUT),
        "unknown pool_mode": lambda m, to: m.roi_align(to(x), to(boxes), OUT, 1.0, 2, False, "min"),
        "roi_pool return_argmax not a flag": lambda m, to: m.roi_pool(
            to(x), to(boxes), OUT, 1.0, "yes"
        ),
        "mask of the wrong shape": lambda m, to: m.deform_roi_pool(
            to(x), to(boxes), None, OUT, mask=to(np.ones((len(boxes), 2, *OUT), np.float32))
        ),
        "prroi_pool negative scale": lambda m, to: m.prroi_pool(to(x), to(boxes), OUT, -1.0),
        "levels not a list": lambda m, to: m.multi_scale_roi_align(to(x), to(boxes), OUT, [0.25]),
        "levels of two dtypes": lambda m, to: m.multi_scale_roi_align(
            [to(p2), to(p3.astype(np.float64))], to(boxes), OUT, [0.25, 0.125]
        ),
        "scales that do not halve": lambda m, to: m.multi_scale_roi_align(
            [to(p2), to(p3)], to(boxes), OUT, [0.25, 0.25]
        ),
        "one scale for two levels": lambda m, to: m.multi_scale_roi_align(
            [to(p2), to(p3)], to(boxes), OUT, [0.25]
        ),
    }


OTHER_OPS = _other_ops()


@pytest.mark.parametrize("name", OTHER_OPS)
def test_other_ops_give_cuproi_errors(name):
    kind, message = _expected(lambda: OTHER_OPS[name](cuproi, np.asarray))
    with pytest.raises(kind, match=re.escape(message)):
        OTHER_OPS[name](cj, jnp.asarray)


def test_aligned_must_be_a_bool():
    x, boxes, _ = data()
    with pytest.raises(TypeError, match="aligned must be a bool; got 'False'"):
        cj.roi_align(jnp.asarray(x), jnp.asarray(boxes), 2, aligned="False")
