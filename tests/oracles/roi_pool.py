"""Float64 loop oracle of RoI Pool (torchvision.ops.roi_pool, Fast R-CNN): quantized bins, max
with its argmax.
"""

import math

import numpy as np

from oracles.sampling import c_round, checked_pair, ctype, features, pool_span, rois_array


def roi_pool(x, rois, output_size, spatial_scale=1.0, *, coord_dtype=np.float64):
    """torchvision.ops.roi_pool forward -> (out float64, argmax int64), both (K, C, PH, PW).

    argmax is the flat index h*W + w inside the (H, W) plane, -1 for empty bins.
    Ties: first maximum in h-major scan order wins (strict >).  NaN propagates:
    once a NaN is seen it is kept and argmax points at the first NaN.
    """
    x = features(x)
    rois = rois_array(rois)
    PH, PW = checked_pair(output_size)
    N, C, H, W = x.shape
    K = rois.shape[0]
    cd = ctype(coord_dtype)
    out = np.zeros((K, C, PH, PW), dtype=np.float64)
    argmax = np.full((K, C, PH, PW), -1, dtype=np.int64)
    s = cd(spatial_scale)
    for k in range(K):
        b = int(rois[k, 0])  # truncated toward zero
        xs, ys, xe, ye = (c_round(cd(rois[k, i]) * s) for i in (1, 2, 3, 4))
        # the end is inclusive: a box of one rounded cell is 1 wide
        bin_h = cd(max(ye - ys + 1, 1)) / cd(PH)
        bin_w = cd(max(xe - xs + 1, 1)) / cd(PW)
        for ph, pw in np.ndindex(PH, PW):
            hstart, hend = pool_span(ph, bin_h, ys, H)
            wstart, wend = pool_span(pw, bin_w, xs, W)
            for c in range(C):
                best, best_idx = None, -1
                for h in range(hstart, hend):
                    for w in range(wstart, wend):
                        v = float(x[b, c, h, w])
                        # the first maximum wins; a NaN, once seen, is kept
                        if best is None or (not math.isnan(best) and (math.isnan(v) or v > best)):
                            best, best_idx = v, h * W + w
                if best is not None:  # an empty bin keeps 0 and argmax -1
                    out[k, c, ph, pw], argmax[k, c, ph, pw] = best, best_idx
    return out, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape):
    """Transpose of roi_pool through its argmax -> grad_input of shape input_shape."""
    rois = rois_array(rois)
    N, C, H, W = (int(v) for v in input_shape)
    go = np.asarray(grad_output, dtype=np.float64)
    am = np.asarray(argmax)
    if go.shape != am.shape:
        raise ValueError(f"grad_output shape {go.shape!r} != argmax shape {am.shape!r}")
    K, C2, PH, PW = go.shape
    if K != rois.shape[0] or C2 != C:
        raise ValueError(f"grad_output shape {go.shape!r} inconsistent with rois/input_shape")
    grad = np.zeros((N, C, H, W), dtype=np.float64)
    for k in range(K):
        b = int(rois[k, 0])  # truncated toward zero
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    idx = int(am[k, c, ph, pw])
                    if idx < 0:
                        continue
                    h, w = divmod(idx, W)
                    grad[b, c, h, w] += go[k, c, ph, pw]
    return grad
