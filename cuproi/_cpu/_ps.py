"""Position-sensitive pooling on the CPU: one sparse operator per chunk of boxes, applied per bin.

Bin ``(ph, pw)`` of output channel ``c`` reads input channel ``(c * PH + ph) * PW + pw`` only:
the input's channels form ``C_out`` groups of ``PH * PW`` score maps. So the features are laid
out as ``PH * PW`` matrices ``X_j`` (pixels x ``C_out``), map ``j = ph * PW + pw`` of every
group, stacked, and the operator of a chunk of boxes has its rows (bins) ordered ``(j, box)``:
rows ``j * kc : (j + 1) * kc`` are the bins at position ``j`` of the chunk's ``kc`` boxes and
read ``X_j`` only, so one product with the stack gives the output at every position for every
output channel. The gradient is the transpose, over the rows of the stack the chunk reads.
Every product is the work the GPU kernel does (the operator's entries times ``C_out``), chunks
bound the memory, and every sum runs in a fixed order: results are deterministic.
"""

import numpy as np
import scipy.sparse

from cuproi._cpu import _sampling


def score_maps(x, pooled_h, pooled_w):
    """(N, C, H, W) features as (PH*PW, N*H*W, C_out): map ``j`` of every channel group."""
    n, c, h, w = x.shape
    bins = pooled_h * pooled_w
    groups = x.reshape(n, c // bins, bins, h, w).transpose(2, 0, 3, 4, 1)
    return np.ascontiguousarray(groups).reshape(bins, n * h * w, c // bins)


def bin_order(kc, pooled_h, pooled_w):
    """``(box, ph, pw)`` of the operator rows of ``kc`` boxes, ordered ``(ph, pw, box)``."""
    bins = pooled_h * pooled_w
    box = np.tile(np.arange(kc), bins)
    ph, pw = np.divmod(np.repeat(np.arange(bins), kc), pooled_w)
    return box, ph, pw


def _stacked(a, kc, bins):
    """The chunk's operator over the stacked maps: row block ``j`` reads map ``j`` only.

    Column ``p`` of row block ``j`` becomes ``j * pixels + p``, so one sparse product with the
    (PH*PW*N*H*W, C_out) stack of the score maps does the work of PH*PW products.
    """
    pixels = a.shape[1]
    block = np.repeat(np.arange(bins), kc)  # the map each row reads
    shift = np.repeat(block * pixels, np.diff(a.indptr))
    return scipy.sparse.csr_matrix(
        (a.data, a.indices + shift, a.indptr), shape=(bins * kc, bins * pixels)
    )


def forward(operators, x_maps, k, pooled_h, pooled_w, dtype):
    """(K, C_out, PH, PW) output of the operators ``(k0, k1, A)`` of every chunk of boxes."""
    bins, pixels, c_out = x_maps.shape
    stack = x_maps.reshape(bins * pixels, c_out)
    out = np.zeros((bins, k, c_out), x_maps.dtype)
    for k0, k1, a in operators:
        kc = k1 - k0
        out[:, k0:k1] = (_stacked(a, kc, bins) @ stack).reshape(bins, kc, c_out)
    out = out.reshape(pooled_h, pooled_w, k, c_out).transpose(2, 3, 0, 1)
    return np.ascontiguousarray(out, dtype=dtype)


def backward(operators, grad_output, input_shape, compute):
    """(N, C, H, W) input gradient: the transposed operators of every chunk of boxes."""
    n, c, h, w = input_shape
    k, c_out, pooled_h, pooled_w = grad_output.shape
    bins = pooled_h * pooled_w
    g_maps = grad_output.astype(compute, copy=False).transpose(2, 3, 0, 1).reshape(bins, k, c_out)
    grad = np.zeros((bins * n * h * w, c_out), compute)  # the stack of the maps' gradients
    for k0, k1, a in operators:
        kc = k1 - k0
        g_rows = np.ascontiguousarray(g_maps[:, k0:k1]).reshape(bins * kc, c_out)
        t = _stacked(a, kc, bins).T.tocsr()
        # Only the rows of the stack the chunk reads: most of it is far from every box.
        used = np.flatnonzero(np.diff(t.indptr))
        grad[used] += t[used] @ g_rows
    grad = grad.reshape(bins, n, h, w, c_out).transpose(1, 4, 0, 2, 3).reshape(input_shape)
    return np.ascontiguousarray(grad, dtype=grad_output.dtype)


def chunked(cost, build):
    """``(k0, k1, build(k0, k1))`` for the chunks of boxes of bounded ``cost``."""
    for k0, k1 in _sampling.chunks(cost):
        yield k0, k1, build(k0, k1)
