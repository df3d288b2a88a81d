"""The torch ops of the cuproi ops whose backward reads the boxes and the input's shape alone.

For an op ``op(input, rois, pooled_h, pooled_w, *options)`` whose input gradient is the op
``backward(grad, rois, input_shape, *options, deterministic)``, and whose boxes' gradient, if
it has one, is ``box_backward(grad, input, rois, *options, deterministic)``: Position-sensitive
RoI Align and RoI Pool, rotated and multi-scale RoI Align, Precise RoI Pooling. :func:`define`
defines such ops with their fake kernels, as torchvision declares its ops by their schemas;
:func:`register` joins them by autograd.
"""

import torch

import cuproi
from cuproi.torch import _common, _fake, _forward_mode


def define(name, options=(), checks=(), *, rotated=False, channels=None, box_backward=False):
    """Define ``cuproi::<name>`` and its backward ops, their fake kernels and its autograd.

    The ops, with ``<options>`` the schema of the options after ``spatial_scale``:

    - ``cuproi::<name>(Tensor input, Tensor rois, SymInt pooled_h, SymInt pooled_w, float
      spatial_scale<options>) -> Tensor`` calls :func:`cuproi.<name>` on torch's stream;
    - ``cuproi::<name>_backward(Tensor grad, Tensor rois, SymInt[] input_shape, float
      spatial_scale<options>, bool deterministic) -> Tensor`` its input gradient;
    - with ``box_backward``, ``cuproi::<name>_box_backward(Tensor grad, Tensor input, Tensor
      rois, float spatial_scale<options>, bool deterministic) -> Tensor`` its boxes' gradient,
      in the boxes' dtype.

    Parameters
    ----------
    name : str
        The cuproi op.
    options : tuple of str
        The schema of each option after ``spatial_scale``, such as ``"SymInt sampling_ratio"``.
    checks : tuple of callable
        The scalar checks of :mod:`cuproi._validate` that the fake kernels make of the first
        options, in their order (the flags need none).
    rotated, channels
        As in :func:`cuproi.torch._fake.forward`; with ``channels`` (the position-sensitive
        ops) the output has ``C / (PH * PW)`` channels.
    box_backward : bool
        Whether the op has a boxes' gradient.

    Returns
    -------
    torch custom op
        The forward op.
    """
    extra = "".join(f", {option}" for option in options)

    def op(suffix, schema, function, fake):
        defined = torch.library.custom_op(
            f"cuproi::{name}{suffix}", function, mutates_args=(), schema=f"({schema}) -> Tensor"
        )
        defined.register_fake(fake)
        return defined

    def fake_checks(values):
        return zip(checks, values, strict=False)

    def forward(input, rois, pooled_h, pooled_w, spatial_scale, *values):
        with _common.stream(input):
            function = getattr(cuproi, name)
            return function(input, rois, (pooled_h, pooled_w), spatial_scale, *values)

    def forward_fake(input, rois, pooled_h, pooled_w, spatial_scale, *values):
        arguments = (input, rois, pooled_h, pooled_w, spatial_scale, *fake_checks(values))
        _fake.forward(*arguments, rotated=rotated, channels=channels)
        c = None if channels is None else input.shape[1] // (pooled_h * pooled_w)
        return _fake.output(input, rois, pooled_h, pooled_w, c)

    def backward(grad, rois, input_shape, spatial_scale, *values):
        *values, deterministic = values
        function = getattr(cuproi, f"{name}_backward")
        leading = (rois, tuple(input_shape))
        return _common.run_backward(
            function, grad, leading, spatial_scale, *values, deterministic=deterministic
        )

    def backward_fake(grad, rois, input_shape, spatial_scale, *values):
        checked = fake_checks(values[:-1])
        _fake.backward(
            grad, rois, input_shape, spatial_scale, *checked, rotated=rotated, channels=channels
        )
        return grad.new_empty(input_shape)

    def boxes(grad, input, rois, spatial_scale, *values):
        *values, deterministic = values
        function = getattr(cuproi, f"{name}_box_backward")
        grad_rois = _common.run_backward(
            function, grad, (input, rois), spatial_scale, *values, deterministic=deterministic
        )
        return grad_rois.to(rois.dtype)

    def boxes_fake(grad, input, rois, spatial_scale, *values):
        _fake.box_backward(grad, input, rois, spatial_scale, *fake_checks(values[:-1]))
        return rois.new_empty(rois.shape)

    first = "Tensor input, Tensor rois, SymInt pooled_h, SymInt pooled_w, float spatial_scale"
    gradient = "Tensor rois, SymInt[] input_shape, float spatial_scale"
    box = "Tensor grad, Tensor input, Tensor rois, float spatial_scale"
    forward_op = op("", first + extra, forward, forward_fake)
    backward_op = op(
        "_backward", f"Tensor grad, {gradient}{extra}, bool deterministic", backward, backward_fake
    )
    box_op = None
    if box_backward:
        box_op = op("_box_backward", f"{box}{extra}, bool deterministic", boxes, boxes_fake)
    register(forward_op, backward_op, box_op)
    return forward_op


def register(op, backward, box_backward=None, shape=None):
    """Register the autograd of ``op``: its input gradient, and its boxes' gradient if any.

    Parameters
    ----------
    op : torch custom op
        The forward op, as described above.
    backward : torch custom op
        Its input gradient.
    box_backward : torch custom op, optional
        Its boxes' gradient; without one the boxes get none.
    shape : callable, optional
        The input's shape as ``backward`` takes it, from the input; by default
        ``list(input.shape)``.
    """

    def setup_context(ctx, inputs, output):
        input, rois, _, _, *ctx.options = inputs
        ctx.input_shape = list(input.shape) if shape is None else shape(input)
        # The features are kept only when the box gradient, which reads them, is wanted.
        keep = box_backward is not None and rois.requires_grad
        ctx.save_for_backward(rois, input if keep else None)

    def gradient(ctx, grad):
        rois, input = ctx.saved_tensors
        deterministic = torch.are_deterministic_algorithms_enabled()
        grad = grad.contiguous()
        grad_input = grad_rois = None
        options = (*ctx.options, deterministic)
        if ctx.needs_input_grad[0]:  # a list of flags for a list of levels: never empty
            grad_input = _forward_mode.call(backward, grad, rois, ctx.input_shape, *options)
        if box_backward is not None and ctx.needs_input_grad[1]:
            grad_rois = _forward_mode.call(box_backward, grad, input, rois, *options)
        return grad_input, grad_rois, None, None, *[None] * len(ctx.options)

    op.register_autograd(gradient, setup_context=setup_context)
