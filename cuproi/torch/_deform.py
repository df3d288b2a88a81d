"""Deformable RoI Pooling (offsets, modulation mask, box gradients) as a torch op."""

import torch
from torch import Tensor

import cuproi
from cuproi import _validate
from cuproi.deform_roi_pool import _mask
from cuproi.torch import _fake
from cuproi.torch._common import (
    _bfloat16_in_float32,
    _channels_last,
    _empty_gradient,
    _rois,
    _stream,
)


@torch.library.custom_op("cuproi::deform_roi_pool", mutates_args=())
def _deform_roi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    mask: Tensor | None = None,
) -> Tensor:
    with _stream(input):
        return cuproi.deform_roi_pool(
            input, rois, offset, (pooled_h, pooled_w), spatial_scale, sampling_ratio, gamma, mask
        )


@_deform_roi_pool.register_fake
def _(input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma, mask=None):
    options = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    x, k, pooled, (o, m) = _fake.forward(
        input, rois, pooled_h, pooled_w, spatial_scale, *options, offset=offset, mask=mask
    )
    _validate.offset(_fake.xp, o, k, pooled, x.dtype)
    _mask(_fake.xp, m, k, pooled, x.dtype)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::deform_roi_pool_backward", mutates_args=())
def _deform_roi_pool_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    deterministic: bool,
    mask: Tensor | None = None,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    with _stream(grad):
        grad_input, grad_offset, grad_mask = cuproi.deform_roi_pool_backward(
            grad,
            input,
            rois,
            offset,
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            gamma,
            mask,
            deterministic=deterministic,
            channels_last=channels_last,
        )
    # An op returns tensors only: an empty one stands for "no gradient" (no offset, no mask).
    return (
        grad_input,
        grad.new_empty(0) if grad_offset is None else grad_offset,
        grad.new_empty(0) if grad_mask is None else grad_mask,
    )


@_deform_roi_pool_backward.register_fake
def _(
    grad,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    deterministic,
    mask=None,
    channels_last=False,
):
    _check_backward(grad, input, rois, offset, mask, spatial_scale, sampling_ratio, gamma)
    # As the op's: the input gradient in the dtype of grad, the others in their tensor's.
    return (
        _empty_gradient(input.shape, grad, channels_last),
        grad.new_empty(0) if offset is None else offset.new_empty(offset.shape),
        grad.new_empty(0) if mask is None else mask.new_empty(mask.shape),
    )


@torch.library.custom_op("cuproi::deform_roi_pool_box_backward", mutates_args=())
def _deform_roi_pool_box_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    deterministic: bool,
) -> Tensor:
    with _stream(grad):
        grad_rois = cuproi.deform_roi_pool_box_backward(
            grad,
            input,
            rois,
            offset,
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            gamma,
            mask,
            deterministic=deterministic,
        )
    return grad_rois.to(rois.dtype)


@_deform_roi_pool_box_backward.register_fake
def _(grad, input, rois, offset, mask, spatial_scale, sampling_ratio, gamma, deterministic):
    _check_backward(grad, input, rois, offset, mask, spatial_scale, sampling_ratio, gamma)
    return rois.new_empty(rois.shape)


def _check_backward(grad, input, rois, offset, mask, spatial_scale, sampling_ratio, gamma):
    """The checks of cuproi's deform_roi_pool_backward and _box_backward, for a fake kernel."""
    options = (_validate.sampling_ratio, sampling_ratio), (_validate.gamma, gamma)
    x, k, pooled, (o, m) = _fake.box_backward(
        grad, input, rois, spatial_scale, *options, offset=offset, mask=mask
    )
    _validate.offset(_fake.xp, o, k, pooled, x.dtype)
    _mask(_fake.xp, m, k, pooled, x.dtype)


def _deform_setup(ctx, inputs, output):
    input, rois, offset, _, _, ctx.spatial_scale, ctx.sampling_ratio, ctx.gamma = inputs[:8]
    mask = inputs[8] if len(inputs) > 8 else None
    ctx.has_offset, ctx.has_mask = offset is not None, mask is not None
    ctx.save_for_backward(input, rois, offset, mask)


def _deform_grad(ctx, grad):
    input, rois, offset, mask = ctx.saved_tensors
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad = grad.contiguous()
    args = (ctx.spatial_scale, ctx.sampling_ratio, ctx.gamma, deterministic)
    grad_input = grad_offset = grad_mask = grad_rois = None
    need = ctx.needs_input_grad
    if need[0] or (ctx.has_offset and need[2]) or (ctx.has_mask and need[8]):
        grad_input, grad_offset, grad_mask = _deform_roi_pool_backward(
            grad, input, rois, offset, *args, mask, _channels_last(input)
        )
    if need[1]:
        grad_rois = _deform_roi_pool_box_backward(grad, input, rois, offset, mask, *args)
    return (
        grad_input,
        grad_rois,
        grad_offset if ctx.has_offset else None,
        None,
        None,
        None,
        None,
        None,
        grad_mask if ctx.has_mask else None,
    )


_deform_roi_pool.register_autograd(_deform_grad, setup_context=_deform_setup)


@_bfloat16_in_float32
def deform_roi_pool(
    input,
    boxes,
    offset,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    gamma=0.1,
    mask=None,
):
    """Differentiable :func:`cuproi.deform_roi_pool` on tensors, with mmcv's signature.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features on the CPU or a CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        As in :func:`roi_align`.
    offset : (K, 2, PH, PW) Tensor or None
        Per-bin shifts (x, y) in units of the box size, scaled by ``gamma``.
    output_size, spatial_scale, sampling_ratio, gamma
        As in :func:`cuproi.deform_roi_pool`.
    mask : (K, 1, PH, PW) Tensor or None
        Modulation of every bin (DCNv2), multiplied inside the kernel.

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to ``input``, ``offset``, ``mask`` and the boxes (as in
        :func:`roi_align`).
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    args = (
        input,
        _rois(boxes, input),
        offset,
        pooled_h,
        pooled_w,
        _validate.spatial_scale(spatial_scale),
        _validate.sampling_ratio(sampling_ratio),
        _validate.gamma(gamma),
    )
    return _deform_roi_pool(*args) if mask is None else _deform_roi_pool(*args, mask)
