"""The arrays and sizes of a public call: through the seam, then checked, in one order.

Every public function of an op starts the same way: :func:`cuproi._dispatch.prepare` picks the
backend and converts the arrays; then ``output_size`` (``input_shape`` first in a backward),
``spatial_scale`` and the op's own options are checked, then the features, the boxes and the
shape of the result or of the gradient. :func:`forward`, :func:`backward` and
:func:`box_backward` do it for the three kinds of function, so that every op raises the same
error for the same mistake. (cuproi.torch's fake kernels make the same checks, in the same
order, on tensors without data.)
"""

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from cuproi import _dispatch, _validate


class Call(NamedTuple):
    """The prepared and checked arguments of one call.

    Attributes
    ----------
    backend : module
        ``cuproi._cpu`` or ``cuproi._cuda``.
    restore : callable
        Turns a result of the backend into the caller's array type.
    x : (N, C, H, W) array or None
        The features; None in a backward that does not read them.
    rois : (K, 5) or (K, 6) array
        The boxes in the compute dtype (:func:`cuproi._validate.boxes`).
    g : (K, C_out, PH, PW) array or None
        ``grad_output`` checked against the boxes, channels and output size (cast to the
        features' dtype where the backward reads the features); None in a forward.
    grad_dtype : numpy.dtype or None
        The dtype of ``grad_output`` as given, that of the gradients to return.
    shape : (int, int, int, int)
        ``(N, C, H, W)`` of the features (``input_shape`` in a backward).
    pooled : (int, int)
        ``(PH, PW)``.
    scale : float
        ``spatial_scale``.
    options : tuple
        The values the option checks returned, in their order.
    others : tuple
        The further arrays (``offset``, ``mask``), as the seam converted them, unchecked.
    """

    backend: ModuleType
    restore: Callable[[Any], Any]
    x: Any
    rois: Any
    g: Any
    grad_dtype: np.dtype | None
    shape: tuple[int, ...]
    pooled: tuple[int, int]
    scale: float
    options: tuple
    others: tuple

    def run(self, op, *arguments, **keywords):
        """``op`` of the backend on the checked ``arguments`` and options, restored.

        ``arguments`` lead: the backend's arrays and sizes (such as ``call.x, call.rois,
        call.pooled, call.scale``); the checked options follow them, then ``keywords``, of
        which ``deterministic`` is checked here, last. Each array of a tuple result is restored.
        """
        if "deterministic" in keywords:
            keywords["deterministic"] = _validate.flag(keywords["deterministic"], "deterministic")
        result = getattr(self.backend, op)(*arguments, *self.options, **keywords)
        if isinstance(result, tuple):
            return tuple(None if r is None else self.restore(r) for r in result)
        return self.restore(result)


def options(checks):
    """Run each ``(check, value, *arguments)``: ``check(value, *arguments)``, in order.

    ``check`` is a scalar check of :mod:`cuproi._validate`, such as
    ``(_validate.sampling_ratio, ratio)`` or ``(_validate.flag, aligned, "aligned")``.
    """
    return tuple(check(value, *arguments) for check, value, *arguments in checks)


def _box_check(rotated):
    return _validate.rotated_boxes if rotated else _validate.boxes


def forward(
    input,
    boxes,
    output_size,
    spatial_scale,
    *checks,
    rotated=False,
    channels=None,
    channels_last=True,
    **others,
):
    """A forward's arguments, checked in its order.

    The seam, ``output_size``, ``spatial_scale``, the option ``checks`` (as in
    :func:`options`), the features (either layout kept with ``channels_last``, else copied to C
    order), ``channels`` (which maps the input's channel count to the output's, raising for a
    count it refuses; by default they are equal), the boxes (rotated ones with ``rotated``),
    the size of the output. ``others`` (``offset=``, ``mask=``) go through the seam with the
    features and boxes, after them, and come back unchecked.
    """
    backend, (x, b, *rest), restore = _dispatch.prepare(input=input, boxes=boxes, **others)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    values = options(checks)
    x = _validate.features(backend.xp, x, channels_last=channels_last)
    out_channels = x.shape[1] if channels is None else channels(x.shape[1], pooled)
    rois = _box_check(rotated)(backend.xp, b, x.shape[0], scale, x.dtype)
    _validate.pooled_result(len(rois), out_channels, pooled)
    return Call(backend, restore, x, rois, None, None, x.shape, pooled, scale, values, tuple(rest))


def backward(
    grad_output,
    boxes,
    input_shape,
    output_size,
    spatial_scale,
    *checks,
    rotated=False,
    channels=None,
    input=None,
    reads_input=True,
):
    """The arguments of a backward given the input's shape, checked in its order.

    The seam (``input`` after the boxes, when given), ``input_shape``, ``output_size``,
    ``spatial_scale``, the option ``checks``, ``channels`` (as in :func:`forward`), ``input``
    (features of shape ``input_shape``, for a backward that reads them: the boxes and the
    gradient then take their dtype; one given to a backward that does not, ``reads_input``
    false, is checked all the same and left out of the call), the boxes, the gradient.
    """
    arrays = {"grad_output": grad_output, "boxes": boxes}
    if input is not None:
        arrays["input"] = input
    backend, (g, b, *x), restore = _dispatch.prepare(**arrays)
    shape = _validate.input_shape(input_shape)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    values = options(checks)
    out_channels = shape[1] if channels is None else channels(shape[1], pooled, "input_shape")
    x = _validate.forward_features(backend.xp, x[0], shape) if x else None
    x = x if reads_input else None
    dtype = g.dtype if x is None else x.dtype
    rois = _box_check(rotated)(backend.xp, b, shape[0], scale, dtype)
    cast = None if x is None else x.dtype
    grad = _validate.grad_output(backend.xp, g, len(rois), out_channels, pooled, dtype=cast)
    return Call(backend, restore, x, rois, grad, g.dtype, shape, pooled, scale, values, ())


def box_backward(grad_output, input, boxes, output_size, spatial_scale, *checks, **others):
    """The arguments of a backward given the features, checked in its order.

    The seam (``grad_output``, ``input``, ``boxes``, then ``others``), ``output_size``,
    ``spatial_scale``, the option ``checks``, the features (either layout kept), the boxes
    (in the features' compute dtype), the gradient (cast to the features' dtype).
    """
    backend, (g, x, b, *rest), restore = _dispatch.prepare(
        grad_output=grad_output, input=input, boxes=boxes, **others
    )
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    values = options(checks)
    x = _validate.forward_features(backend.xp, x, None)
    rois = _validate.boxes(backend.xp, b, x.shape[0], scale, x.dtype)
    grad = _validate.grad_output(backend.xp, g, len(rois), x.shape[1], pooled, dtype=x.dtype)
    return Call(
        backend, restore, x, rois, grad, g.dtype, x.shape, pooled, scale, values, tuple(rest)
    )
