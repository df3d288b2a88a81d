"""Position-sensitive RoI Pool (R-FCN) as a torch op, and its module."""

import torch
from torch import Tensor

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _autograd, _common, _forward_mode, _script
from cuproi.torch._module import OpModule

_ps_roi_pool = _autograd.define("ps_roi_pool", channels=_validate.position_sensitive_channels)


@_script.compiles_as(_script.ps_roi_pool)
@_common.bfloat16_in_float32
def ps_roi_pool(
    input: Tensor, boxes: Boxes[Tensor], output_size: OutputSize, spatial_scale: float = 1.0
) -> Tensor:
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
    _common.score_maps(input, (pooled_h, pooled_w))
    scale = _validate.spatial_scale(spatial_scale)
    rois = _common.rois(boxes, input)
    return _forward_mode.call(_ps_roi_pool, input, rois, pooled_h, pooled_w, scale)


torch.fx.wrap("ps_roi_pool")  # a leaf of torch.fx graphs, as torchvision's ops


class PSRoIPool(OpModule):
    """Module form of :func:`ps_roi_pool` (torchvision's ``PSRoIPool``)."""

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)
