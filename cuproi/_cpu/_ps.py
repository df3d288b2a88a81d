"""Position-sensitive pooling on the CPU: one sparse operator per row of bins, in parallel.

Bin ``(ph, pw)`` of output channel ``c`` reads input channel ``(c * PH + ph) * PW + pw`` only:
the input's channels form ``C_out`` groups of ``PH * PW`` score maps. So every bin row ``ph``
is a problem of its own: the sparse operator of the row's bins of every box times the row's
``PW`` maps of every group, each laid out as a (pixels x ``C_out``) matrix and stacked, the
operator's bins at position ``pw`` reading the ``pw``-th block of the stack only. The rows run
on the backend's threads, each building its operators (small enough to stay in cache, which
makes them faster to build than one operator for every bin), copying its maps and writing its
slice of the result. The gradient is the transposed product. Every product is the work the GPU
kernel does (the operator's entries times ``C_out``), chunks of boxes bound the memory, and
every sum runs in a fixed order (forward, a bin's entries in row order; backward, a pixel's
contributions in the order of the boxes, then of the chunks): results are deterministic,
whatever the number of threads.
"""

from typing import NamedTuple

import numpy as np

from cuproi._cpu import _parallel, _sampling


class Plan(NamedTuple):
    """What the operators of a position-sensitive op are built from.

    ``ys`` and ``xs`` are the AxisTaps of the rows ``box * PH + ph`` and ``box * PW + pw``;
    ``count`` (K, PH, PW) divides every bin; ``cost`` (K,) bounds the entries of each box's
    bins at one position; ``shape`` is ``(N, H, W)`` and ``dtype`` the compute dtype.
    """

    ys: _sampling.AxisTaps
    xs: _sampling.AxisTaps
    image: np.ndarray
    count: np.ndarray
    cost: np.ndarray
    shape: tuple
    dtype: np.dtype


def _operator(plan, k0, k1, ph):
    """Sparse operator of bin row ``ph`` of boxes ``k0:k1`` on the stack of the row's maps.

    Its rows are ordered ``(pw, box)``, and row block ``pw`` reads the ``pw``-th (N*H*W) block
    of columns: bin ``(ph, pw)`` reads map ``ph * PW + pw`` only, so a single product with the
    (PW*N*H*W, C_out) stack of the row's maps does the work of PW products. (The column shift
    is an image index shifted by ``pw * N``.)
    """
    n, h, w = plan.shape
    _, pooled_h, pooled_w = plan.count.shape
    box = np.tile(np.arange(k0, k1), pooled_w)
    pw = np.repeat(np.arange(pooled_w), k1 - k0)
    return _sampling.operator(
        plan.ys,
        plan.xs,
        y_of_bin=box * pooled_h + ph,
        x_of_bin=box * pooled_w + pw,
        image_of_bin=plan.image[box] + pw * n,
        count_of_bin=plan.count[box, ph, pw],
        shape=(pooled_w * n, h, w),
        dtype=plan.dtype,
    )


def _each_row(plan, channels, task):
    """``task(ph, chunks)`` for every bin row ``ph``, on the threads its work is worth.

    ``channels`` is the number of output channels, the columns of every product. Each row
    multiplies its operators and copies (or writes) its maps: as many threads as either is
    worth.
    """
    n, h, w = plan.shape
    _, pooled_h, pooled_w = plan.count.shape
    cost = plan.cost * pooled_w  # a bound on the entries of a row of bins
    chunks = list(_sampling.chunks(cost))

    def run(p0, p1):
        for ph in range(p0, p1):
            task(ph, chunks)

    products = float(cost.sum()) * pooled_h * _sampling.work_per_entry(channels, bound=True)
    maps = n * channels * pooled_h * pooled_w * h * w
    threads = max(
        _parallel.workers(products, _parallel.PRODUCT_GRAIN),
        _parallel.workers(maps, _parallel.COPY_GRAIN),
    )
    _parallel.for_ranges(run, np.ones(pooled_h), threads)


def forward(input, plan):
    """(K, C_out, PH, PW) output on (N, C, H, W) score maps."""
    n, c, h, w = input.shape
    k, pooled_h, pooled_w = plan.count.shape
    c_out = c // (pooled_h * pooled_w)
    rows = input.reshape(n, c_out, pooled_h, pooled_w, h * w)
    out = np.empty((k, c_out, pooled_h, pooled_w), input.dtype)

    def task(ph, chunks):
        # The row's maps, channels last and stacked: (PW*N*H*W, C_out).
        stack = np.ascontiguousarray(rows[:, :, ph].transpose(2, 0, 3, 1), plan.dtype)
        stack = stack.reshape(pooled_w * n * h * w, c_out)
        for k0, k1 in chunks:
            part = (_operator(plan, k0, k1, ph) @ stack).reshape(pooled_w, k1 - k0, c_out)
            out[k0:k1, :, ph] = part.transpose(1, 2, 0)

    _each_row(plan, c_out, task)
    return out


def backward(grad_output, plan, input_shape):
    """(N, C, H, W) input gradient: the transposed operators of every bin row."""
    n, c, h, w = input_shape
    k, c_out, pooled_h, pooled_w = grad_output.shape
    grad = np.empty((n, c_out, pooled_h, pooled_w, h * w), grad_output.dtype)

    def task(ph, chunks):
        stack = None if chunks else np.zeros((pooled_w * n * h * w, c_out), plan.dtype)
        for k0, k1 in chunks:
            # The chunk's gradient rows in the operator's (pw, box) order.
            g_rows = np.ascontiguousarray(grad_output[k0:k1, :, ph].transpose(2, 0, 1), plan.dtype)
            g_rows = g_rows.reshape(pooled_w * (k1 - k0), c_out)
            part = _operator(plan, k0, k1, ph).T @ g_rows
            stack = part if stack is None else np.add(stack, part, out=stack)
        # In runs of pixels whose rows of the stack stay in cache: copied whole, the transpose
        # read the stack once per output channel, and took 2.7 times as long.
        planes = stack.reshape(pooled_w, n, h * w, c_out).transpose(1, 3, 0, 2)
        for p0 in range(0, h * w, _parallel._BLOCK):
            grad[:, :, ph, :, p0 : p0 + _parallel._BLOCK] = planes[..., p0 : p0 + _parallel._BLOCK]

    _each_row(plan, c_out, task)
    return grad.reshape(input_shape)
