"""Float64 loop oracles of Deformable RoI Pool: mmcv.ops.deform_roi_pool forward and backward
(offsets included), DCNv2 / mmcv's ``ModulatedDeformRoIPoolPack`` (``mask * deform_roi_pool``)
and the gradient with respect to the box coordinates.

The sampling is RoI Align's, always aligned (-0.5) and without a minimum box size; offset
(K, 2, PH, PW) channel 0 shifts the bin's x start by gamma*rw*offset, channel 1 its y start by
gamma*rh*offset.
"""

import numpy as np

from oracles.calculus import box_grad
from oracles.sampling import (
    align_bins,
    align_points,
    bilinear_grad,
    checked_pair,
    ctype,
    features,
    gather,
    grad_array,
    rois_array,
    scatter,
)


def _checked(x, rois, offset, output_size):
    """Validated (x, rois, offset, (PH, PW)); offset may be None."""
    x, rois, pooled = features(x), rois_array(rois), checked_pair(output_size)
    if offset is not None:
        offset = np.asarray(offset)
        if offset.shape != (len(rois), 2, *pooled):
            raise ValueError(f"offset shape {offset.shape!r} != {(len(rois), 2, *pooled)!r}")
    return x, rois, offset, pooled


def deform_roi_pool(x, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                    *, coord_dtype=np.float64):  # fmt: skip
    """mmcv.ops.deform_roi_pool forward -> (K, C, PH, PW) float64."""
    x, rois, offset, pooled = _checked(x, rois, offset, output_size)
    bins = align_bins(
        x.shape,
        rois,
        pooled,
        spatial_scale,
        sampling_ratio,
        True,
        False,
        coord_dtype,
        offset,
        gamma,
    )
    return gather(x, bins, (len(rois), x.shape[1], *pooled))


def deform_roi_pool_backward(grad_output, x, rois, offset, output_size, spatial_scale=1.0,
                             sampling_ratio=0, gamma=0.1, *, coord_dtype=np.float64):  # fmt: skip
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
    x, rois, offset, pooled = _checked(x, rois, offset, output_size)
    go = grad_array(grad_output, (len(rois), x.shape[1], *pooled))
    args = (rois, pooled, spatial_scale, sampling_ratio, True, False, coord_dtype, offset, gamma)
    grad_input = scatter(go, align_bins(x.shape, *args), x.shape)
    if offset is None:
        return grad_input, None
    grad_offset = np.zeros(offset.shape)
    gam = ctype(coord_dtype)(gamma)
    for k, b, ph, pw, points, g in align_points(*args):
        scale_x, scale_y = float(gam * g["rw"]), float(gam * g["rh"])
        for c in range(x.shape[1]):
            slopes = [bilinear_grad(x[b, c], y, xx) for y, xx in points]
            sum_dy = sum(dy for dy, _ in slopes)
            sum_dx = sum(dx for _, dx in slopes)
            grad_offset[k, 0, ph, pw] += go[k, c, ph, pw] * (scale_x / g["count"]) * sum_dx
            grad_offset[k, 1, ph, pw] += go[k, c, ph, pw] * (scale_y / g["count"]) * sum_dy
    return grad_input, grad_offset


def deform_roi_pool_modulated(x, rois, offset, mask, output_size, spatial_scale=1.0, ratio=0,
                              gamma=0.1):  # fmt: skip
    """DCNv2 / mmcv ModulatedDeformRoIPoolPack: ``mask * deform_roi_pool``."""
    out = deform_roi_pool(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return out if mask is None else out * np.asarray(mask, np.float64)


def deform_roi_pool_mask_grad(grad_output, x, rois, offset, output_size, spatial_scale=1.0,
                              ratio=0, gamma=0.1):  # fmt: skip
    """d loss / d mask = sum over channels of grad_output * unmodulated pooling, (K, 1, PH, PW)."""
    avg = deform_roi_pool(x, rois, offset, output_size, spatial_scale, ratio, gamma)
    return (np.asarray(grad_output, np.float64) * avg).sum(1, keepdims=True)


def deform_roi_pool_box_grad(grad_output, x, rois, offset, output_size, spatial_scale=1.0,
                             ratio=0, gamma=0.1, mask=None):  # fmt: skip
    """d loss / d boxes of (modulated) deform_roi_pool (column 0 is 0)."""
    pooled = checked_pair(output_size)
    return box_grad(
        grad_output, x, rois, pooled, spatial_scale, ratio, True, offset, mask, gamma, deform=True
    )
