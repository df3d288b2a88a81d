"""Float64 loop oracles of RoI Align: torchvision.ops.roi_align (Caffe2 kernel) forward and
backward, mmcv's ``pool_mode="max"`` (max over the gh x gw interpolated samples, an
out-of-range sample counting as 0, the gradient routed to the 4 neighbours of the winning
sample) and the gradient with respect to the box coordinates.
"""

import numpy as np

from oracles import calculus
from oracles.sampling import (
    align_bins,
    bilinear_taps,
    checked_pair,
    features,
    gather,
    grad_array,
    rois_array,
    scatter,
)


def roi_align(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *,
              coord_dtype=np.float64):  # fmt: skip
    """torchvision.ops.roi_align forward (Caffe2 kernel) -> (K, C, PH, PW) float64."""
    x, rois, pooled = features(x), rois_array(rois), checked_pair(output_size)
    # the legacy minimum box size of 1 applies only when not aligned
    bins = align_bins(
        x.shape, rois, pooled, spatial_scale, sampling_ratio, aligned, not aligned, coord_dtype
    )
    return gather(x, bins, (len(rois), x.shape[1], *pooled))


def roi_align_backward(grad_output, rois, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, *, coord_dtype=np.float64):  # fmt: skip
    """Exact transpose of :func:`roi_align` -> grad_input of shape input_shape."""
    rois, pooled = rois_array(rois), checked_pair(output_size)
    go = grad_array(grad_output, (len(rois), input_shape[1], *pooled))
    bins = align_bins(
        input_shape, rois, pooled, spatial_scale, sampling_ratio, aligned, not aligned, coord_dtype
    )
    return scatter(go, bins, input_shape)


def roi_align_max(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """mmcv's max mode: the largest interpolated sample of every bin -> (K, C, PH, PW)."""
    x = np.asarray(x, np.float64)
    pooled = checked_pair(output_size)
    out = np.zeros((len(rois), x.shape[1], *pooled))
    for k, b, ph, pw, s, _ in calculus.bins(rois, pooled, spatial_scale, sampling_ratio, aligned):
        for c in range(x.shape[1]):
            out[k, c, ph, pw] = calculus.winner(x[b, c], s)[0]
    return out


def roi_align_max_backward(grad_output, x, rois, output_size, spatial_scale=1.0,
                           sampling_ratio=-1, aligned=False):  # fmt: skip
    """Gradient of :func:`roi_align_max`: each bin's gradient to the taps of its winner."""
    x = np.asarray(x, np.float64)
    g = np.asarray(grad_output, np.float64)
    pooled = checked_pair(output_size)
    grad = np.zeros_like(x)
    for k, b, ph, pw, s, _ in calculus.bins(rois, pooled, spatial_scale, sampling_ratio, aligned):
        for c in range(x.shape[1]):
            _, at = calculus.winner(x[b, c], s)
            if at is not None:
                for r, q, wt in bilinear_taps(*x.shape[2:], s[at][2], s[at][3]):
                    grad[b, c, r, q] += g[k, c, ph, pw] * wt
    return grad


def roi_align_box_grad(grad_output, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False, pool_mode="avg"):  # fmt: skip
    """d loss / d [batch_index, x1, y1, x2, y2] of roi_align (column 0 is 0)."""
    pooled = checked_pair(output_size)
    return calculus.box_grad(
        grad_output, x, rois, pooled, spatial_scale, sampling_ratio, aligned, mode=pool_mode
    )
