"""Position-sensitive RoI Align and RoI Pool (R-FCN) as torch ops, and their modules."""

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _validate
from cuproi.torch import _fake
from cuproi.torch._common import _bfloat16_in_float32, _rois, _stream

# The check of the features' channels: C_out groups of PH * PW score maps.
_GROUPS = _validate.position_sensitive_channels


def _ps_shape(input, rois, pooled_h, pooled_w):
    return (rois.shape[0], input.shape[1] // (pooled_h * pooled_w), pooled_h, pooled_w)


@torch.library.custom_op("cuproi::ps_roi_align", mutates_args=())
def _ps_roi_align(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    with _stream(input):
        return cuproi.ps_roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio)


@_ps_roi_align.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio):
    ratio = (_validate.sampling_ratio, sampling_ratio)
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale, ratio, channels=_GROUPS)
    return input.new_empty(_ps_shape(input, rois, pooled_h, pooled_w))


@torch.library.custom_op("cuproi::ps_roi_align_backward", mutates_args=())
def _ps_roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    input_shape: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    deterministic: bool,
) -> Tensor:
    with _stream(grad):
        return cuproi.ps_roi_align_backward(
            grad,
            rois,
            tuple(input_shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            deterministic=deterministic,
        )


@_ps_roi_align_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, sampling_ratio, deterministic):
    ratio = (_validate.sampling_ratio, sampling_ratio)
    _fake.backward(grad, rois, input_shape, spatial_scale, ratio, channels=_GROUPS)
    return grad.new_empty(input_shape)


def _ps_roi_align_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale, ctx.sampling_ratio = inputs
    ctx.input_shape = list(input.shape)
    ctx.save_for_backward(rois)


def _ps_roi_align_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = _ps_roi_align_backward(
        grad.contiguous(),
        rois,
        ctx.input_shape,
        ctx.spatial_scale,
        ctx.sampling_ratio,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None, None


_ps_roi_align.register_autograd(_ps_roi_align_grad, setup_context=_ps_roi_align_setup)


@_bfloat16_in_float32
def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Differentiable :func:`cuproi.ps_roi_align` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Position-sensitive score maps, ``C`` a multiple of ``PH * PW``; float16, float32 or
        float64 (bfloat16 is computed in float32), on the CPU or a CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        ``[batch_index, x1, y1, x2, y2]``, or one ``[x1, y1, x2, y2]`` tensor per image.
    output_size, spatial_scale, sampling_ratio
        As in :func:`cuproi.ps_roi_align`.

    Returns
    -------
    (K, C / (PH * PW), PH, PW) Tensor
        Differentiable with respect to ``input`` (not the boxes). A box of zero size gives 0
        where torchvision gives NaN; otherwise torchvision's values.

    Examples
    --------
    >>> import torch
    >>> import cuproi.torch
    >>> x = torch.rand(1, 2 * 7 * 7, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[4.0, 4.0, 20.0, 28.0]])]
    >>> out = cuproi.torch.ps_roi_align(x, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 2, 7, 7), (1, 98, 32, 32))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    if getattr(input, "ndim", None) == 4:  # else the op names the rank it expects
        _validate.position_sensitive_channels(input.shape[1], (pooled_h, pooled_w))
    return _ps_roi_align(
        input,
        _rois(boxes, input),
        pooled_h,
        pooled_w,
        _validate.spatial_scale(spatial_scale),
        _validate.sampling_ratio(sampling_ratio),
    )


@torch.library.custom_op("cuproi::ps_roi_pool", mutates_args=())
def _ps_roi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    with _stream(input):
        return cuproi.ps_roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)


@_ps_roi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale, channels=_GROUPS)
    return input.new_empty(_ps_shape(input, rois, pooled_h, pooled_w))


@torch.library.custom_op("cuproi::ps_roi_pool_backward", mutates_args=())
def _ps_roi_pool_backward(
    grad: Tensor, rois: Tensor, input_shape: list[int], spatial_scale: float, deterministic: bool
) -> Tensor:
    with _stream(grad):
        return cuproi.ps_roi_pool_backward(
            grad,
            rois,
            tuple(input_shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            deterministic=deterministic,
        )


@_ps_roi_pool_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, deterministic):
    _fake.backward(grad, rois, input_shape, spatial_scale, channels=_GROUPS)
    return grad.new_empty(input_shape)


def _ps_roi_pool_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale = inputs
    ctx.input_shape = list(input.shape)
    ctx.save_for_backward(rois)


def _ps_roi_pool_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = _ps_roi_pool_backward(
        grad.contiguous(),
        rois,
        ctx.input_shape,
        ctx.spatial_scale,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None


_ps_roi_pool.register_autograd(_ps_roi_pool_grad, setup_context=_ps_roi_pool_setup)


@_bfloat16_in_float32
def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Differentiable :func:`cuproi.ps_roi_pool` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Position-sensitive score maps, ``C`` a multiple of ``PH * PW``, on the CPU or a CUDA
        device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        As in :func:`ps_roi_align`.
    output_size, spatial_scale
        As in :func:`cuproi.ps_roi_pool`.

    Returns
    -------
    (K, C / (PH * PW), PH, PW) Tensor
        The mean of every bin over its score map; differentiable with respect to ``input``.
        Bins reaching the last row or column of the map include it (torchvision's forward
        leaves it out; see :func:`cuproi.ps_roi_pool`).
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    if getattr(input, "ndim", None) == 4:  # else the op names the rank it expects
        _validate.position_sensitive_channels(input.shape[1], (pooled_h, pooled_w))
    scale = _validate.spatial_scale(spatial_scale)
    return _ps_roi_pool(input, _rois(boxes, input), pooled_h, pooled_w, scale)


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align` (torchvision's ``PSRoIAlign``)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)

    def forward(self, input, rois):
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}"
        )


class PSRoIPool(nn.Module):
    """Module form of :func:`ps_roi_pool` (torchvision's ``PSRoIPool``)."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)

    def forward(self, input, rois):
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
