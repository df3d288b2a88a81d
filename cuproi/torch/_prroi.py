"""Precise RoI Pooling as a torch op (gradients for the features and the boxes), and its module."""

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _validate
from cuproi.torch import _fake
from cuproi.torch._common import _bfloat16_in_float32, _rois, _stream


@torch.library.custom_op("cuproi::prroi_pool", mutates_args=())
def _prroi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    with _stream(input):
        return cuproi.prroi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)


@_prroi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::prroi_pool_backward", mutates_args=())
def _prroi_pool_backward(
    grad: Tensor, rois: Tensor, input_shape: list[int], spatial_scale: float, deterministic: bool
) -> Tensor:
    with _stream(grad):
        return cuproi.prroi_pool_backward(
            grad,
            rois,
            tuple(input_shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            deterministic=deterministic,
        )


@_prroi_pool_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, deterministic):
    _fake.backward(grad, rois, input_shape, spatial_scale)
    return grad.new_empty(input_shape)


@torch.library.custom_op("cuproi::prroi_pool_box_backward", mutates_args=())
def _prroi_pool_box_backward(
    grad: Tensor, input: Tensor, rois: Tensor, spatial_scale: float, deterministic: bool
) -> Tensor:
    with _stream(grad):
        grad_rois = cuproi.prroi_pool_box_backward(
            grad,
            input,
            rois,
            tuple(grad.shape[2:]),
            spatial_scale,
            deterministic=deterministic,
        )
    return grad_rois.to(rois.dtype)


@_prroi_pool_box_backward.register_fake
def _(grad, input, rois, spatial_scale, deterministic):
    _fake.box_backward(grad, input, rois, spatial_scale)
    return rois.new_empty(rois.shape)


def _prroi_pool_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale = inputs
    ctx.input_shape = list(input.shape)
    # The features are kept only when the box gradient, which reads them, is wanted.
    ctx.save_for_backward(rois, input if rois.requires_grad else None)


def _prroi_pool_grad(ctx, grad):
    rois, input = ctx.saved_tensors
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad = grad.contiguous()
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = _prroi_pool_backward(
            grad, rois, ctx.input_shape, ctx.spatial_scale, deterministic
        )
    if ctx.needs_input_grad[1]:
        grad_rois = _prroi_pool_box_backward(grad, input, rois, ctx.spatial_scale, deterministic)
    return grad_input, grad_rois, None, None, None


_prroi_pool.register_autograd(_prroi_pool_grad, setup_context=_prroi_pool_setup)


@_bfloat16_in_float32
def prroi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Differentiable :func:`cuproi.prroi_pool` on tensors (mmcv's ``prroi_pool``).

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64 (bfloat16 is computed in float32), on the CPU
        or a CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        ``[batch_index, x1, y1, x2, y2]``, or one ``[x1, y1, x2, y2]`` tensor per image.
    output_size, spatial_scale
        As in :func:`cuproi.prroi_pool`.

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to ``input`` and to the boxes: a (K, 5) box tensor with
        ``requires_grad=True`` gets the gradient of :func:`cuproi.prroi_pool_box_backward`
        (column 0, the batch index, gets 0); per-image (L_i, 4) tensors get theirs through the
        concatenation that builds the (K, 5) boxes. The features are saved for the backward
        only when the boxes require a gradient.

    Examples
    --------
    >>> import torch
    >>> import cuproi.torch
    >>> x = torch.rand(1, 8, 32, 32, requires_grad=True)
    >>> boxes = torch.tensor([[0.0, 4.0, 4.0, 20.0, 28.0]], requires_grad=True)
    >>> out = cuproi.torch.prroi_pool(x, boxes, 7, spatial_scale=1.0)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape), tuple(boxes.grad.shape)
    ((1, 8, 7, 7), (1, 8, 32, 32), (1, 5))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    return _prroi_pool(input, _rois(boxes, input), pooled_h, pooled_w, scale)


class PrRoIPool(nn.Module):
    """Module form of :func:`prroi_pool` (mmcv's ``PrRoIPool``)."""

    def __init__(self, output_size, spatial_scale=1.0):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)

    def forward(self, input, rois):
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
