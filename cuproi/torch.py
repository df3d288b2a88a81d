"""PyTorch adapter: cuproi's ops as differentiable torch operators and modules.

Importing this module imports torch (an optional dependency; ``import cuproi`` alone does not).
The ops are registered with ``torch.library`` as custom operators in the ``cuproi`` namespace,
with fake (meta) implementations and registered autograd, so they work under ``torch.compile``
without graph breaks, with fake tensors, and with ``torch.autograd.gradcheck``. Their backward
calls cuproi's backward functions. Tensors reach the kernels through DLPack without copies: CPU
tensors run on the NumPy backend, CUDA tensors on the CUDA kernels, on the tensor's device and
torch's current stream. Under ``torch.use_deterministic_algorithms(True)`` the backward passes
``deterministic=True``: bit-identical gradients from run to run on the GPU.

Functions keep torchvision's positional signatures (mmcv's for ``deform_roi_pool``), so
``torchvision.ops.roi_align`` can be replaced by :func:`cuproi.torch.roi_align`.
"""

import contextlib
import math

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _validate

__all__ = [
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformRoIPoolPack",
    "MultiScaleRoIAlign",
    "PSRoIAlign",
    "PSRoIPool",
    "PrRoIPool",
    "RoIAlign",
    "RoIAlignRotated",
    "RoIPool",
    "deform_roi_pool",
    "multi_scale_roi_align",
    "prroi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_align_rotated",
    "roi_pool",
]


def _stream(tensor):
    """Context in which CuPy launches on torch's current stream of ``tensor``'s device."""
    if not tensor.is_cuda:
        return contextlib.nullcontext()
    import cupy

    stream = torch.cuda.current_stream(tensor.device)
    if hasattr(stream, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
        external = cupy.cuda.Stream.from_external(stream)
    else:  # CuPy < 14, or a torch stream without the CUDA stream protocol
        external = cupy.cuda.ExternalStream(stream.cuda_stream, tensor.device.index)
    return external


def _rois(boxes, like):
    """(K, 5) box tensor from a tensor or torchvision's list of per-image (L, 4) tensors."""
    if isinstance(boxes, (list, tuple)):
        parts = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        return torch.cat(parts) if parts else like.new_zeros((0, 5))
    return boxes


# ---- roi_align -------------------------------------------------------------------------------


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
    with _stream(input):
        return cuproi.roi_align(
            input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned, pool_mode
        )


@_roi_align.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, pool_mode="avg"):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::roi_align_backward", mutates_args=())
def _roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    input_shape: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> Tensor:
    with _stream(grad):
        return cuproi.roi_align_backward(
            grad,
            rois,
            tuple(input_shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            aligned,
            deterministic=deterministic,
        )


@_roi_align_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, sampling_ratio, aligned, deterministic):
    return grad.new_empty(input_shape)


@torch.library.custom_op("cuproi::roi_align_max_backward", mutates_args=())
def _roi_align_max_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> Tensor:
    with _stream(grad):
        return cuproi.roi_align_backward(
            grad,
            rois,
            tuple(input.shape),
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            aligned,
            pool_mode="max",
            input=input,
            deterministic=deterministic,
        )


@_roi_align_max_backward.register_fake
def _(grad, input, rois, spatial_scale, sampling_ratio, aligned, deterministic):
    return grad.new_empty(input.shape)


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
    with _stream(grad):
        grad_rois = cuproi.roi_align_box_backward(
            grad,
            input,
            rois,
            tuple(grad.shape[2:]),
            spatial_scale,
            sampling_ratio,
            aligned,
            pool_mode=pool_mode,
            deterministic=deterministic,
        )
    return grad_rois.to(rois.dtype)


@_roi_align_box_backward.register_fake
def _(grad, input, rois, spatial_scale, sampling_ratio, aligned, pool_mode, deterministic):
    return rois.new_empty(rois.shape)


def _roi_align_setup(ctx, inputs, output):
    input, rois, _, _, ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned = inputs[:7]
    ctx.pool_mode = inputs[7] if len(inputs) > 7 else "avg"
    ctx.input_shape = list(input.shape)
    # The features are kept only when a gradient reads them: max mode, or boxes with a gradient.
    keep = ctx.pool_mode == "max" or rois.requires_grad
    ctx.save_for_backward(rois, input if keep else None)


def _roi_align_grad(ctx, grad):
    rois, input = ctx.saved_tensors
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad = grad.contiguous()
    grad_input = grad_rois = None
    args = (ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned)
    if ctx.needs_input_grad[0]:
        if ctx.pool_mode == "max":
            grad_input = _roi_align_max_backward(grad, input, rois, *args, deterministic)
        else:
            grad_input = _roi_align_backward(grad, rois, ctx.input_shape, *args, deterministic)
    if ctx.needs_input_grad[1]:
        grad_rois = _roi_align_box_backward(grad, input, rois, *args, ctx.pool_mode, deterministic)
    return grad_input, grad_rois, None, None, None, None, None, None


_roi_align.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)


def roi_align(
    input,
    boxes,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
):
    """Differentiable :func:`cuproi.roi_align` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64, on the CPU or a CUDA device.
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
    >>> import torch
    >>> import cuproi.torch
    >>> x = torch.rand(1, 8, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[4.0, 4.0, 20.0, 28.0]])]
    >>> out = cuproi.torch.roi_align(x, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 8, 7, 7), (1, 8, 32, 32))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    args = (
        input,
        _rois(boxes, input),
        pooled_h,
        pooled_w,
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
    )
    # The default mode calls the op exactly as before (torch.compile sees the same graph).
    return _roi_align(*args) if pool_mode == "avg" else _roi_align(*args, str(pool_mode))


# ---- roi_pool --------------------------------------------------------------------------------


@torch.library.custom_op("cuproi::roi_pool", mutates_args=())
def _roi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> tuple[Tensor, Tensor]:
    with _stream(input):
        return cuproi.roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale, True)


@_roi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    shape = (rois.shape[0], input.shape[1], pooled_h, pooled_w)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.custom_op("cuproi::roi_pool_backward", mutates_args=())
def _roi_pool_backward(
    grad: Tensor, rois: Tensor, argmax: Tensor, input_shape: list[int], deterministic: bool
) -> Tensor:
    with _stream(grad):
        return cuproi.roi_pool_backward(
            grad, rois, argmax, tuple(input_shape), deterministic=deterministic
        )


@_roi_pool_backward.register_fake
def _(grad, rois, argmax, input_shape, deterministic):
    return grad.new_empty(input_shape)


def _roi_pool_setup(ctx, inputs, output):
    input, rois = inputs[:2]
    ctx.input_shape = list(input.shape)
    ctx.save_for_backward(rois, output[1])
    ctx.mark_non_differentiable(output[1])


def _roi_pool_grad(ctx, grad, grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = _roi_pool_backward(
        grad.contiguous(),
        rois,
        argmax,
        ctx.input_shape,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None


_roi_pool.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
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
    pooled_h, pooled_w = _validate.output_size(output_size)
    out, _ = _roi_pool(input, _rois(boxes, input), pooled_h, pooled_w, float(spatial_scale))
    return out


# ---- deform_roi_pool -------------------------------------------------------------------------


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
        )
    # An op returns tensors only: an empty one stands for "no gradient" (no offset, no mask).
    return (
        grad_input,
        grad.new_empty(0) if grad_offset is None else grad_offset,
        grad.new_empty(0) if grad_mask is None else grad_mask,
    )


@_deform_roi_pool_backward.register_fake
def _(grad, input, rois, offset, spatial_scale, sampling_ratio, gamma, deterministic, mask=None):
    return (
        input.new_empty(input.shape),
        grad.new_empty(0 if offset is None else offset.shape),
        grad.new_empty(0 if mask is None else mask.shape),
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
    return rois.new_empty(rois.shape)


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
            grad, input, rois, offset, *args, mask
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
        float(spatial_scale),
        int(sampling_ratio),
        float(gamma),
    )
    return _deform_roi_pool(*args) if mask is None else _deform_roi_pool(*args, mask)


# ---- modules ---------------------------------------------------------------------------------


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign``)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input, rois):
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (torchvision's ``RoIPool``)."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class DeformRoIPool(nn.Module):
    """Module form of :func:`deform_roi_pool` (mmcv's ``DeformRoIPool``)."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.gamma = gamma

    def forward(self, input, rois, offset=None):
        return deform_roi_pool(
            input,
            rois,
            offset,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.gamma,
        )

    def extra_repr(self):
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}"
        )


def _head(in_features, hidden, out_features, layers):
    """Fully connected head ``layers`` deep whose last layer starts at zero."""
    sizes = [in_features] + [hidden] * (layers - 1)
    modules = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    last = nn.Linear(sizes[-1], out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*modules, last)


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its own offsets (mmcv's ``DeformRoIPoolPack``).

    Pools every box once without offsets, feeds the result to a 3-layer fully connected head
    (``PH*PW*C -> deform_fc_channels -> deform_fc_channels -> PH*PW*2``, ReLU between, last
    layer zero-initialised so training starts from plain RoI Align), and pools again with the
    predicted offsets. The offsets of the last call stay in :attr:`offset`, so a training loss
    can penalise them (an L2 term keeps the learned deformations small).

    Parameters
    ----------
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    output_channels : int
        Channels ``C`` of the features (the head's input is ``PH * PW * C``).
    deform_fc_channels : int, optional
        Width of the hidden layers.
    spatial_scale, sampling_ratio, gamma
        As in :func:`deform_roi_pool`.

    Attributes
    ----------
    offset : (K, 2, PH, PW) Tensor or None
        The offsets predicted by the last forward call (part of the autograd graph).
    """

    def __init__(
        self,
        output_size,
        output_channels,
        deform_fc_channels=1024,
        spatial_scale=1.0,
        sampling_ratio=0,
        gamma=0.1,
    ):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = output_channels
        self.deform_fc_channels = deform_fc_channels
        ph, pw = self.output_size
        self.offset_fc = _head(ph * pw * output_channels, deform_fc_channels, ph * pw * 2, 3)
        self.offset = None

    def _check(self, input):
        if input.shape[1] != self.output_channels:
            raise ValueError(
                f"input has {input.shape[1]} channels; this module was built for "
                f"output_channels={self.output_channels}"
            )

    def _predict(self, input, rois):
        """Pool without offsets, then predict (K, 2, PH, PW) offsets from the result."""
        plain = super().forward(input, rois)
        offset = self.offset_fc(plain.flatten(1))
        return plain, offset.view(plain.shape[0], 2, *self.output_size)

    def forward(self, input, rois):
        self._check(input)
        _, self.offset = self._predict(input, rois)
        return super().forward(input, rois, self.offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` with a learned per-bin mask (mmcv's modulated form, DCNv2).

    A second head (``PH*PW*C -> deform_fc_channels -> PH*PW``, sigmoid, last layer
    zero-initialised so the mask starts at 0.5) predicts a ``(K, 1, PH, PW)`` mask that
    multiplies the deformed pooling inside the kernel (mmcv multiplies outside). The last
    offsets and mask stay in :attr:`offset` and :attr:`mask`.
    """

    def __init__(
        self,
        output_size,
        output_channels,
        deform_fc_channels=1024,
        spatial_scale=1.0,
        sampling_ratio=0,
        gamma=0.1,
    ):
        super().__init__(
            output_size, output_channels, deform_fc_channels, spatial_scale, sampling_ratio, gamma
        )
        ph, pw = self.output_size
        self.mask_fc = nn.Sequential(
            _head(ph * pw * output_channels, deform_fc_channels, ph * pw, 2), nn.Sigmoid()
        )
        self.mask = None

    def forward(self, input, rois):
        self._check(input)
        plain, self.offset = self._predict(input, rois)
        self.mask = self.mask_fc(plain.flatten(1)).view(plain.shape[0], 1, *self.output_size)
        return deform_roi_pool(  # the mask multiplies inside the kernel, in the same pass
            input,
            rois,
            self.offset,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.gamma,
            self.mask,
        )


# ---- multi_scale_roi_align (FPN) ---------------------------------------------------------------


@torch.library.custom_op("cuproi::multi_scale_roi_align", mutates_args=())
def _multi_scale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    with _stream(features[0]):
        return cuproi.multi_scale_roi_align(
            list(features),
            rois,
            (pooled_h, pooled_w),
            spatial_scales,
            sampling_ratio,
            aligned,
            canonical_scale,
            canonical_level,
        )


@_multi_scale_roi_align.register_fake
def _(features, rois, pooled_h, pooled_w, *args):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::multi_scale_roi_align_backward", mutates_args=())
def _multi_scale_roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    input_shapes: list[int],
    spatial_scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
    deterministic: bool,
) -> list[Tensor]:
    with _stream(grad):
        grads = cuproi.multi_scale_roi_align_backward(
            grad,
            rois,
            _shapes(input_shapes),
            tuple(grad.shape[2:]),
            spatial_scales,
            sampling_ratio,
            aligned,
            canonical_scale,
            canonical_level,
            deterministic=deterministic,
        )
    return [g.clone() for g in grads] if grad.is_cuda else grads  # CUDA: views of one buffer


@_multi_scale_roi_align_backward.register_fake
def _(grad, rois, input_shapes, *args):
    return [grad.new_empty(s) for s in _shapes(input_shapes)]


def _shapes(flat):
    """Per-level (N, C, H, W) from the flat list an op schema can carry."""
    return [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)]


def _multi_scale_setup(ctx, inputs, output):
    features, rois, _, _, *ctx.options = inputs
    ctx.input_shapes = [int(v) for f in features for v in f.shape]
    ctx.save_for_backward(rois)


def _multi_scale_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level = ctx.options
    grads = _multi_scale_roi_align_backward(
        grad.contiguous(),
        rois,
        ctx.input_shapes,
        spatial_scales,
        sampling_ratio,
        aligned,
        canonical_scale,
        canonical_level,
        torch.are_deterministic_algorithms_enabled(),
    )
    return list(grads), None, None, None, None, None, None, None, None


_multi_scale_roi_align.register_autograd(_multi_scale_grad, setup_context=_multi_scale_setup)


def multi_scale_roi_align(
    features,
    boxes,
    output_size,
    spatial_scales,
    sampling_ratio=-1,
    aligned=False,
    canonical_scale=224,
    canonical_level=4,
):
    """Differentiable :func:`cuproi.multi_scale_roi_align` on tensors (every level).

    Parameters
    ----------
    features : list of (N, C, H_l, W_l) Tensors
        The pyramid, finest first, on the CPU or one CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        ``[batch_index, x1, y1, x2, y2]``, or one ``[x1, y1, x2, y2]`` tensor per image, in
        image coordinates.
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
        As in :func:`cuproi.multi_scale_roi_align`.

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to every level of ``features`` (not the boxes).

    Examples
    --------
    >>> import torch
    >>> import cuproi.torch
    >>> p2 = torch.rand(1, 4, 64, 64, requires_grad=True)
    >>> p3 = torch.rand(1, 4, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 250.0, 250.0]])]
    >>> out = cuproi.torch.multi_scale_roi_align([p2, p3], boxes, 7, [1 / 4, 1 / 8], 2)
    >>> out.sum().backward()
    >>> tuple(out.shape), p2.grad.abs().sum() > 0, p3.grad.abs().sum() > 0
    ((2, 4, 7, 7), tensor(True), tensor(True))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    features = list(features)
    return _multi_scale_roi_align(
        features,
        _rois(boxes, features[0]) if features else boxes,
        pooled_h,
        pooled_w,
        [float(s) for s in spatial_scales],
        int(sampling_ratio),
        bool(aligned),
        float(canonical_scale),
        int(canonical_level),
    )


def _infer_scale(feature, image_size):
    """The scale of a level by torchvision's rule: 2**round(log2(height / image height))."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


class MultiScaleRoIAlign(nn.Module):
    """FPN pooler with torchvision's interface (``torchvision.ops.MultiScaleRoIAlign``).

    Pools every box from the level of ``x`` its size selects, all levels in one kernel launch
    on the GPU (see :func:`cuproi.multi_scale_roi_align` for the level rule).

    Parameters
    ----------
    featmap_names : list of str
        Keys of the feature maps of ``x`` to pool from; they are taken in the order of ``x``.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    sampling_ratio : int
        Samples per bin and axis; ``<= 0`` adaptive.
    canonical_scale, canonical_level : optional
        The level rule's constants (224 and 4, as in the FPN paper and torchvision).
    aligned : bool, optional
        Half-pixel boxes; torchvision has no such switch (always False).

    Notes
    -----
    As torchvision, the scale of each level is inferred from its height and the largest image
    height of ``image_shapes``, rounded to a power of two. Unlike torchvision, which infers the
    scales on the first call and keeps them, they are inferred on every call (they depend
    only on shapes: no device synchronisation); the last ones are in :attr:`scales`.
    """

    def __init__(
        self,
        featmap_names,
        output_size,
        sampling_ratio,
        *,
        canonical_scale=224,
        canonical_level=4,
        aligned=False,
    ):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _validate.output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.scales = None

    def forward(self, x, boxes, image_shapes):
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"x holds none of the feature maps {self.featmap_names}")
        if not image_shapes:
            raise ValueError("image_shapes must not be empty")
        size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        self.scales = [_infer_scale(f, size) for f in features]
        return multi_scale_roi_align(
            features,
            boxes,
            self.output_size,
            self.scales,
            self.sampling_ratio,
            self.aligned,
            self.canonical_scale,
            self.canonical_level,
        )

    def extra_repr(self):
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, canonical_scale={self.canonical_scale}, "
            f"canonical_level={self.canonical_level}, aligned={self.aligned}"
        )


# ---- ps_roi_align, ps_roi_pool (R-FCN) ---------------------------------------------------------


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


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Differentiable :func:`cuproi.ps_roi_align` on tensors, a drop-in for torchvision's.

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Position-sensitive score maps, ``C`` a multiple of ``PH * PW``; float16, float32 or
        float64, on the CPU or a CUDA device.
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
    _validate.position_sensitive_channels(input.shape[1], (pooled_h, pooled_w))
    return _ps_roi_align(
        input,
        _rois(boxes, input),
        pooled_h,
        pooled_w,
        float(spatial_scale),
        int(sampling_ratio),
    )


@torch.library.custom_op("cuproi::ps_roi_pool", mutates_args=())
def _ps_roi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    with _stream(input):
        return cuproi.ps_roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)


@_ps_roi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
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
    _validate.position_sensitive_channels(input.shape[1], (pooled_h, pooled_w))
    return _ps_roi_pool(input, _rois(boxes, input), pooled_h, pooled_w, float(spatial_scale))


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align` (torchvision's ``PSRoIAlign``)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

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
        self.spatial_scale = spatial_scale

    def forward(self, input, rois):
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


# ---- prroi_pool ------------------------------------------------------------------------------


@torch.library.custom_op("cuproi::prroi_pool", mutates_args=())
def _prroi_pool(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    with _stream(input):
        return cuproi.prroi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)


@_prroi_pool.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
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


def prroi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Differentiable :func:`cuproi.prroi_pool` on tensors (mmcv's ``prroi_pool``).

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64, on the CPU or a CUDA device.
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
    return _prroi_pool(input, _rois(boxes, input), pooled_h, pooled_w, float(spatial_scale))


class PrRoIPool(nn.Module):
    """Module form of :func:`prroi_pool` (mmcv's ``PrRoIPool``)."""

    def __init__(self, output_size, spatial_scale=1.0):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input, rois):
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


# ---- roi_align_rotated -----------------------------------------------------------------------


def _rotated_rois(boxes, like):
    """(K, 6) box tensor from a tensor or a list of per-image (L, 5) rotated box tensors."""
    if isinstance(boxes, (list, tuple)):
        parts = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        return torch.cat(parts) if parts else like.new_zeros((0, 6))
    return boxes


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


def roi_align_rotated(
    input, boxes, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True, clockwise=False
):
    """Differentiable :func:`cuproi.roi_align_rotated` on tensors (detectron2's ROIAlignRotated).

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64, on the CPU or a CUDA device.
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
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        bool(clockwise),
    )


class RoIAlignRotated(nn.Module):
    """Module form of :func:`roi_align_rotated` (detectron2's ``ROIAlignRotated``).

    mmcv's ``RoIAlignRotated`` too, with the angle in degrees instead of radians.
    """

    def __init__(self, output_size, spatial_scale, sampling_ratio=0, aligned=True, clockwise=False):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.clockwise = clockwise

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
