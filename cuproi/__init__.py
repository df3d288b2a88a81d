"""cuproi: RoI feature extraction (RoI Pool, RoI Align, Deformable RoI Pool) on CuPy and NumPy.

Every op takes NumPy arrays (CPU backend) or CuPy arrays (CUDA kernels) and returns the same
kind. Importing cuproi does not import CuPy.

The examples in the docstrings assume ``import numpy as np`` and ``import cuproi``, as NumPy's
assume ``np``.
"""

from cuproi._validate import set_eager_checks
from cuproi._version import __version__
from cuproi.deform_roi_pool import (
    deform_roi_pool,
    deform_roi_pool_backward,
    deform_roi_pool_box_backward,
)
from cuproi.multi_scale_roi_align import multi_scale_roi_align, multi_scale_roi_align_backward
from cuproi.prroi_pool import prroi_pool, prroi_pool_backward, prroi_pool_box_backward
from cuproi.ps_roi_align import ps_roi_align, ps_roi_align_backward
from cuproi.ps_roi_pool import ps_roi_pool, ps_roi_pool_backward
from cuproi.quantization import quantization_error
from cuproi.roi_align import roi_align, roi_align_backward, roi_align_box_backward
from cuproi.roi_align_rotated import roi_align_rotated, roi_align_rotated_backward
from cuproi.roi_pool import roi_pool, roi_pool_backward

__all__ = [
    "__version__",
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "deform_roi_pool_box_backward",
    "multi_scale_roi_align",
    "multi_scale_roi_align_backward",
    "prroi_pool",
    "prroi_pool_backward",
    "prroi_pool_box_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "quantization_error",
    "roi_align",
    "roi_align_backward",
    "roi_align_box_backward",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "roi_pool",
    "roi_pool_backward",
    "set_eager_checks",
]
