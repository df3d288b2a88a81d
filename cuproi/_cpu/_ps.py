"""Position-sensitive pooling on the CPU: one sparse operator per bin position, in parallel.

Bin ``(ph, pw)`` of output channel ``c`` reads input channel ``(c * PH + ph) * PW + pw`` only:
the input's channels form ``C_out`` groups of ``PH * PW`` score maps. So every bin position
``j = ph * PW + pw`` is a problem of its own: the sparse operator of that bin of every box
(boxes x N*H*W pixels) times map ``j`` of every group, laid out as a (pixels x ``C_out``)
matrix. The positions run on the backend's threads, each building its operators (small enough
to stay in cache, which makes them faster to build than one operator for every bin), copying
its maps and writing its slice of the result. The gradient is the transposed product. Every
product is the work the GPU kernel does (the operator's entries times ``C_out``), chunks of
boxes bound the memory, and every sum runs in a fixed order (forward, a bin's entries in row
order; backward, a pixel's contributions in the order of the boxes, then of the chunks):
results are deterministic, whatever the number of threads.
"""

from typing import NamedTuple

import numpy as np

from cuproi._cpu import _parallel, _sampling


class Plan(NamedTuple):
    """What the operators of a position-sensitive op are built from.

    ``ys`` and ``xs`` are the AxisTaps of the rows ``box * PH + ph`` and ``box * PW + pw``;
    ``count`` (K, PH, PW) divides every bin; ``cost`` (K,) bounds each box's entries at one
    bin position; ``shape`` is ``(N, H, W)`` and ``dtype`` the compute dtype.
    """

    ys: _sampling.AxisTaps
    xs: _sampling.AxisTaps
    image: np.ndarray
    count: np.ndarray
    cost: np.ndarray
    shape: tuple
    dtype: np.dtype


def _operator(plan, k0, k1, ph, pw):
    """Sparse (boxes ``k0:k1`` x N*H*W) operator of bin ``(ph, pw)``."""
    _, pooled_h, pooled_w = plan.count.shape
    box = np.arange(k0, k1)
    return _sampling.operator(
        plan.ys,
        plan.xs,
        y_of_bin=box * pooled_h + ph,
        x_of_bin=box * pooled_w + pw,
        image_of_bin=plan.image[k0:k1],
        count_of_bin=plan.count[k0:k1, ph, pw],
        shape=plan.shape,
        dtype=plan.dtype,
    )


def _each_position(plan, task):
    """``task(j, ph, pw, chunks)`` for every bin position ``j``, spread over the threads."""
    _, pooled_h, pooled_w = plan.count.shape
    chunks = list(_sampling.chunks(plan.cost))

    def run(j0, j1):
        for j in range(j0, j1):
            task(j, *divmod(j, pooled_w), chunks)

    _parallel.for_ranges(run, np.ones(pooled_h * pooled_w))


def forward(input, plan):
    """(K, C_out, PH, PW) output on (N, C, H, W) score maps."""
    n, c, h, w = input.shape
    k, pooled_h, pooled_w = plan.count.shape
    bins = pooled_h * pooled_w
    groups = input.reshape(n, c // bins, bins, h * w)
    out = np.empty((k, c // bins, bins), input.dtype)

    def task(j, ph, pw, chunks):
        # Map j of every group, channels last: (N*H*W, C_out).
        maps = np.ascontiguousarray(groups[:, :, j].transpose(0, 2, 1), plan.dtype)
        maps = maps.reshape(n * h * w, c // bins)
        for k0, k1 in chunks:
            out[k0:k1, :, j] = _operator(plan, k0, k1, ph, pw) @ maps

    _each_position(plan, task)
    return out.reshape(k, c // bins, pooled_h, pooled_w)


def backward(grad_output, plan, input_shape):
    """(N, C, H, W) input gradient: the transposed operator of every bin position."""
    n, c, h, w = input_shape
    k, c_out, pooled_h, pooled_w = grad_output.shape
    g = grad_output.reshape(k, c_out, pooled_h * pooled_w)
    grad = np.empty((n, c_out, pooled_h * pooled_w, h * w), grad_output.dtype)

    def task(j, ph, pw, chunks):
        maps = None if chunks else np.zeros((n * h * w, c_out), plan.dtype)
        for k0, k1 in chunks:
            g_rows = np.ascontiguousarray(g[k0:k1, :, j], plan.dtype)
            part = _operator(plan, k0, k1, ph, pw).T @ g_rows
            maps = part if maps is None else maps + part
        grad[:, :, j] = maps.reshape(n, h * w, c_out).transpose(0, 2, 1)

    _each_position(plan, task)
    return grad.reshape(input_shape)
