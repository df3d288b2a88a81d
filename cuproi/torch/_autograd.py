"""The autograd of the ops whose backward reads the boxes and the input's shape alone.

For an op ``op(input, rois, pooled_h, pooled_w, *options)`` whose input gradient is the op
``backward(grad, rois, input_shape, *options, deterministic)``, and whose boxes' gradient, if
it has one, is ``box_backward(grad, input, rois, *options, deterministic)``: Position-sensitive
RoI Align and RoI Pool, rotated and multi-scale RoI Align, Precise RoI Pooling.
"""

import torch


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
        if ctx.needs_input_grad[0]:  # a list of flags for a list of levels: never empty
            grad_input = backward(grad, rois, ctx.input_shape, *ctx.options, deterministic)
        if box_backward is not None and ctx.needs_input_grad[1]:
            grad_rois = box_backward(grad, input, rois, *ctx.options, deterministic)
        return grad_input, grad_rois, None, None, *[None] * len(ctx.options)

    op.register_autograd(gradient, setup_context=setup_context)
