"""Position-sensitive RoI Align (R-FCN) as a torch op, and its module."""

import torch
from torch import Tensor

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _autograd, _common, _forward_mode, _script
from cuproi.torch._module import OpModule

_ps_roi_align = _autograd.define(
    "ps_roi_align",
    ("SymInt sampling_ratio",),
    (_validate.sampling_ratio,),
    channels=_validate.position_sensitive_channels,
)


@_script.compiles_as(_script.ps_roi_align)
@_common.bfloat16_in_float32
def ps_roi_align(
    input: Tensor,
    boxes: Boxes[Tensor],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
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
    >>> x = torch.rand(1, 2 * 7 * 7, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[4.0, 4.0, 20.0, 28.0]])]
    >>> out = cuproi.torch.ps_roi_align(x, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 2, 7, 7), (1, 98, 32, 32))
    """
    _common.score_maps(input, _validate.output_size(output_size))  # before the boxes
    return _forward_mode.call(
        _ps_roi_align,
        *_common.first_arguments(input, boxes, output_size, spatial_scale),
        _validate.sampling_ratio(sampling_ratio),
    )


torch.fx.wrap("ps_roi_align")  # a leaf of torch.fx graphs, as torchvision's ops


class PSRoIAlign(OpModule):
    """Module form of :func:`ps_roi_align` (torchvision's ``PSRoIAlign``)."""

    _options = ("output_size", "spatial_scale", "sampling_ratio")

    def __init__(self, output_size: OutputSize, spatial_scale: float, sampling_ratio: int) -> None:
        super().__init__(output_size, spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)
