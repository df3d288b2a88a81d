"""Deformable RoI Pooling (offsets, modulation mask, box gradients) as a torch op, and its modules.

mmcv's DeformRoIPool, and the packs that predict their own offsets (and mask).
"""

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _common, _fake, _forward_mode, _script
from cuproi.torch._module import OpModule


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
    with _common.stream(input):
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
    _validate.mask(_fake.xp, m, k, pooled, x.dtype)
    return _fake.output(input, rois, pooled_h, pooled_w)


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
    grad_input, grad_offset, grad_mask = _common.run_backward(
        cuproi.deform_roi_pool_backward,
        grad,
        (input, rois, offset),
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
        _common.empty_gradient(input.shape, grad, channels_last),
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
    grad_rois = _common.run_backward(
        cuproi.deform_roi_pool_box_backward,
        grad,
        (input, rois, offset),
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
    _validate.mask(_fake.xp, m, k, pooled, x.dtype)


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
        layout = _common.stored_channels_last(input)
        grad_input, grad_offset, grad_mask = _forward_mode.call(
            _deform_roi_pool_backward, grad, input, rois, offset, *args, mask, layout
        )
    if need[1]:
        grad_rois = _forward_mode.call(
            _deform_roi_pool_box_backward, grad, input, rois, offset, mask, *args
        )
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


@_script.compiles_as(_script.deform_roi_pool)
@_common.bfloat16_in_float32
def deform_roi_pool(
    input: Tensor,
    boxes: Boxes[Tensor],
    offset: Tensor | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
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
    input, rois, pooled_h, pooled_w, scale = _common.first_arguments(
        input, boxes, output_size, spatial_scale
    )
    ratio, gamma = _validate.sampling_ratio(sampling_ratio), _validate.gamma(gamma)
    args = (input, rois, offset, pooled_h, pooled_w, scale, ratio, gamma)
    return _forward_mode.call(_deform_roi_pool, *args, mask)


torch.fx.wrap("deform_roi_pool")  # a leaf of torch.fx graphs, as torchvision's ops


class DeformRoIPool(OpModule):
    """Module form of :func:`deform_roi_pool` (mmcv's ``DeformRoIPool``)."""

    _options = ("output_size", "spatial_scale", "sampling_ratio", "gamma")  # after the offsets

    def __init__(
        self,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(output_size, spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.gamma = _validate.gamma(gamma)

    def forward(
        self, input: Tensor, rois: Tensor | list[Tensor], offset: Tensor | None = None
    ) -> Tensor:
        return self._pool(input, rois, offset, None)

    def _pool(
        self, input: Tensor, rois: Tensor | list[Tensor], offset: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        """:func:`deform_roi_pool` with this module's options."""
        options = (self.output_size, self.spatial_scale, self.sampling_ratio, self.gamma)
        return deform_roi_pool(input, rois, offset, *options, mask)


def _check_channels(input: Tensor, channels: int) -> None:
    """ValueError unless ``input`` has the channels a pack's head was built for."""
    if input.shape[1] != channels:
        raise ValueError(
            f"input has {input.shape[1]} channels; this module was built for "
            f"output_channels={channels}"
        )


torch.fx.wrap("_check_channels")  # a traced graph checks the channels when it runs


def _kept(offset: Tensor) -> bool:
    """Whether a pack keeps the offsets it predicted: not those of a ``torch.fx`` trace."""
    if torch.jit.is_scripting():
        return True
    return not isinstance(offset, torch.fx.Proxy)  # TorchScript skips this line


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

    offset: Tensor | None  # for torch.jit.script, which types the attributes from None

    def __init__(
        self,
        output_size: OutputSize,
        output_channels: int,
        deform_fc_channels: int = 1024,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = _validate.positive_integer(output_channels, "output_channels")
        self.deform_fc_channels = _validate.positive_integer(
            deform_fc_channels, "deform_fc_channels"
        )
        self._heads()

    def _heads(self):
        """Build the head that predicts the offsets from the plain pooling."""
        ph, pw = self.output_size
        self.offset_fc = _head(
            ph * pw * self.output_channels, self.deform_fc_channels, ph * pw * 2, 3
        )
        self.offset = None

    def _predict(self, input: Tensor, rois: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
        """Pool without offsets, then predict (K, 2, PH, PW) offsets from the result."""
        _check_channels(input, self.output_channels)
        plain = self._pool(input, rois, None, None)
        offset = self.offset_fc(plain.flatten(1))
        return plain, offset.view(plain.shape[0], 2, self.output_size[0], self.output_size[1])

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        plain, offset = self._predict(input, rois)
        if _kept(offset):
            self.offset = offset
        return self._pool(input, rois, offset, None)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` with a learned per-bin mask (mmcv's modulated form, DCNv2).

    A second head (``PH*PW*C -> deform_fc_channels -> PH*PW``, sigmoid, last layer
    zero-initialised so the mask starts at 0.5) predicts a ``(K, 1, PH, PW)`` mask that
    multiplies the deformed pooling inside the kernel (mmcv multiplies outside). The last
    offsets and mask stay in :attr:`offset` and :attr:`mask`.
    """

    offset: Tensor | None  # TorchScript reads the annotations of the nearest class only
    mask: Tensor | None

    def _heads(self):
        """Build the heads that predict the offsets and the mask from the plain pooling."""
        super()._heads()
        ph, pw = self.output_size
        # One flat Sequential, as in mmcv, so that its checkpoints load (mask_fc.0, mask_fc.2).
        head = _head(ph * pw * self.output_channels, self.deform_fc_channels, ph * pw, 2)
        self.mask_fc = nn.Sequential(*head, nn.Sigmoid())
        self.mask = None

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        plain, offset = self._predict(input, rois)
        ph, pw = self.output_size
        mask = self.mask_fc(plain.flatten(1)).view(plain.shape[0], 1, ph, pw)
        if _kept(offset):
            self.offset, self.mask = offset, mask
        # The mask multiplies inside the kernel, in the same pass.
        return self._pool(input, rois, offset, mask)
