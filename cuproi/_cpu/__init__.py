"""NumPy/SciPy backend: the op functions of the public API, on validated host arrays.

``cuproi._cpu`` and ``cuproi._cuda`` export the same functions, with the same signatures: those
of the public API (every op of ``cuproi.__all__``), each defined in the module of its op
(``_cpu/<op>.py`` defines ``<op>``, ``<op>_backward`` and ``<op>_box_backward``). They take the
public parameters, in the public order, as the public layer has validated them:

- ``boxes`` is ``rois``: a C-contiguous (K, 5) array (K, 6 for roi_align_rotated) in the
  compute dtype (float32 for float16 and float32 features, float64 for float64);
- ``output_size`` is a ``(h, w)`` tuple of ints; the backwards that read it from the shape of
  ``grad_output`` (all but roi_pool_backward, which has no such parameter) leave it out;
- multi_scale_roi_align(_backward) take ``thresholds`` in the place of ``canonical_scale`` and
  ``canonical_level``: the ascending box areas (float64, one per level after the first) at
  which a box steps to the next level, which the public layer derives from them and from the
  levels of ``spatial_scales`` (a list of floats);
- the others as the public functions take them, flags as bools. ``roi_pool`` returns ``out``, or
  ``(out, argmax)`` with ``return_argmax``, as the public function does.

Features are C-contiguous host arrays in their own dtype (those of RoI Align and Deformable RoI
Pooling may also be stored channels last), and the results are host arrays. float16 features are
computed in float32. Every backward is deterministic (its sums run in a fixed order), so their
``deterministic`` argument changes nothing here. Like the CUDA kernels, they compute in IEEE
arithmetic and warn of nothing: NaN and infinite features give NaN and infinities (0 * inf is
NaN), which are the answer, not a mistake to report (``_ieee``).
"""

import functools

import numpy as np
import numpy as xp  # noqa: F401  (the array module of this backend, used by the public layer)

from cuproi._cpu.deform_roi_pool import (
    deform_roi_pool,
    deform_roi_pool_backward,
    deform_roi_pool_box_backward,
)
from cuproi._cpu.multi_scale_roi_align import (
    multi_scale_roi_align,
    multi_scale_roi_align_backward,
)
from cuproi._cpu.prroi_pool import prroi_pool, prroi_pool_backward, prroi_pool_box_backward
from cuproi._cpu.ps_roi_align import ps_roi_align, ps_roi_align_backward
from cuproi._cpu.ps_roi_pool import ps_roi_pool, ps_roi_pool_backward
from cuproi._cpu.roi_align import roi_align, roi_align_backward, roi_align_box_backward
from cuproi._cpu.roi_align_rotated import roi_align_rotated, roi_align_rotated_backward
from cuproi._cpu.roi_pool import roi_pool, roi_pool_backward


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
    "roi_align",
    "roi_align_backward",
    "roi_align_box_backward",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "roi_pool",
    "roi_pool_backward",
]

# Every entry point, in IEEE arithmetic without warnings.
globals().update({name: _ieee(globals()[name]) for name in __all__})
