"""Float64 loop oracles of Deformable RoI Pool: mmcv.ops.deform_roi_pool forward and backward
(offsets included), DCNv2 / mmcv's ``ModulatedDeformRoIPoolPack`` (``mask * deform_roi_pool``)
and the gradient with respect to the box coordinates.
"""

import numpy as np

from oracles.calculus import box_grad, deform_shift, pair, samples, value
from oracles.sampling import (
    align_geometry,
    batch_index,
    bilinear,
    bilinear_grad,
    bilinear_weights,
    checked_pair,
    deform_starts,
    features,
    rois_array,
    sample_coords,
)


def _check_offset(offset, K, PH, PW):
    if offset is None:
        return None
    offset = np.asarray(offset)
    if offset.shape != (K, 2, PH, PW):
        raise ValueError(f"offset shape {offset.shape!r} != {(K, 2, PH, PW)!r}")
    return offset


def deform_roi_pool(
    x,
    rois,
    offset,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    gamma=0.1,
    *,
    coord_dtype=np.float64,
):
    """mmcv.ops.deform_roi_pool forward -> (K, C, PH, PW) float64.

    Always aligned (-0.5), no minimum box size.  offset (K, 2, PH, PW):
    channel 0 shifts x by gamma*rw*offset, channel 1 shifts y by gamma*rh*offset.
    """
    x = features(x)
    rois = rois_array(rois)
    PH, PW = checked_pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    offset = _check_offset(offset, K, PH, PW)
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    for k in range(K):
        b = batch_index(rois, k)
        g = align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, True, False, coord_dtype
        )
        for ph in range(PH):
            for pw in range(PW):
                sy, sx, _, _ = deform_starts(g, offset, k, ph, pw, gamma, coord_dtype)
                ys, xs = sample_coords(sy, sx, ph, pw, g, coord_dtype)
                for c in range(C):
                    img = x[b, c]
                    total = 0.0
                    for yy in ys:
                        for xx in xs:
                            total += bilinear(img, yy, xx)
                    out[k, c, ph, pw] = total / g["count"]
    return out


def deform_roi_pool_backward(
    grad_output,
    x,
    rois,
    offset,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=0,
    gamma=0.1,
    *,
    coord_dtype=np.float64,
):
    """Backward of :func:`deform_roi_pool` -> (grad_input, grad_offset).

    grad_input is the exact transpose of the forward.  grad_offset (K, 2, PH, PW),
    or None when offset is None, is the true (right) derivative of the forward
    contracted with grad_output over channels:
        grad_offset[k,0,ph,pw] = sum_c g[k,c,ph,pw] * (gamma*rw)/count * sum_samples d bilinear/dx
        grad_offset[k,1,ph,pw] = sum_c g[k,c,ph,pw] * (gamma*rh)/count * sum_samples d bilinear/dy
    where gamma*rw / gamma*rh are the coord_dtype products that scale the offset
    in the forward, and the bilinear derivative is :func:`bilinear_grad`
    (correct in the replicate bands, unlike mmcv).
    """
    x = features(x)
    rois = rois_array(rois)
    PH, PW = checked_pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    offset = _check_offset(offset, K, PH, PW)
    go = np.asarray(grad_output, dtype=np.float64)
    if go.shape != (K, C, PH, PW):
        raise ValueError(f"grad_output shape {go.shape!r} != {(K, C, PH, PW)!r}")
    grad_input = np.zeros((N, C, H, W), dtype=np.float64)
    grad_offset = None if offset is None else np.zeros((K, 2, PH, PW), dtype=np.float64)
    for k in range(K):
        b = batch_index(rois, k)
        g = align_geometry(
            rois[k], spatial_scale, (PH, PW), sampling_ratio, True, False, coord_dtype
        )
        count = g["count"]
        for ph in range(PH):
            for pw in range(PW):
                sy, sx, scale_y, scale_x = deform_starts(g, offset, k, ph, pw, gamma, coord_dtype)
                ys, xs = sample_coords(sy, sx, ph, pw, g, coord_dtype)
                for c in range(C):
                    img = x[b, c]
                    gval = go[k, c, ph, pw]
                    sum_dx = 0.0
                    sum_dy = 0.0
                    for yy in ys:
                        for xx in xs:
                            for (r, col), w in bilinear_weights(H, W, yy, xx):
                                grad_input[b, c, r, col] += (gval / count) * w
                            dy, dx = bilinear_grad(img, yy, xx)
                            sum_dx += dx
                            sum_dy += dy
                    if grad_offset is not None:
                        grad_offset[k, 0, ph, pw] += gval * (float(scale_x) / count) * sum_dx
                        grad_offset[k, 1, ph, pw] += gval * (float(scale_y) / count) * sum_dy
    return grad_input, grad_offset


def deform_roi_pool_unmodulated(
    x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """mmcv's deform_roi_pool forward (average of the shifted samples)."""
    x = np.asarray(x, np.float64)
    rois = np.asarray(rois, np.float64)
    pooled = pair(output_size)
    out = np.zeros((len(rois), x.shape[1], *pooled))
    for k, roi in enumerate(rois):
        for ph in range(pooled[0]):
            for pw in range(pooled[1]):
                shift = deform_shift(offset, gamma, k, ph, pw)
                s, geo = samples(roi, spatial_scale, pooled, ratio, True, ph, pw, shift, True)
                count = max(max(geo[0][3], 0) * max(geo[1][3], 0), 1)
                for c in range(x.shape[1]):
                    img = x[int(roi[0]), c]
                    out[k, c, ph, pw] = sum(value(img, t[2], t[3]) for t in s) / count
    return out


def deform_roi_pool_modulated(
    x, rois, offset, mask, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """DCNv2 / mmcv ModulatedDeformRoIPoolPack: ``mask * deform_roi_pool``."""
    out = deform_roi_pool_unmodulated(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return out if mask is None else out * np.asarray(mask, np.float64)


def deform_roi_pool_mask_grad(
    grad_output, x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1
):
    """d loss / d mask = sum over channels of grad_output * unmodulated pooling, (K, 1, PH, PW)."""
    avg = deform_roi_pool_unmodulated(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return (np.asarray(grad_output, np.float64) * avg).sum(1, keepdims=True)


def deform_roi_pool_box_grad(
    grad_output, x, rois, offset, output_size, spatial_scale=1.0, ratio=0, gamma=0.1, mask=None
):
    """d loss / d boxes of (modulated) deform_roi_pool (column 0 is 0)."""
    return box_grad(
        grad_output,
        x,
        rois,
        pair(output_size),
        spatial_scale,
        ratio,
        True,
        offset,
        mask,
        gamma,
        deform=True,
    )
