"""Rotated RoI Align as a torch op, and its module."""

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _validate
from cuproi.torch import _fake
from cuproi.torch._common import _bfloat16_in_float32, _rois, _stream


def _rotated_rois(boxes, like):
    """(K, 6) box tensor from a tensor or a list of per-image (L, 5) rotated box tensors."""
    return _rois(boxes, like, "[cx, cy, w, h, angle]")


@torch.library.custom_op("cuproi::roi_align_rotated", mutates_args=())
def _roi_align_rotated(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clockwise: bool,
) -> Tensor:
    with _stream(input):
        return cuproi.roi_align_rotated(
            input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned, clockwise
        )


@_roi_align_rotated.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, clockwise):
    ratio = (_validate.sampling_ratio, sampling_ratio)
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale, ratio, rotated=True)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::roi_align_rotated_backward", mutates_args=())
def _roi_align_rotated_backward(
    grad: Tensor,
    rois: Tensor,
    input_shape: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clockwise: bool,
    deterministic: bool,
) -> Tensor:
    with _stream(grad):
        return cuproi.roi_align_rotated_backward(
            grad,
            rois,
            tuple(input_shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            aligned,
            clockwise,
            deterministic=deterministic,
        )


@_roi_align_rotated_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, sampling_ratio, aligned, clockwise, deterministic):
    ratio = (_validate.sampling_ratio, sampling_ratio)
    _fake.backward(grad, rois, input_shape, spatial_scale, ratio, rotated=True)
    return grad.new_empty(input_shape)


def _roi_align_rotated_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned, ctx.clockwise = inputs
    ctx.input_shape = list(input.shape)
    ctx.save_for_backward(rois)


def _roi_align_rotated_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = _roi_align_rotated_backward(
        grad.contiguous(),
        rois,
        ctx.input_shape,
        ctx.spatial_scale,
        ctx.sampling_ratio,
        ctx.aligned,
        ctx.clockwise,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None, None, None, None


_roi_align_rotated.register_autograd(
    _roi_align_rotated_grad, setup_context=_roi_align_rotated_setup
)


@_bfloat16_in_float32
def roi_align_rotated(
    input, boxes, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True, clockwise=False
):
    """Differentiable :func:`cuproi.roi_align_rotated` on tensors (detectron2's ROIAlignRotated).

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64 (bfloat16 is computed in float32), on the CPU
        or a CUDA device.
    boxes : (K, 6) Tensor or list of (L_i, 5) Tensors
        ``[batch_index, cx, cy, w, h, angle]`` with the angle in degrees, counter-clockwise
        (detectron2's convention; for mmcv's radians pass ``angle * 180 / pi``), or one
        ``[cx, cy, w, h, angle]`` tensor per image.
    output_size, spatial_scale, sampling_ratio, aligned, clockwise
        As in :func:`cuproi.roi_align_rotated`.

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to ``input`` (not the boxes).

    Examples
    --------
    >>> import torch
    >>> import cuproi.torch
    >>> x = torch.rand(1, 4, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[16.0, 16.0, 20.0, 8.0, 30.0]])]
    >>> out = cuproi.torch.roi_align_rotated(x, boxes, 7, spatial_scale=1.0)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 4, 7, 7), (1, 4, 32, 32))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    return _roi_align_rotated(
        input,
        _rotated_rois(boxes, input),
        pooled_h,
        pooled_w,
        _validate.spatial_scale(spatial_scale),
        _validate.sampling_ratio(sampling_ratio),
        _validate.flag(aligned, "aligned"),
        _validate.flag(clockwise, "clockwise"),
    )


class RoIAlignRotated(nn.Module):
    """Module form of :func:`roi_align_rotated` (detectron2's ``ROIAlignRotated``).

    mmcv's ``RoIAlignRotated`` too, with the angle in degrees instead of radians.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio=0, aligned=True, clockwise=False):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.aligned = _validate.flag(aligned, "aligned")
        self.clockwise = _validate.flag(clockwise, "clockwise")

    def forward(self, input, rois):
        return roi_align_rotated(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.clockwise,
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
            f"clockwise={self.clockwise}"
        )
