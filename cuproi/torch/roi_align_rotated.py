"""Rotated RoI Align as a torch op, and its module."""

import torch
from torch import Tensor

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _autograd, _common, _forward_mode, _script
from cuproi.torch._module import OpModule

_roi_align_rotated = _autograd.define(
    "roi_align_rotated",
    ("SymInt sampling_ratio", "bool aligned", "bool clockwise"),
    (_validate.sampling_ratio,),
    rotated=True,
)


@_script.compiles_as(_script.roi_align_rotated)
@_common.bfloat16_in_float32
def roi_align_rotated(
    input: Tensor,
    boxes: Boxes[Tensor],
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
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
    >>> x = torch.rand(1, 4, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[16.0, 16.0, 20.0, 8.0, 30.0]])]
    >>> out = cuproi.torch.roi_align_rotated(x, boxes, 7, spatial_scale=1.0)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape)
    ((1, 4, 7, 7), (1, 4, 32, 32))
    """
    rotated = "[cx, cy, w, h, angle]"
    return _forward_mode.call(
        _roi_align_rotated,
        *_common.first_arguments(input, boxes, output_size, spatial_scale, columns=rotated),
        _validate.sampling_ratio(sampling_ratio),
        _validate.flag(aligned, "aligned"),
        _validate.flag(clockwise, "clockwise"),
    )


torch.fx.wrap("roi_align_rotated")  # a leaf of torch.fx graphs, as torchvision's ops


class RoIAlignRotated(OpModule):
    """Module form of :func:`roi_align_rotated` (detectron2's ``ROIAlignRotated``).

    mmcv's ``RoIAlignRotated`` too, with the angle in degrees instead of radians.
    """

    _options = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "clockwise")

    def __init__(
        self,
        output_size: OutputSize,
        spatial_scale: float,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
    ) -> None:
        super().__init__(output_size, spatial_scale)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        self.aligned = _validate.flag(aligned, "aligned")
        self.clockwise = _validate.flag(clockwise, "clockwise")

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align_rotated(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.clockwise,
        )
