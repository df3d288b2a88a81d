"""cuproi.jax raises cuproi's own errors: the type and message of the array function, when
called (also while jax.jit traces), and for traced box values when the computation runs."""

import re
import types

import numpy as np
import pytest
from jax_helpers import OUT, SCALE, cj, deformable, jax, jnp

import cuproi

pytestmark = pytest.mark.usefixtures("x64")  # an int64 offset
ARRAYS = ("x", "boxes", "offset")


def data():
    """Features, boxes of every special case and offsets, as NumPy float32."""
    return deformable(np.float32)[:3]


def _cases():
    """Calls of deform_roi_pool with one bad argument: the arguments changed."""
    x, boxes, offset = data()
    wrong_batch, fractional, infinite = boxes.copy(), boxes.copy(), boxes.copy()
    wrong_batch[3, 0] = 2
    fractional[1, 0] = 0.5
    infinite[2, 3] = np.inf
    return {
        "integer features": {"x": x.astype(np.int32)},
        "3-D features": {"x": x[0]},
        "boxes without batch index": {"boxes": boxes[:, 1:]},
        "boolean boxes": {"boxes": boxes > 0},
        "per-image box of 5 columns": {"boxes": [boxes[:2], boxes[2:, 1:]]},
        "batch index out of range": {"boxes": wrong_batch},
        "fractional batch index": {"boxes": fractional},
        "infinite coordinate": {"boxes": infinite},
        "offset of the wrong shape": {"offset": offset[:, :, :2]},
        "integer offset": {"offset": offset.astype(np.int64)},
        "output_size zero": {"output_size": 0},
        "negative spatial_scale": {"spatial_scale": -1.0},
        "fractional sampling_ratio": {"sampling_ratio": 1.5},
        "infinite gamma": {"gamma": float("inf")},
    }


CASES = _cases()
VALUE_CASES = {"batch index out of range", "fractional batch index", "infinite coordinate"}


def _call(module, name, x, boxes, offset):
    static = {"output_size": OUT, "spatial_scale": SCALE, "sampling_ratio": 2, "gamma": 0.1}
    static.update({k: v for k, v in CASES[name].items() if k not in ARRAYS})
    return module.deform_roi_pool(x, boxes, offset, **static)


def _arguments(name, to=np.asarray):
    """The case's arrays (the valid ones where it changes none), converted by ``to``."""
    x, boxes, offset = (CASES[name].get(k, v) for k, v in zip(ARRAYS, data(), strict=True))
    boxes = [to(b) for b in boxes] if isinstance(boxes, list) else to(boxes)
    return to(x), boxes, to(offset)


def _expected(call):
    """cuproi's own error on NumPy arrays: the type and message the adapter must give."""
    with pytest.raises((TypeError, ValueError, IndexError)) as info:
        call()
    return info.type, str(info.value)


def _cuproi_error(name):
    return _expected(lambda: _call(cuproi, name, *_arguments(name)))


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_cuproi_error(name):
    kind, message = _cuproi_error(name)
    x, boxes, offset = _arguments(name, jnp.asarray)
    with pytest.raises(kind, match=re.escape(message)):  # eager
        _call(cj, name, x, boxes, offset)
    with pytest.raises(kind, match=re.escape(message)):  # the boxes known while jit traces
        jax.jit(lambda x, o: _call(cj, name, x, boxes, o))(x, offset)


@pytest.mark.parametrize("name", sorted(set(CASES) - VALUE_CASES))
def test_bad_shapes_dtypes_and_scalars_fail_while_tracing(name):
    kind, message = _cuproi_error(name)
    with pytest.raises(kind, match=re.escape(message)):
        jax.jit(lambda *a: _call(cj, name, *a))(*_arguments(name, jnp.asarray))


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_bad_traced_boxes_fail_at_run_time_with_cuproi_message(name):
    """Box values traced under jit are checked in the callback: JAX wraps the error."""
    kind, message = _cuproi_error(name)
    with pytest.raises(Exception) as info:
        jax.jit(lambda *a: _call(cj, name, *a))(*_arguments(name, jnp.asarray)).block_until_ready()
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
    message = f"IndexError: boxes[{k}] has batch index 2 but the input holds 2 images"
    assert message in str(info.value)


def _other_arrays(to):
    """The arrays of the other ops' cases, converted by ``to``."""
    x, boxes, _ = data()
    rotated = np.array([[0, 5.0, 4.0, 6.0, 3.0, 0.0], [1, 6.0, 5.0, 7.5, np.nan, 30.0]])
    p3 = x[:, :, ::2, ::2].copy()
    mask = np.ones((len(boxes), 2, *OUT), np.float32)
    arrays = {"x": x, "boxes": boxes, "rotated": rotated, "p3": p3, "mask": mask}
    return types.SimpleNamespace(p3_64=to(p3.astype(np.float64)), **jax.tree.map(to, arrays))


# Checks of the other ops' own arguments: a call of cuproi or cuproi.jax (m) per case. The
# message of "aligned not a bool" is pinned in test_validation.py.
OTHER_OPS = {
    "ps channels not a multiple of the bins": lambda m, a: m.ps_roi_align(a.x, a.boxes, OUT),
    "ps_roi_pool output_size": lambda m, a: m.ps_roi_pool(a.x, a.boxes, (2, 0)),
    "rotated boxes of 5 columns": lambda m, a: m.roi_align_rotated(a.x, a.boxes, OUT),
    "rotated box with a NaN height": lambda m, a: m.roi_align_rotated(a.x, a.rotated, OUT),
    "unknown pool_mode": lambda m, a: m.roi_align(a.x, a.boxes, OUT, 1.0, 2, False, "min"),
    "aligned not a bool": lambda m, a: m.roi_align(a.x, a.boxes, 2, aligned="False"),
    "roi_pool return_argmax not a flag": lambda m, a: m.roi_pool(a.x, a.boxes, OUT, 1.0, "yes"),
    "mask of the wrong shape": lambda m, a: m.deform_roi_pool(a.x, a.boxes, None, OUT, mask=a.mask),
    "prroi_pool negative scale": lambda m, a: m.prroi_pool(a.x, a.boxes, OUT, -1.0),
    "levels not a list": lambda m, a: m.multi_scale_roi_align(a.x, a.boxes, OUT, [0.25]),
    "levels of two dtypes": lambda m, a: m.multi_scale_roi_align(
        [a.x, a.p3_64], a.boxes, OUT, [0.25, 0.125]
    ),
    "scales that do not halve": lambda m, a: m.multi_scale_roi_align(
        [a.x, a.p3], a.boxes, OUT, [0.25, 0.25]
    ),
    "one scale for two levels": lambda m, a: m.multi_scale_roi_align(
        [a.x, a.p3], a.boxes, OUT, [0.25]
    ),
}


@pytest.mark.parametrize("name", OTHER_OPS)
def test_other_ops_give_cuproi_errors(name):
    kind, message = _expected(lambda: OTHER_OPS[name](cuproi, _other_arrays(np.asarray)))
    with pytest.raises(kind, match=re.escape(message)):
        OTHER_OPS[name](cj, _other_arrays(jnp.asarray))


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "hessian"])
def test_forward_mode_raises(transform):
    """Forward mode is refused (every op is a custom_vjp; a hessian is forward over reverse,
    through the backward's callbacks), never silent zeros as torch gave for custom ops."""
    x, boxes, _ = data()
    x, boxes = jnp.asarray(x), jnp.asarray(boxes)

    def loss(x):
        return cj.roi_align(x, boxes, OUT, SCALE, 2, True).sum()

    calls = {
        "jvp": lambda: jax.jvp(loss, (x,), (jnp.ones_like(x),)),
        "jacfwd": lambda: jax.jacfwd(loss)(x),
        "hessian": lambda: jax.hessian(loss)(x[:, :1, :4, :4]),
    }
    with pytest.raises((TypeError, ValueError), match="JVP|jvp"):
        calls[transform]()
