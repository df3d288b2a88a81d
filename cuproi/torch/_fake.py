"""The checks of the fake (meta) kernels: an op's errors, from shapes and dtypes alone.

Under ``torch.compile``, ``torch.export`` and ``FakeTensorMode``, and on the meta device, an op
runs its fake kernel instead of cuproi, on tensors that have a shape, a dtype and a device but
no data. So that such a call raises what the op raises when it runs (instead of returning an
output of an invented shape), every fake kernel makes the checks of the array function its op
calls, in their order: the seam's (one device, a dtype DLPack carries), then those of
:mod:`cuproi._validate`, on :class:`Spec` stand-ins that hold a tensor's shape and the NumPy
dtype the op would see. The checks of values (batch indices, coordinates, argmax) need the
data: the op makes them when it runs.

A symbolic size (dynamic shapes) is checked at its example value, without adding a guard: a
call whose example inputs the op would refuse raises, while the program traced stays valid for
every size it was traced for (the op checks each when it runs). A size without an example
value (data-dependent, such as the number of boxes a filter keeps) is taken to be 1, which the
checks accept for the sizes that are data-dependent in practice (the number of boxes).

Under ``torch.compile`` (and a strict ``torch.export``) Dynamo reports an exception of a fake
kernel as a ``TorchRuntimeError`` caused by it; a non-strict ``torch.export`` (the default)
raises it as it is.
"""

import types

import torch

from cuproi import _dispatch, _validate
from cuproi._spec import Spec, xp

# For the checks that take a backend (they read its array module only).
backend = types.SimpleNamespace(xp=xp)


def hint(value):
    """``value`` (a number, or a list or tuple of them) with symbolic numbers as their examples.

    Reading a symbol's example adds no guard; a symbol without one (data-dependent) gives 1.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(hint(item) for item in value)
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        example = value.node.hint
        return 1 if example is None else example
    return value


def _numpy_dtype(dtype, name):
    """The NumPy dtype the seam gives a tensor of ``dtype``, or its TypeError naming ``name``.

    Asked of an empty CPU tensor of that dtype, so that the answer (and for bfloat16, float8
    and the like, the message) is the op's own.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    # A real tensor, also while a FakeTensorMode is active, which it must not see exported
    # either (torch 2.7's __dlpack__ makes a view of it).
    with unset_fake_temporarily():
        empty = torch.empty(0, dtype=dtype, device="cpu")
        return _dispatch.native(empty, "cpu", name).dtype


def _device(tensor):
    """The tensor's device, named as the seam names it ('cpu', 'cuda:0', ...)."""
    device = tensor.device
    if device.type == "cuda":
        return f"cuda:{0 if device.index is None else device.index}"
    return device.type


def prepare(**tensors):
    """:class:`Spec` of each named tensor (None stays None), checked as the seam checks them.

    Parameters
    ----------
    **tensors
        The op's tensors by the names the array function gives them (``input``, ``boxes``,
        ...), in the order it gives them to :func:`cuproi._dispatch.prepare`.

    Returns
    -------
    tuple
        Their specs, in that order.

    Raises
    ------
    ValueError
        When they are on different devices.
    TypeError
        For a dtype that DLPack cannot give NumPy.
    """
    seen = {}
    for name, tensor in tensors.items():
        if tensor is not None:
            seen.setdefault(_device(tensor), name)
    _dispatch.one_device(seen)
    return tuple(
        None if tensor is None else Spec(hint(tensor.shape), _numpy_dtype(tensor.dtype, name))
        for name, tensor in tensors.items()
    )


def _rows_unread(check, width, rois, batch, scale, dtype, name):
    """Run a box check on the shape and dtype of ``rois``, not on its rows.

    The checks read the values of every row (batch index, coordinates); a box tensor without
    data is given to them as one of 0 rows. One of another shape is given as it is, for the
    check to refuse it with its own message.
    """
    if rois.ndim == 2 and rois.shape[1] == width:
        check(xp, Spec((0, width), rois.dtype), batch, scale, dtype, name)
    else:
        check(xp, rois, batch, scale, dtype, name)
    return rois.shape[0]


def boxes(rois, batch, scale, dtype, name="boxes"):
    """Check (K, 5) boxes as :func:`cuproi._validate.boxes` does, values aside; return K."""
    return _rows_unread(_validate.boxes, 5, rois, batch, scale, dtype, name)


def rotated_boxes(rois, batch, scale, dtype, name="boxes"):
    """Check (K, 6) boxes as :func:`cuproi._validate.rotated_boxes` does, values aside; return K."""
    return _rows_unread(_validate.rotated_boxes, 6, rois, batch, scale, dtype, name)


def _options(options):
    """Run each ``(check, value)`` pair: a scalar check of cuproi._validate and its value."""
    for check, value in options:
        check(hint(value))


def forward(
    input, rois, pooled_h, pooled_w, spatial_scale, *options, rotated=False, channels=None, **others
):
    """Check a forward op's arguments as cuproi's forward functions do, in their order.

    The seam's checks of ``input``, ``rois`` (named ``boxes``) and the ``others`` (such as
    ``offset``), ``output_size``, ``spatial_scale``, the ``options`` (pairs of a scalar check
    of :mod:`cuproi._validate` and its value, such as ``(_validate.sampling_ratio, ratio)``),
    the features, ``channels`` (as in :func:`backward`), the boxes (rotated ones with
    ``rotated``), the size of the output.

    Returns
    -------
    x : Spec
        The features.
    k : int
        The number of boxes.
    pooled : (int, int)
        The output size.
    others : list of Spec or None
        The specs of ``others``, in their order, for the op's further checks.
    """
    x, b, *rest = prepare(input=input, boxes=rois, **others)
    pooled = _validate.output_size(hint((pooled_h, pooled_w)))
    scale = _validate.spatial_scale(hint(spatial_scale))
    _options(options)
    x = _validate.features(xp, x)
    out_channels = x.shape[1] if channels is None else channels(x.shape[1], pooled)
    k = (rotated_boxes if rotated else boxes)(b, x.shape[0], scale, x.dtype)
    _validate.pooled_result(k, out_channels, pooled)
    return x, k, pooled, rest


def backward(grad, rois, input_shape, spatial_scale, *options, rotated=False, channels=None):
    """Check the arguments of a backward op given the input's shape, as cuproi does.

    The seam's checks of ``grad`` (named ``grad_output``) and ``rois``, ``input_shape``,
    ``output_size`` (the gradient's last two sizes: the op passes them), ``spatial_scale``,
    the ``options`` (as in :func:`forward`), ``channels`` (which maps the input's channel count
    to the output's, raising for a count it refuses; by default they are equal), the boxes,
    the gradient.
    """
    g, b = prepare(grad_output=grad, boxes=rois)
    shape = _validate.input_shape(tuple(hint(input_shape)))  # the op passes a tuple
    pooled = _validate.output_size(g.shape[2:])
    scale = _validate.spatial_scale(hint(spatial_scale))
    _options(options)
    out_channels = shape[1] if channels is None else channels(shape[1], pooled, "input_shape")
    k = (rotated_boxes if rotated else boxes)(b, shape[0], scale, g.dtype)
    _validate.grad_output(xp, g, k, out_channels, pooled)


def box_backward(grad, input, rois, spatial_scale, *options, **others):
    """Check the arguments of a backward op given the features, as cuproi does.

    The seam's checks of ``grad`` (named ``grad_output``), ``input``, ``rois`` and the
    ``others``, ``output_size`` (from the gradient), ``spatial_scale``, the ``options`` (as in
    :func:`forward`), the features, the boxes, the gradient. Returns what :func:`forward`
    does.
    """
    g, x, b, *rest = prepare(grad_output=grad, input=input, boxes=rois, **others)
    pooled = _validate.output_size(g.shape[2:])
    scale = _validate.spatial_scale(hint(spatial_scale))
    _options(options)
    x = _validate.features(xp, x)
    k = boxes(b, x.shape[0], scale, x.dtype)
    _validate.grad_output(xp, g, k, x.shape[1], pooled, dtype=x.dtype)
    return x, k, pooled, rest


def output(input, rois, pooled_h, pooled_w, channels=None):
    """A forward op's (K, C, PH, PW) output, without data; C is the input's by default."""
    channels = input.shape[1] if channels is None else channels
    return input.new_empty((rois.shape[0], channels, pooled_h, pooled_w))
