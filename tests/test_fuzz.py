"""Bad input to every public function: a clear error or a result, never anything else.

hypothesis takes a valid call of a public function and spoils one to three of its arguments:
wrong ranks, dtypes and shapes, empty axes (K = 0, N = 0, C = 0), NaN and infinite values,
huge sizes and scalars, values of the wrong type. The call must either raise ``ValueError``,
``TypeError`` or ``IndexError``, or return arrays of the right kind: no other exception (an
``AttributeError`` from deep inside, NumPy's "array is too big"), no NumPy ``RuntimeWarning``,
and finite results where every input was finite. The correctness of valid calls is checked
against the oracles elsewhere (the test_<op>.py files, test_hypothesis.py).
"""

import warnings

import numpy as np
import pytest
from conftest import CUPY, examples
from hypothesis import given
from hypothesis import strategies as st

import cuproi

CLEAR = (ValueError, TypeError, IndexError)


def _problem(xp):
    """Valid arrays of a small problem: 2 images of 4 channels, 3 boxes, 2 x 2 bins."""
    rng = np.random.default_rng(0)
    a = {
        "x": rng.standard_normal((2, 4, 6, 7)).astype(np.float32),
        "boxes": np.array([[0, 0, 0, 4, 5], [1, 1, 2, 6, 5], [0, 3, 1, 5, 6]], np.float32),
        "rotated": np.array([[0, 3, 3, 4, 2, 30], [1, 2, 3, 3, 3, -45], [0, 4, 2, 1, 2, 0]]),
        "offset": rng.normal(0, 0.3, (3, 2, 2, 2)).astype(np.float32),
        "mask": rng.uniform(0, 1, (3, 1, 2, 2)).astype(np.float32),
        "g": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "ps_g": rng.standard_normal((3, 1, 2, 2)).astype(np.float32),
        "x2": rng.standard_normal((2, 4, 3, 4)).astype(np.float32),
    }
    a["rotated"] = a["rotated"].astype(np.float32)
    a["argmax"] = cuproi.roi_pool(a["x"], a["boxes"], 2, return_argmax=True)[1]
    return {name: xp.asarray(v) for name, v in a.items()}


def _calls(a):
    """Every public function as (function, positional arguments, keyword arguments); a name
    is the function's, then what its call adds."""
    x, boxes, g, offset, mask, ps_g = a["x"], a["boxes"], a["g"], a["offset"], a["mask"], a["ps_g"]
    levels, shapes = [x, a["x2"]], [x.shape, a["x2"].shape]
    calls = {
        "roi_align": ([x, boxes, 2, 1.0, 2, True], {}),
        "roi_align max": ([x, boxes, 2, 1.0, 2, True], {"pool_mode": "max"}),
        "roi_align_backward": ([g, boxes, x.shape, 2, 1.0, 2, True], {"deterministic": False}),
        "roi_align_box_backward": ([g, x, boxes, 2, 1.0, 2], {}),
        "roi_pool": ([x, boxes, 2, 1.0], {"return_argmax": True}),
        "roi_pool_backward": ([g, boxes, a["argmax"], x.shape], {}),
        "deform_roi_pool": ([x, boxes, offset, 2, 1.0, 2, 0.1], {"mask": mask}),
        "deform_roi_pool_backward": ([g, x, boxes, offset, 2, 1.0, 2, 0.1], {"mask": mask}),
        "deform_roi_pool_box_backward": ([g, x, boxes, offset, 2, 1.0, 2], {}),
        "ps_roi_align": ([x, boxes, 2, 1.0, 2], {}),
        "ps_roi_align_backward": ([ps_g, boxes, x.shape, 2, 1.0, 2], {}),
        "ps_roi_pool": ([x, boxes, 2, 1.0], {}),
        "ps_roi_pool_backward": ([ps_g, boxes, x.shape, 2], {}),
        "prroi_pool": ([x, boxes, 2, 1.0], {}),
        "prroi_pool_backward": ([g, boxes, x.shape, 2, 1.0], {}),
        "prroi_pool_box_backward": ([g, x, boxes, 2, 1.0], {}),
        "roi_align_rotated": ([x, a["rotated"], 2, 1.0, 2], {}),
        "roi_align_rotated_backward": ([g, a["rotated"], x.shape, 2, 1.0, 2], {}),
        "multi_scale_roi_align": ([levels, boxes, 2, [1.0, 0.5], 2], {}),
        "multi_scale_roi_align_backward": ([g, boxes, shapes, 2, [1.0, 0.5], 2], {}),
        "quantization_error": ([boxes, 1.0, 2], {}),
    }
    return {name: (getattr(cuproi, name.split()[0]), *call) for name, call in calls.items()}


NAMES = sorted(_calls(_problem(np)))


def _spoiled_arrays(xp, value):
    """Bad replacements for an array argument."""
    a = np.asarray(value.get() if hasattr(value, "get") else value)
    if a.ndim == 0:  # spoiled already
        return [xp.asarray(a[None]), xp.asarray(a[None, None, None, None]), None]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casts of NaN to int, of complex to real: intended
        spoiled = [
            a.reshape(a.shape[1:]) if a.shape and a.shape[0] == 1 else a.sum(0),  # one rank less
            a[None],  # one more
            a.astype(np.int32),
            a.astype(bool),
            a.astype(np.complex64),
            a[:0],  # empty first axis (K = 0, N = 0)
            a[..., :0],  # empty last axis
            np.full_like(a, np.nan, dtype=np.float32),
            np.full_like(a, np.inf, dtype=np.float32),
            np.full_like(a, 1e30, dtype=np.float32),
            np.full_like(a, -1, dtype=np.float32),
            a.astype(np.float64),
            a.astype(np.float16),
        ]
        if a.ndim >= 2:
            spoiled += [a[:, :1], a.swapaxes(0, 1), np.ascontiguousarray(a[:, ::-1])]
        arrays = [xp.asarray(s) for s in spoiled]
    return arrays + [a.tolist(), None, 3, "boxes", object()]


INTS = [0, -1, 2**31, 10**400, 1.5, True, "7", (2,), (2, 2, 2), None, float("nan"), (0, 2)]
FLOATS = [0, -1.0, float("nan"), float("inf"), 1e300, 10**400, "a", None, 1 + 1j, [1.0]]
SHAPES = [(2, 4, -1, 7), (0, 4, 6, 7), (2, 4, 6), (2**40, 4, 6, 7), (2, 4, 6.5, 7), "shape", None]
FLAGS = ["yes", 2, None, np.array([True, False])]


def _spoiled(xp, value):
    """Bad replacements for an argument, by what it is."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return _spoiled_arrays(xp, value)
    if isinstance(value, bool):
        return FLAGS
    if isinstance(value, int):
        return INTS
    if isinstance(value, float):
        return FLOATS
    if isinstance(value, tuple):  # an input shape
        return SHAPES
    if isinstance(value, str):  # pool_mode
        return ["mean", "", None, 1]
    if isinstance(value, list):  # levels, their shapes, spatial_scales
        return [[], value[:1], value * 5, [None, None], value[::-1]]
    return [None]


def _arrays(value):
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays(v)]
    return [value] if hasattr(value, "dtype") and hasattr(value, "shape") else []


def _finite(xp, value):
    return all(bool(xp.isfinite(a).all()) for a in _arrays(value) if a.dtype.kind in "fc")


def _widened(value):
    """``value`` with its floating arrays, in lists and tuples too, in float64."""
    if isinstance(value, (list, tuple)):
        return type(value)(_widened(v) for v in value)
    return (
        value.astype(np.float64) if hasattr(value, "dtype") and value.dtype.kind == "f" else value
    )


def _past_range(xp, call, inputs, arrays):
    """Whether every non-finite result is a value past the range of the narrowest floating
    dtype in the call (a cast to it may overflow): the call in float64 says where."""
    function, args, kwargs = call
    wide = function(*_widened(args), **{key: _widened(v) for key, v in kwargs.items()})
    wide = _arrays(wide if isinstance(wide, (list, tuple)) else [wide])
    floating = [a.dtype for a in _arrays(inputs) + arrays if a.dtype.kind == "f"]
    most = np.finfo(min(floating, key=lambda d: d.itemsize)).max
    return all(
        bool((xp.isfinite(a) | (xp.abs(w) > most)).all())
        for a, w in zip(arrays, wide, strict=True)
        if a.dtype.kind == "f"
    )


def _check(xp, name, data):
    function, args, kwargs = _calls(_problem(xp))[name]
    slots = [("arg", i) for i in range(len(args))] + [("kw", k) for k in kwargs]
    for _ in range(data.draw(st.integers(1, 3), label="spoiled")):
        kind, key = data.draw(st.sampled_from(slots), label="argument")
        value = args[key] if kind == "arg" else kwargs[key]
        bad = data.draw(st.sampled_from(_spoiled(xp, value)), label=f"{key}")
        if kind == "arg":
            args[key] = bad
        else:
            kwargs[key] = bad
    inputs_finite = _finite(xp, args) and _finite(xp, list(kwargs.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            result = function(*args, **kwargs)
        except CLEAR:
            return
    arrays = _arrays(result if isinstance(result, (list, tuple)) else [result])
    # Where every array argument was spoiled into a list, nothing is on the device: NumPy.
    on_device = any(isinstance(a, xp.ndarray) for a in _arrays([args, list(kwargs.values())]))
    module = xp if on_device else np
    assert arrays and all(isinstance(a, module.ndarray) for a in arrays), type(result)
    if inputs_finite and name != "quantization_error":  # its area ratios of 0-area boxes: inf
        call, inputs = (function, args, kwargs), [args, list(kwargs.values())]
        assert _finite(xp, arrays) or _past_range(xp, call, inputs, arrays), (
            f"{name} gave non-finite values on finite input"
        )


@pytest.mark.parametrize("name", NAMES)
@examples(100)
@given(data=st.data())
def test_bad_input_gives_a_clear_error_or_a_result(name, data):
    _check(np, name, data)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
@examples(15)
@given(data=st.data())
def test_bad_input_on_the_gpu(name, data):
    _check(CUPY, name, data)
