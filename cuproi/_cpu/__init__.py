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

from cuproi import _dispatch


def _ieee(function):
    """``function`` computed with NumPy's floating-point warnings off (see the module).

    The backend's threads take the calling thread's error state (_parallel.map_ordered).
    """

    @functools.wraps(function)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return quiet


__all__ = [name for names in _dispatch.OPS.values() for name in names]

# Every entry point, from the module of its op, in IEEE arithmetic without warnings (the names
# of the op modules are rebound here to their ops' functions).
globals().update(_dispatch.entry_points("cuproi._cpu", _ieee))
