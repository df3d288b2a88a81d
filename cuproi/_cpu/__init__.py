"""NumPy/SciPy backend: the functions of cuproi._cuda, with the same names and signatures.

Every function takes validated, C-contiguous host arrays: features in their own dtype (those of
RoI Align and Deformable RoI Pooling may also be stored channels last), boxes (and offsets) as
a (K, 5) array in the compute dtype (float32 for float16 and float32 features, float64 for
float64), and returns host arrays. float16 features are computed in float32.
Every backward is deterministic (its sums run in a fixed order), so their ``deterministic``
argument changes nothing here. Like the CUDA kernels, they compute in IEEE arithmetic and warn
of nothing: NaN and infinite features give NaN and infinities (0 * inf is NaN), which are the
answer, not a mistake to report (``_ieee``).
"""

import functools

import numpy as np
import numpy as xp  # noqa: F401  (the array module of this backend, used by the public layer)

from cuproi._cpu.deform_roi_pool import deform_roi_pool_backward, deform_roi_pool_forward
from cuproi._cpu.multi_scale_roi_align import (
    multi_scale_roi_align_backward,
    multi_scale_roi_align_forward,
)
from cuproi._cpu.prroi_pool import prroi_pool_backward, prroi_pool_forward
from cuproi._cpu.ps_roi_align import ps_roi_align_backward, ps_roi_align_forward
from cuproi._cpu.ps_roi_pool import ps_roi_pool_backward, ps_roi_pool_forward
from cuproi._cpu.roi_align import roi_align_backward, roi_align_forward
from cuproi._cpu.roi_align_max import roi_align_max_backward, roi_align_max_forward
from cuproi._cpu.roi_align_rotated import (
    roi_align_rotated_backward,
    roi_align_rotated_forward,
)
from cuproi._cpu.roi_pool import roi_pool_backward, roi_pool_forward


def _ieee(function):
    """``function`` computed with NumPy's floating-point warnings off (see the module).

    The backend's threads take the calling thread's error state (_parallel.map_ordered).
    """

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return quiet


__all__ = [
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
    "multi_scale_roi_align_backward",
    "multi_scale_roi_align_forward",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "ps_roi_align_backward",
    "ps_roi_align_forward",
    "ps_roi_pool_backward",
    "ps_roi_pool_forward",
    "roi_align_backward",
    "roi_align_forward",
    "roi_align_max_backward",
    "roi_align_max_forward",
    "roi_align_rotated_backward",
    "roi_align_rotated_forward",
    "roi_pool_backward",
    "roi_pool_forward",
]

# Every entry point, in IEEE arithmetic without warnings.
globals().update({name: _ieee(globals()[name]) for name in __all__})
