"""Modules of the core ops: RoIAlign, RoIPool, DeformRoIPool and mmcv's packs."""

from torch import nn

from cuproi import _validate
from cuproi.torch._align import roi_align
from cuproi.torch._deform import deform_roi_pool
from cuproi.torch._pool import roi_pool


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign``; also mmcv's max mode)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False, pool_mode="avg"):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.aligned = _validate.flag(aligned, "aligned")
        self.pool_mode = _validate.pool_mode(pool_mode)  # mmcv's RoIAlign(pool_mode="max")

    def forward(self, input, rois):
        mode = (self.sampling_ratio, self.aligned, self.pool_mode)
        return roi_align(input, rois, self.output_size, self.spatial_scale, *mode)

    def extra_repr(self):
        mode = "" if self.pool_mode == "avg" else f", pool_mode={self.pool_mode!r}"
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}{mode}"
        )


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (torchvision's ``RoIPool``)."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class DeformRoIPool(nn.Module):
    """Module form of :func:`deform_roi_pool` (mmcv's ``DeformRoIPool``)."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.gamma = _validate.gamma(gamma)

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
        self.output_channels = _validate.positive_integer(output_channels, "output_channels")
        self.deform_fc_channels = _validate.positive_integer(
            deform_fc_channels, "deform_fc_channels"
        )
        ph, pw = self.output_size
        self.offset_fc = _head(
            ph * pw * self.output_channels, self.deform_fc_channels, ph * pw * 2, 3
        )
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
        # One flat Sequential, as in mmcv, so that its checkpoints load (mask_fc.0, mask_fc.2).
        head = _head(ph * pw * self.output_channels, self.deform_fc_channels, ph * pw, 2)
        self.mask_fc = nn.Sequential(*head, nn.Sigmoid())
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
