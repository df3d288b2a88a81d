"""Precise RoI Pooling as a torch op (gradients for the features and the boxes), and its module."""

import torch
from torch import Tensor

from cuproi import _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _autograd, _common, _forward_mode, _script
from cuproi.torch._module import OpModule

_prroi_pool = _autograd.define("prroi_pool", box_backward=True)


@_script.compiles_as(_script.prroi_pool)
@_common.bfloat16_in_float32
def prroi_pool(
    input: Tensor, boxes: Boxes[Tensor], output_size: OutputSize, spatial_scale: float = 1.0
) -> Tensor:
    """Differentiable :func:`cuproi.prroi_pool` on tensors (mmcv's ``prroi_pool``).

    Parameters
    ----------
    input : (N, C, H, W) Tensor
        Features, float16, float32 or float64 (bfloat16 is computed in float32), on the CPU
        or a CUDA device.
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
    >>> x = torch.rand(1, 8, 32, 32, requires_grad=True)
    >>> boxes = torch.tensor([[0.0, 4.0, 4.0, 20.0, 28.0]], requires_grad=True)
    >>> out = cuproi.torch.prroi_pool(x, boxes, 7, spatial_scale=1.0)
    >>> out.sum().backward()
    >>> tuple(out.shape), tuple(x.grad.shape), tuple(boxes.grad.shape)
    ((1, 8, 7, 7), (1, 8, 32, 32), (1, 5))
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    rois = _common.rois(boxes, input)
    return _forward_mode.call(_prroi_pool, input, rois, pooled_h, pooled_w, scale)


torch.fx.wrap("prroi_pool")  # a leaf of torch.fx graphs, as torchvision's ops


class PrRoIPool(OpModule):
    """Module form of :func:`prroi_pool` (mmcv's ``PrRoIPool``)."""

    def __init__(self, output_size: OutputSize, spatial_scale: float = 1.0) -> None:
        super().__init__(output_size, spatial_scale)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)
