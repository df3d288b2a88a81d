"""How to call every public op function with valid arguments, any of them changed.

``call("roi_align", output_size=0)`` is :func:`cuproi.roi_align` on valid features and boxes with
``output_size=0``. One table of functions (:data:`SPECS`) thus serves every check of an argument:
:func:`takes` lists the functions that have it, from their signatures. Arguments go by the names
of the single-level functions; multi_scale_roi_align gets them as one pyramid level (``input``
becomes ``features=[input]``, ``spatial_scale`` ``spatial_scales=[...]``, ``input_shape``
``input_shapes=[...]``), and :func:`label` says how its messages name them.

The arguments not given follow those given, so that a call changes one thing only: the
gradient, offsets and argmax match the number of boxes given, and the features ``x`` give the
input (of a function that reads it), ``input_shape`` and the gradient's dtype.

:func:`problem` and :func:`every_call` are one small problem and every public function, forward
and backward, called on it: the checks that walk the whole API at once (the CUDA path, no
boxes, non-finite values).
"""

import functools
import inspect
import math
import re
from typing import NamedTuple

import numpy as np

import cuproi
from cuproi import _dispatch

N, C, H, W = 2, 3, 5, 6
OUT = (2, 3)
FLOATS = (np.float16, np.float32, np.float64)

# multi_scale_roi_align's list arguments, by the argument of one level they hold.
LEVEL_OF = {"input": "features", "spatial_scale": "spatial_scales", "input_shape": "input_shapes"}


class Spec(NamedTuple):
    """One way to call a public function: its name and what it always gets."""

    function: str
    options: dict  # keyword arguments it always gets
    also: tuple = ()  # optional arguments it always gets

    @property
    def rotated(self):
        """Whether it takes (K, 6) rotated boxes [batch_index, cx, cy, w, h, angle]."""
        return "rotated" in self.function

    @property
    def channels(self):
        """C of its features: two groups of score maps for position-sensitive pooling."""
        return 2 * OUT[0] * OUT[1] if self.function.startswith("ps_") else C

    def out_channels(self, channels):
        """C of its output (and grad_output) for ``channels`` input channels."""
        return channels // (OUT[0] * OUT[1]) if self.function.startswith("ps_") else channels

    @property
    def parameters(self):
        """The arguments it takes, by the names :func:`call` knows them by."""
        return {_ALIAS.get(p, p) for p in self._signature}

    @property
    def required(self):
        """The arguments it is always given (``offset`` may be None, but must be given)."""
        empty = inspect.Parameter.empty
        required = [_ALIAS.get(n, n) for n, p in self._signature.items() if p.default is empty]
        return required + list(self.also)

    @property
    def _signature(self):
        return _signature(self.function)


@functools.cache
def _signature(function):
    return inspect.signature(getattr(cuproi, function)).parameters


_ALIAS = {level: one for one, level in LEVEL_OF.items()}

# Every public function of the ops (the backends export the same).
FUNCTIONS = tuple(name for names in _dispatch.OPS.values() for name in names)
# They, and the options that change what a function reads or returns; roi_align_backward reads
# the features in max mode only (and checks them in both).
SPECS = {name: Spec(name, {}) for name in FUNCTIONS}
SPECS["roi_align_backward-max"] = Spec("roi_align_backward", {"pool_mode": "max"}, ("input",))
SPECS["roi_pool-argmax"] = Spec("roi_pool", {"return_argmax": True})
for _name in _dispatch.OPS["deform_roi_pool"]:
    SPECS[f"{_name}-no-offset"] = Spec(_name, {"offset": None})


def takes(argument, required=False):
    """The entries of :data:`SPECS` whose function takes ``argument`` (as a required one)."""
    return [
        name
        for name, spec in SPECS.items()
        if argument in (spec.required if required else spec.parameters)
    ]


def label(name, argument):
    """How the messages of entry ``name`` call ``argument``, as a regular expression."""
    if SPECS[name].function.startswith("multi_scale") and argument in LEVEL_OF:
        return re.escape(f"{LEVEL_OF[argument]}[0]")
    return argument


def features(dtype=np.float32, shape=(N, C, H, W)):
    """Distinct values, so that roi_pool has no ties."""
    return _features(np.dtype(dtype), tuple(shape)).copy()


@functools.cache  # a generator costs more than the ops on these small arrays
def _features(dtype, shape):
    size = math.prod(shape)
    return (np.random.default_rng(0).permutation(size).reshape(shape) / size - 0.5).astype(dtype)


def features_for(name, dtype=np.float32, images=N):
    """Features of entry ``name``: its channel count."""
    return features(dtype, (images, SPECS[name].channels, H, W))


def boxes(dtype=np.float32, rotated=False):
    """(K, 5) boxes, or (K, 6) rotated ones, sorted by image: they equal their per-image list."""
    if rotated:
        rows = [
            [0, 2.25, 2.25, 3.5, 2.5, 30.0],
            [0, 2.5, 2.5, 1.0, 1.0, -45.0],
            [1, 3.25, 2.25, 4.5, 4.5, 0.0],
            [1, 0.25, 3.0, 4.5, 8.0, 90.0],
        ]
    else:
        rows = [
            [0, 0.5, 1.0, 4.0, 3.5],
            [0, 2.0, 2.0, 3.0, 3.0],
            [1, 1.0, 0.0, 5.5, 4.5],
            [1, -2.0, -1.0, 2.5, 7.0],
        ]
    return np.array(rows, dtype)


def count(b):
    """Number of boxes of a (possibly malformed) boxes argument."""
    if isinstance(b, (list, tuple)):
        return sum(len(p) for p in b if getattr(p, "ndim", 0) >= 1)
    return len(b) if getattr(b, "ndim", 0) >= 1 else 1


def offset(k, dtype=np.float32):
    return (0.3 * np.sin(np.arange(k * 2 * OUT[0] * OUT[1]))).reshape(k, 2, *OUT).astype(dtype)


def gradient(k, channels, dtype=np.float32):
    return (
        np.cos(np.arange(k * channels * OUT[0] * OUT[1])).reshape(k, channels, *OUT).astype(dtype)
    )


def argmax(shape, plane=H * W):
    """A valid argmax: every entry a cell of the plane, or -1 (an empty bin)."""
    i = np.arange(math.prod(shape))
    return np.where(i % 5 == 4, -1, (i * 7) % plane).reshape(shape).astype(np.int32)


def valid(name, x=None, k=4):
    """Valid values of the arguments entry ``name`` is always given, for features ``x`` and ``k``
    boxes.

    ``x`` (default: features of the entry's channel count) is the input of a function that
    reads it, else the source of ``input_shape`` and of the gradient's dtype.
    """
    spec = SPECS[name]
    x = features_for(name) if x is None else x
    _, c, h, w = x.shape
    make = {
        "input": lambda: x,
        "boxes": lambda: boxes(rotated=spec.rotated),
        "output_size": lambda: OUT,
        "spatial_scale": lambda: 1.0,
        "input_shape": lambda: x.shape,
        "grad_output": lambda: gradient(k, spec.out_channels(c), x.dtype),
        "offset": lambda: offset(k, x.dtype),
        "argmax": lambda: argmax((k, c, *OUT), h * w),
    }
    return {argument: make[argument]() for argument in spec.required}


def call(name, x=None, **given):
    """Call entry ``name`` on the features ``x`` (as :func:`valid`), with the arguments ``given``.

    The arguments not given are valid ones, made for the number of boxes given.
    """
    spec = SPECS[name]
    assert set(given) <= spec.parameters, set(given) - spec.parameters
    kwargs = {**valid(name, x, count(given["boxes"]) if "boxes" in given else 4), **spec.options}
    kwargs.update(given)
    if spec.function.startswith("multi_scale"):
        kwargs = {LEVEL_OF.get(a, a): [v] if a in LEVEL_OF else v for a, v in kwargs.items()}
    return getattr(cuproi, spec.function)(**kwargs)


def results(result):
    """A function's result as a tuple (of arrays and Nones)."""
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def problem(dtype=np.float32):
    """One problem for every public function: ``(x, boxes, rotated, g, offset, mask, x2)``.

    Features of 2 images and 8 channels, 6 boxes (and their rotated twins) of 2 x 2 bins, the
    output gradient, offsets and a mask, and a second pyramid level ``x2``.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 14)).astype(dtype)
    ct = np.float64 if dtype == np.float64 else np.float32
    corner = rng.uniform(-2, 10, (6, 2))
    boxes = np.column_stack([[0, 1, 0, 1, 0, 1], corner, corner + rng.uniform(1, 8, (6, 2))])
    boxes = boxes.astype(ct)
    rotated = np.column_stack([boxes[:, :3], rng.uniform(1, 6, (6, 2)), rng.uniform(-90, 90, 6)])
    g = rng.standard_normal((6, 8, 2, 2)).astype(dtype)
    offset = rng.normal(0, 0.3, (6, 2, 2, 2)).astype(ct)
    mask = rng.uniform(0, 1, (6, 1, 2, 2)).astype(ct)
    return x, boxes, rotated.astype(ct), g, offset, mask, x[..., ::2, ::2].copy()


def every_call(x, boxes, rotated, g, offset, mask, x2, det):
    """Every public function, forward and backward, on :func:`problem` (``det``: deterministic)."""
    out, argmax = cuproi.roi_pool(x, boxes, 2, 0.5, return_argmax=True)
    ps_g = g[:, :2]
    return [
        cuproi.roi_align(x, boxes, 2, 0.5, 2, True),
        cuproi.roi_align(x, list(boxes[None, :3, 1:]) + [boxes[3:, 1:]], 2, 0.5),
        cuproi.roi_align(x, boxes, 2, 0.5, 2, True, pool_mode="max"),
        cuproi.roi_align_backward(g, boxes, x.shape, 2, 0.5, 2, True, deterministic=det),
        cuproi.roi_align_backward(g, boxes, x.shape, 2, 0.5, pool_mode="max", input=x),
        cuproi.roi_align_box_backward(g, x, boxes, 2, 0.5, 2, True, deterministic=det),
        out,
        cuproi.roi_pool_backward(g, boxes, argmax, x.shape, deterministic=det),
        cuproi.deform_roi_pool(x, boxes, offset, 2, 0.5, 2, 0.1, mask),
        *cuproi.deform_roi_pool_backward(g, x, boxes, offset, 2, 0.5, 2, 0.1, mask)[:3],
        cuproi.deform_roi_pool_box_backward(g, x, boxes, offset, 2, 0.5, 2, 0.1, mask),
        cuproi.ps_roi_align(x, boxes, 2, 0.5, 2),
        cuproi.ps_roi_align_backward(ps_g, boxes, x.shape, 2, 0.5, 2, deterministic=det),
        cuproi.ps_roi_pool(x, boxes, 2, 0.5),
        cuproi.ps_roi_pool_backward(ps_g, boxes, x.shape, 2, 0.5, deterministic=det),
        cuproi.prroi_pool(x, boxes, 2, 0.5),
        cuproi.prroi_pool_backward(g, boxes, x.shape, 2, 0.5, deterministic=det),
        cuproi.prroi_pool_box_backward(g, x, boxes, 2, 0.5, deterministic=det),
        cuproi.roi_align_rotated(x, rotated, 2, 0.5, 2),
        cuproi.roi_align_rotated_backward(g, rotated, x.shape, 2, 0.5, 2, deterministic=det),
        cuproi.multi_scale_roi_align([x, x2], boxes, 2, [0.5, 0.25], 2),
        *cuproi.multi_scale_roi_align_backward(g, boxes, [x.shape, x2.shape], 2, [0.5, 0.25], 2),
    ]
