"""Float64 loop oracles of RoI Align: torchvision.ops.roi_align (Caffe2 kernel) forward and
backward, mmcv's ``pool_mode="max"`` (max over the gh x gw interpolated samples, an
out-of-range sample counting as 0, the gradient routed to the 4 neighbours of the winning
sample) and the gradient with respect to the box coordinates.
"""

import numpy as np

from oracles.calculus import box_grad, pair, samples, taps, winner
from oracles.sampling import (
    align_geometry,
    batch_index,
    bilinear,
    bilinear_weights,
    checked_pair,
    features,
    rois_array,
    sample_coords,
)


def roi_align(
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    coord_dtype=np.float64,
):
    """torchvision.ops.roi_align forward (Caffe2 kernel) -> (K, C, PH, PW) float64."""
    x = features(x)
    rois = rois_array(rois)
    PH, PW = checked_pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    for k in range(K):
        b = batch_index(rois, k)
        g = align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, aligned, not aligned, coord_dtype
        )
        for c in range(C):
            img = x[b, c]
            for ph in range(PH):
                for pw in range(PW):
                    ys, xs = sample_coords(g["sy"], g["sx"], ph, pw, g, coord_dtype)
                    total = 0.0
                    for yy in ys:
                        for xx in xs:
                            total += bilinear(img, yy, xx)
                    out[k, c, ph, pw] = total / g["count"]
    return out


def roi_align_backward(
    grad_output,
    rois,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    coord_dtype=np.float64,
):
    """Exact transpose of :func:`roi_align` -> grad_input of shape input_shape."""
    rois = rois_array(rois)
    PH, PW = checked_pair(output_size)
    N, C, H, W = (int(v) for v in input_shape)
    K = rois.shape[0]
    go = np.asarray(grad_output, dtype=np.float64)
    if go.shape != (K, C, PH, PW):
        raise ValueError(f"grad_output shape {go.shape!r} != {(K, C, PH, PW)!r}")
    grad = np.zeros((N, C, H, W), dtype=np.float64)
    for k in range(K):
        b = batch_index(rois, k)
        g = align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, aligned, not aligned, coord_dtype
        )
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    ys, xs = sample_coords(g["sy"], g["sx"], ph, pw, g, coord_dtype)
                    gval = go[k, c, ph, pw] / g["count"]
                    for yy in ys:
                        for xx in xs:
                            for (r, col), w in bilinear_weights(H, W, yy, xx):
                                grad[b, c, r, col] += gval * w
    return grad


def roi_align_max(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    pooled = pair(output_size)
    out = np.zeros((len(rois), x.shape[1], *pooled))
    for k, roi in enumerate(rois):
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                s, _ = samples(roi, spatial_scale, pooled, sampling_ratio, aligned, ph, pw)
                for c in range(x.shape[1]):
                    out[k, c, ph, pw] = winner(x[int(roi[0]), c], s)[0]
    return out


def roi_align_max_backward(
    grad_output, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    g = np.asarray(grad_output, np.float64)
    pooled = pair(output_size)
    grad = np.zeros_like(x)
    h, w = x.shape[2:]
    for k, roi in enumerate(rois):
        b = int(roi[0])
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                s, _ = samples(roi, spatial_scale, pooled, sampling_ratio, aligned, ph, pw)
                for c in range(x.shape[1]):
                    _, at = winner(x[b, c], s)
                    if at is None:
                        continue
                    for r, q, wt in taps(h, w, s[at][2], s[at][3]):
                        grad[b, c, r, q] += g[k, c, ph, pw] * wt
    return grad


def roi_align_box_grad(
    grad_output,
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
):
    """d loss / d [batch_index, x1, y1, x2, y2] of roi_align (column 0 is 0)."""
    return box_grad(
        grad_output,
        x,
        rois,
        pair(output_size),
        spatial_scale,
        sampling_ratio,
        aligned,
        mode=pool_mode,
    )
