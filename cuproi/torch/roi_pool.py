"""RoI Pool as a torch op, and its module."""

import torch
from torch import Tensor

import cuproi
from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _common, _fake, _forward_mode, _script
from cuproi.torch._module import OpModule


@torch.library.custom_op("cuproi::roi_pool", mutates_args=())
def _roi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> tuple[Tensor, Tensor]:
    with _common.stream(input):
        return cuproi.roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale, True)


@_roi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale)
    out = _fake.output(input, rois, pooled_h, pooled_w)
    return out, input.new_empty(out.shape, dtype=torch.int32)


@torch.library.custom_op("cuproi::roi_pool_inference", mutates_args=())
def _roi_pool_inference(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    with _common.stream(input):
        return cuproi.roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)


@_roi_pool_inference.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale)
    return _fake.output(input, rois, pooled_h, pooled_w)


@torch.library.custom_op("cuproi::roi_pool_backward", mutates_args=())
def _roi_pool_backward(
    grad: Tensor, rois: Tensor, argmax: Tensor, input_shape: list[int], deterministic: bool
) -> Tensor:
    with _common.stream(grad):
        return cuproi.roi_pool_backward(
            grad, rois, argmax, tuple(input_shape), deterministic=deterministic
        )


@_roi_pool_backward.register_fake
def _(grad, rois, argmax, input_shape, deterministic):
    # cuproi.roi_pool_backward's checks; the boxes' batch indices are all it reads of them.
    g, b, a = _fake.prepare(grad_output=grad, boxes=rois, argmax=argmax)
    shape = _validate.input_shape(tuple(_fake.hint(input_shape)))
    k = _fake.boxes(b, shape[0], None, g.dtype)
    _validate.grad_output(_fake.xp, g, k, shape[1], g.shape[2:])
    if a.dtype.kind not in "iu" or a.shape != g.shape:  # its values aside, what it refuses
        _validate.argmax(_fake.xp, a, g.shape, shape[2] * shape[3])
    return grad.new_empty(input_shape)


def _roi_pool_setup(ctx, inputs, output):
    input, rois = inputs[:2]
    ctx.input_shape = list(input.shape)
    ctx.save_for_backward(rois, output[1])
    ctx.mark_non_differentiable(output[1])


def _roi_pool_grad(ctx, grad, grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = _forward_mode.call(
        _roi_pool_backward,
        grad.contiguous(),
        rois,
        argmax,
        ctx.input_shape,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None


_roi_pool.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)


def _tangent(result, t, input, rois, *_):
    """The output's tangent is the features' at the argmax, which the argmax has no tangent of."""
    return _forward_mode.at_argmax(t, rois, result[1]), None


@_script.compiles_as(_script.roi_pool)
@_common.bfloat16_in_float32
def roi_pool(
    input: Tensor, boxes: Boxes[Tensor], output_size: OutputSize, spatial_scale: float = 1.0
) -> Tensor:
    """Differentiable :func:`cuproi.roi_pool` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features on the CPU or a CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        As in :func:`roi_align`.
    output_size, spatial_scale
        As in :func:`cuproi.roi_pool`.

    Returns
    -------
    (K, C, PH, PW) Tensor
        The max of every bin; the gradient flows to the cell each maximum came from.
    """
    args = _common.first_arguments(input, boxes, output_size, spatial_scale)
    if (torch.is_grad_enabled() and input.requires_grad) or _forward_mode.active():
        return _forward_mode.call(_roi_pool, *args, tangent=_tangent)[0]
    # No gradient to take: the maxima alone, which the CPU finds twice as fast.
    return _roi_pool_inference(*args)


torch.fx.wrap("roi_pool")  # a leaf of torch.fx graphs, as torchvision's ops


class RoIPool(OpModule):
    """Module form of :func:`roi_pool` (torchvision's ``RoIPool``)."""

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)
