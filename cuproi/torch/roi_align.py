"""RoI Align (avg and max mode; gradients for the features and the boxes): op and module."""

import torch
from torch import Tensor

import cuproi
from cuproi import _validate
from cuproi._types import Boxes, OutputSize, PoolMode
from cuproi.torch import _common, _fake, _forward_mode, _script
from cuproi.torch._module import OpModule


@torch.library.custom_op("cuproi::roi_align", mutates_args=())
def _roi_align(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str = "avg",
) -> Tensor:
    with _common.stream(input):
        return cuproi.roi_align(
            input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned, pool_mode
        )


@_roi_align.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, pool_mode="avg"):
    ratio, mode = (_validate.sampling_ratio, sampling_ratio), (_validate.pool_mode, pool_mode)
    _fake.forward(input, rois, pooled_h, pooled_w, spatial_scale, ratio, mode)
    return _fake.output(input, rois, pooled_h, pooled_w)


@torch.library.custom_op("cuproi::roi_align_backward", mutates_args=())
def _roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    input_shape: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
    channels_last: bool = False,
) -> Tensor:
    return _common.run_backward(
        cuproi.roi_align_backward,
        grad,
        (rois, tuple(input_shape)),
        spatial_scale,
        sampling_ratio,
        aligned,
        deterministic=deterministic,
        channels_last=channels_last,
    )


@_roi_align_backward.register_fake
def _(
    grad,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    deterministic,
    channels_last=False,
):
    ratio = (_validate.sampling_ratio, sampling_ratio)
    _fake.backward(grad, rois, input_shape, spatial_scale, ratio)
    return _common.empty_gradient(input_shape, grad, channels_last)


@torch.library.custom_op("cuproi::roi_align_max_backward", mutates_args=())
def _roi_align_max_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
    channels_last: bool = False,
) -> Tensor:
    return _common.run_backward(
        cuproi.roi_align_backward,
        grad,
        (rois, tuple(input.shape)),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode="max",
        input=input,
        deterministic=deterministic,
        channels_last=channels_last,
    )


@_roi_align_max_backward.register_fake
def _(
    grad, input, rois, spatial_scale, sampling_ratio, aligned, deterministic, channels_last=False
):
    # cuproi.roi_align_backward's checks in max mode, which reads the features.
    g, b, x = _fake.prepare(grad_output=grad, boxes=rois, input=input)
    shape = _validate.input_shape(x.shape)
    pooled = _validate.output_size(g.shape[2:])
    scale = _validate.spatial_scale(_fake.hint(spatial_scale))
    _validate.sampling_ratio(_fake.hint(sampling_ratio))
    x = _validate.forward_features(_fake.xp, x, shape)
    k = _fake.boxes(b, shape[0], scale, x.dtype)
    _validate.grad_output(_fake.xp, g, k, shape[1], pooled, dtype=x.dtype)
    return _common.empty_gradient(input.shape, grad, channels_last)


@torch.library.custom_op("cuproi::roi_align_box_backward", mutates_args=())
def _roi_align_box_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
    deterministic: bool,
) -> Tensor:
    grad_rois = _common.run_backward(
        cuproi.roi_align_box_backward,
        grad,
        (input, rois),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode=pool_mode,
        deterministic=deterministic,
    )
    return grad_rois.to(rois.dtype)


@_roi_align_box_backward.register_fake
def _(grad, input, rois, spatial_scale, sampling_ratio, aligned, pool_mode, deterministic):
    _validate.pool_mode(pool_mode)
    _fake.box_backward(grad, input, rois, spatial_scale, (_validate.sampling_ratio, sampling_ratio))
    return rois.new_empty(rois.shape)


def _roi_align_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned = inputs[:7]
    ctx.pool_mode = inputs[7] if len(inputs) > 7 else "avg"
    ctx.input_shape = list(input.shape)
    ctx.channels_last = _common.stored_channels_last(input)
    # The features are kept only when a gradient reads them: max mode, or boxes with a gradient.
    keep = ctx.pool_mode == "max" or rois.requires_grad
    ctx.save_for_backward(rois, input if keep else None)


def _roi_align_grad(ctx, grad):
    rois, input = ctx.saved_tensors
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad = grad.contiguous()
    grad_input = grad_rois = None
    args = (ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned)
    if ctx.needs_input_grad[0]:  # in the features' layout, as torch's own ops do
        layout = (deterministic, ctx.channels_last)
        if ctx.pool_mode == "max":
            grad_input = _forward_mode.call(
                _roi_align_max_backward, grad, input, rois, *args, *layout
            )
        else:
            grad_input = _forward_mode.call(
                _roi_align_backward, grad, rois, ctx.input_shape, *args, *layout
            )
    if ctx.needs_input_grad[1]:
        grad_rois = _forward_mode.call(
            _roi_align_box_backward, grad, input, rois, *args, ctx.pool_mode, deterministic
        )
    return grad_input, grad_rois, None, None, None, None, None, None


_roi_align.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)


def _max_mode_tangent(*_):
    raise NotImplementedError(
        "forward-mode derivatives of roi_align's max mode are not implemented (only the "
        "average mode's); take its gradients in reverse mode (torch.autograd.grad)"
    )


@_script.compiles_as(_script.roi_align)
@_common.bfloat16_in_float32
def roi_align(
    input: Tensor,
    boxes: Boxes[Tensor],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: PoolMode = "avg",
) -> Tensor:
    """Differentiable :func:`cuproi.roi_align` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64 (bfloat16 is computed in float32), on the CPU
        or a CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        ``[batch_index, x1, y1, x2, y2]``, or one ``[x1, y1, x2, y2]`` tensor per image.
    output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        As in :func:`cuproi.roi_align` (``pool_mode="max"``: mmcv's max mode).

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to ``input`` and to the boxes: a (K, 5) box tensor with
        ``requires_grad=True`` gets the gradient of :func:`cuproi.roi_align_box_backward`
        (column 0, the batch index, gets 0); per-image (L_i, 4) tensors get theirs through the
        concatenation that builds the (K, 5) boxes. The features are saved for the backward
        only in max mode or when the boxes require a gradient.

    Examples
    --------
    >>> x = torch.rand(1, 8, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[4.0, 4.0, 20.0, 28.0]])]
    >>> out = cuproi.torch.roi_align(x, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 8, 7, 7), (1, 8, 32, 32))
    """
    args = (
        *_common.first_arguments(input, boxes, output_size, spatial_scale),
        _validate.sampling_ratio(sampling_ratio),
        _validate.flag(aligned, "aligned"),
    )
    if pool_mode == "avg":  # the op exactly as before (torch.compile sees the same graph)
        return _forward_mode.call(_roi_align, *args)
    # Max mode is linear in the features only once the winners are chosen.
    return _forward_mode.call(_roi_align, *args, str(pool_mode), tangent=_max_mode_tangent)


torch.fx.wrap("roi_align")  # a leaf of torch.fx graphs, as torchvision's ops


class RoIAlign(OpModule):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign``; also mmcv's max mode)."""

    _options = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "pool_mode")

    def __init__(
        self,
        output_size: OutputSize,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
        pool_mode: PoolMode = "avg",
    ) -> None:
        super().__init__(output_size, spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.aligned = _validate.flag(aligned, "aligned")
        self.pool_mode = _validate.pool_mode(pool_mode)  # mmcv's RoIAlign(pool_mode="max")

    def extra_repr(self) -> str:
        # torchvision's repr, which has no pool_mode, unless mmcv's "max" is chosen (quoted).
        shown = super().extra_repr().removesuffix(f", pool_mode={self.pool_mode}")
        return shown if self.pool_mode == "avg" else f"{shown}, pool_mode={self.pool_mode!r}"

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.pool_mode,
        )
