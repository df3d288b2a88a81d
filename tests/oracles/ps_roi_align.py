"""Float64 loop oracle of position-sensitive RoI Align (torchvision.ops.ps_roi_align); the
conventions and cuproi's departure (``max(gh * gw, 1)``) are in ``position_sensitive``. The
sampling is RoI Align's, always aligned and without a minimum box size.
"""

import numpy as np

from oracles.position_sensitive import backward, forward
from oracles.sampling import align_bins, checked_pair


def _bins(shape, rois, output_size, spatial_scale, sampling_ratio, coord_dtype):
    pooled = checked_pair(output_size)
    rois = np.asarray(rois)
    return align_bins(shape, rois, pooled, spatial_scale, sampling_ratio, True, False, coord_dtype)


def ps_roi_align(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, coord_dtype=np.float64
):
    """(K, C_out, PH, PW) position-sensitive RoI Align."""
    bins = _bins(np.shape(x), rois, output_size, spatial_scale, sampling_ratio, coord_dtype)
    return forward(x, rois, checked_pair(output_size), bins)


def ps_roi_align_backward(
    g, rois, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, coord_dtype=np.float64
):
    """(N, C, H, W) gradient of ps_roi_align: every bin scatters g * weight / count."""
    bins = _bins(input_shape, rois, output_size, spatial_scale, sampling_ratio, coord_dtype)
    return backward(g, input_shape, checked_pair(output_size), bins)
