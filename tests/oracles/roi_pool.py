"""Float64 loop oracle of RoI Pool (torchvision.ops.roi_pool, Fast R-CNN): quantized bins, max
with its argmax.
"""

import math

import numpy as np

from oracles.sampling import batch_index, c_round, checked_pair, ctype, features, rois_array


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
        b = batch_index(rois, k)
        xs = c_round(cd(rois[k, 1]) * s)
        ys = c_round(cd(rois[k, 2]) * s)
        xe = c_round(cd(rois[k, 3]) * s)
        ye = c_round(cd(rois[k, 4]) * s)
        rw = max(xe - xs + 1, 1)
        rh = max(ye - ys + 1, 1)
        bin_h = cd(rh) / cd(PH)
        bin_w = cd(rw) / cd(PW)
        for ph in range(PH):
            hstart = int(math.floor(float(cd(ph) * bin_h)))
            hend = int(math.ceil(float(cd(ph + 1) * bin_h)))
            hstart = min(max(hstart + ys, 0), H)
            hend = min(max(hend + ys, 0), H)
            for pw in range(PW):
                wstart = int(math.floor(float(cd(pw) * bin_w)))
                wend = int(math.ceil(float(cd(pw + 1) * bin_w)))
                wstart = min(max(wstart + xs, 0), W)
                wend = min(max(wend + xs, 0), W)
                empty = hend <= hstart or wend <= wstart
                for c in range(C):
                    if empty:
                        out[k, c, ph, pw] = 0.0
                        argmax[k, c, ph, pw] = -1
                        continue
                    img = x[b, c]
                    best = None
                    best_idx = -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            v = float(img[h, w])
                            idx = h * W + w
                            if best is None:
                                best, best_idx = v, idx
                            elif math.isnan(best):
                                pass  # NaN, once seen, is kept
                            elif math.isnan(v) or v > best:
                                best, best_idx = v, idx
                    out[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = best_idx
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
        b = batch_index(rois, k)
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    idx = int(am[k, c, ph, pw])
                    if idx < 0:
                        continue
                    h, w = divmod(idx, W)
                    grad[b, c, h, w] += go[k, c, ph, pw]
    return grad
