"""PyTorch adapter: cuproi's ops as differentiable torch operators and modules.

Importing this module imports torch (an optional dependency; ``import cuproi`` alone does not).
The ops are registered with ``torch.library`` as custom operators in the ``cuproi`` namespace,
with fake (meta) implementations and registered autograd, so they work under ``torch.compile``
without graph breaks, with fake tensors, and with ``torch.autograd.gradcheck``. Their backward
calls cuproi's backward functions. Tensors reach the kernels through DLPack without copies: CPU
tensors run on the NumPy backend, CUDA tensors on the CUDA kernels, on the tensor's device and
torch's current stream. Under ``torch.use_deterministic_algorithms(True)`` the backward passes
``deterministic=True``: bit-identical gradients from run to run on the GPU. The fake
implementations refuse what the ops refuse (wrong ranks, shapes and dtypes, bad sizes), with
the same exceptions and messages: ``torch.export`` raises them, ``torch.compile`` reports them
as the cause of its ``TorchRuntimeError``.

Functions keep torchvision's positional signatures (mmcv's for ``deform_roi_pool``), so
``torchvision.ops.roi_align`` can be replaced by :func:`cuproi.torch.roi_align`. The examples
in the docstrings assume ``import torch`` and ``import cuproi.torch``.
"""

from cuproi.torch import _onnx
from cuproi.torch.deform_roi_pool import (
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
    deform_roi_pool,
)
from cuproi.torch.multi_scale_roi_align import MultiScaleRoIAlign, multi_scale_roi_align
from cuproi.torch.prroi_pool import PrRoIPool, prroi_pool
from cuproi.torch.ps_roi_align import PSRoIAlign, ps_roi_align
from cuproi.torch.ps_roi_pool import PSRoIPool, ps_roi_pool
from cuproi.torch.roi_align import RoIAlign, roi_align
from cuproi.torch.roi_align_rotated import RoIAlignRotated, roi_align_rotated
from cuproi.torch.roi_pool import RoIPool, roi_pool

_onnx.install()  # the ops' ONNX translations, once onnxscript is imported

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
