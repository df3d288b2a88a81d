"""RoI Align on the CPU: the sparse sampling operator of _sampling, chunked over boxes.

Boxes are processed in chunks that bound the operator's memory (``_sampling.chunks``); each
chunk is split again into ranges of boxes whose operators are built and applied by the
backend's threads (``_parallel``).

Max mode (mmcv's pool_mode="max") reduces the samples of every bin instead. Bins are listed with
their in-range samples (``_samples``), chunked over boxes so that the ``samples x channels``
values stay bounded; the winner of each (bin, channel) is the first maximum in scan order (an
out-of-range sample competes as 0, a NaN wins), exactly as bin_max in
kernels/common/bilinear.cuh. A box with more samples than a chunk holds is reduced piece by
piece (``_bin_max.Running``), and its winning samples are listed afterwards for the gradients:
memory stays bounded whatever the ``sampling_ratio``. Only the tiles of the features that the
boxes read are copied (``_sampling.pixels_read``), and the input gradient is added straight into
its NCHW (or channels-last) array.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse

from cuproi import _results
from cuproi._cpu import (
    _bin_max,
    _box_gradients,
    _geometry,
    _parallel,
    _samples,
    _sampling,
    _scratch,
)

# Forwards and backwards of at most this many bins skip the chunks, threads and tiles of the
# general path, which cost more than such a problem (_few; roi_align_backward).
FEW_BINS = 4096

# Entries of an operator built at once (a bound: _cost). Building takes several index arrays
# of its entries, part of the working memory that exceeds torchvision's on 4096 boxes: pieces
# of 2**19 took 74 MB less than whole chunks of _sampling.BUDGET (2**21) with glibc's defaults
# (9 MB less where large blocks are given back when freed), in as little time.
PIECE = 1 << 19


def _cost(rows, shape):
    """A bound on the entries of each box's operator (K,); ``rows`` as :func:`_rows` gives."""
    _, h, w = shape
    y, x = rows[:2]
    return _sampling.samples_bound(*y, h).sum(1) * _sampling.samples_bound(*x, w).sum(1)


def _rows(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Per-box sampling rows along y (K, PH) and x (K, PW): ``(y, x, count)``.

    ``y`` and ``x`` are the (start, bin size, samples) of every bin row and column, ``count``
    the divisor of each box's averages. With :func:`_cost` appended, the plan of the chunked
    paths.
    """
    g = _geometry.roi_align_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    y, x = _geometry.bin_rows(g, pooled_h, pooled_w)
    return y, x, g.count


def _reach(rois, plan, shape):
    """The cells every box's samples may read (_sampling.reach)."""
    y, x = plan[:2]
    return _sampling.reach(rois[:, 0], y[:2], x[:2], shape)


def _taps(plan, shape, k0, k1):
    """The AxisTaps ``(ys, xs)`` of the bin rows and columns of boxes ``k0:k1``."""
    _, h, w = shape
    y, x = plan[:2]
    return _sampling.taps([a[k0:k1].ravel() for a in y], [a[k0:k1].ravel() for a in x], h, w)


def _bins_of(rois, plan, k0, k1):
    """Every bin of boxes ``k0:k1``, (box, ph, pw) in C order, as _sampling.operator takes it.

    Its row of the boxes' y taps and of their x taps, its image, and its divisor.
    """
    y, x, count = plan[:3]
    pooled_h, pooled_w = y[0].shape[1], x[0].shape[1]
    box, ph, pw = np.unravel_index(
        np.arange((k1 - k0) * pooled_h * pooled_w), (k1 - k0, pooled_h, pooled_w)
    )
    return {
        "y_of_bin": box * pooled_h + ph,
        "x_of_bin": box * pooled_w + pw,
        "image_of_bin": rois[k0:k1, 0].astype(np.int64)[box],
        "count_of_bin": count[k0:k1][box],
    }


def _operator(rois, plan, shape, k0, k1, pixels=None, taps=None):
    """Sparse operator of boxes ``k0:k1``: one row per bin, (box, ph, pw) in C order.

    Its columns are every pixel, or the rows of ``pixels`` (_sampling.pixels_read, reached).
    ``taps`` are the boxes' :func:`_taps`, where already known.
    """
    ys, xs = taps or _taps(plan, shape, k0, k1)
    bins = _bins_of(rois, plan, k0, k1)
    return _sampling.operator(ys, xs, **bins, shape=shape, dtype=rois.dtype, pixels=pixels)


def _in_pieces(rois, plan, shape, k0, k1, pixels):
    """:func:`_operator` of boxes ``k0:k1``, built PIECE entries at a time and stacked.

    The same matrix (its rows, the bins, are independent), so the same products: a backward's
    chunk, whose sums run over all its bins, keeps its size and its bits.
    """
    pieces = [
        _operator(rois, plan, shape, k0 + a, k0 + b, pixels)
        for a, b in _sampling.chunks(plan[-1][k0:k1], PIECE)
    ]
    return pieces[0] if len(pieces) == 1 else scipy.sparse.vstack(pieces, format="csr")


def _bins(rois, plan, shape):
    """``(rois, plan)`` with every bin a box of its own (_sampling.every_bin_a_box)."""
    _, h, w = shape
    y, x, count, _ = plan
    bins = y[0].shape[1] * x[0].shape[1]
    y, x = _sampling.every_bin_a_box(y, x)
    # A bin's samples lie within its extent, so its taps along an axis are at most the cells
    # the extent meets: a bound four times as tight as samples_bound's for a big bin.
    taps_y, taps_x = (
        np.minimum(_sampling.samples_bound(*a, size)[:, 0], np.ceil(np.abs(a[1][:, 0])) + 2)
        for a, size in ((y, h), (x, w))
    )
    return np.repeat(rois, bins, axis=0), (y, x, np.repeat(count, bins), taps_y * taps_x)


def roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode="avg"):
    if pool_mode == "max":
        return _max_forward(input, rois, spatial_scale, *output_size, sampling_ratio, aligned)
    pooled_h, pooled_w = output_size
    n, c, h, w = input.shape
    shape = (n, h, w)
    out = _results.empty(np, (len(rois), c, pooled_h, pooled_w), rois.dtype)
    rows = _rows(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    if 0 < len(rois) * pooled_h * pooled_w <= FEW_BINS and _few(input, rois, rows, out):
        return out.astype(input.dtype, copy=False)
    plan = (*rows, _cost(rows, shape))
    # float16 is computed in float32, converted as it is copied.
    pixels = _sampling.pixels_read(input, _reach(rois, plan, shape), rois.dtype)
    target = out
    if _sampling.too_large(plan[-1]):  # every bin a box: (K * PH * PW, C, 1, 1)
        rois, plan = _bins(rois, plan, shape)
        target = np.empty((len(rois), c, 1, 1), rois.dtype)

    def operator(k0, k1):
        return _operator(rois, plan, shape, k0, k1, pixels)

    parts = _sampling.parts(plan[-1], _sampling.work_per_entry(c, bound=True), budget=PIECE)
    _sampling.forward(parts, operator, pixels, target, out)
    return out.astype(input.dtype, copy=False)


def _few(input, rois, rows, out):
    """``out[...]`` = the forward of few bins, in the calling thread; False if it is large.

    From the fewest NumPy calls to the most, each where the one before does not fit: bins of
    few samples over few cells as dense slots (_dense); few products summed without an
    operator (_sampling.small_product); one operator on the pixels its taps reach
    (_sampling.tapped), which few boxes on a large map are a small part of. A few huge boxes
    whose operator would hold more than BUDGET entries are left to the chunked path (False).
    """
    n, c, h, w = input.shape
    shape = (n, h, w)
    k = len(rois)
    slots = _dense(rois, rows, shape, c)
    if slots is not None:
        out[...] = _sampling.dense_product(input, slots, rois[:, 0].astype(np.int64))
        return True
    taps = _taps(rows, shape, 0, k)
    # Entries: a box's y taps (summed over its bin rows) times its x taps.
    counts = [np.diff(t.ptr) for t in taps]
    per_box = (m.reshape(a[0].shape).sum(1) for m, a in zip(counts, rows[:2], strict=True))
    if np.dot(*per_box) > _sampling.BUDGET:
        return False
    bins = _bins_of(rois, rows, 0, k)
    slots = counts[0].max() * counts[1].max()
    if slots * len(bins["y_of_bin"]) * c <= _sampling.SMALL:
        _sampling.bins_to_boxes(
            _sampling.small_product(input, *taps, **bins, dtype=rois.dtype), out
        )
        return True
    a = _sampling.operator(*taps, **bins, shape=shape, dtype=rois.dtype)
    _sampling.apply(*_sampling.tapped(input, a, rois.dtype), out)
    return True


def _dense(rois, rows, shape, channels):
    """The few bins' entries as dense slots (_sampling.dense_slots); None if not few.

    A one-box call's cost is its NumPy calls (a few microseconds each on small arrays): dense
    slots take a few dozen, about a third of the sparse taps'. None where a bin row has too
    many samples or cells for dense taps, or where the slots of every channel outnumber
    _sampling.SMALL.
    """
    _, h, w = shape
    y, x, count = rows
    k, pooled_h = y[0].shape
    pooled_w = x[0].shape[1]
    outputs = k * channels * pooled_h * pooled_w
    if outputs > _sampling.SMALL:
        return None
    size = np.concatenate([np.full(y[0].size, h), np.full(x[0].size, w)])
    both = (np.concatenate([a.ravel(), b.ravel()]) for a, b in zip(y, x, strict=True))
    taps = _sampling.dense_taps(*both, size)
    if taps is None or outputs * taps.weight.shape[1] ** 2 > _sampling.SMALL:
        return None
    ys, xs = (
        _sampling.DenseTaps(*(a[part] for a in taps))
        for part in (slice(0, y[0].size), slice(y[0].size, None))
    )
    return _sampling.dense_slots(ys, xs, count, rois.dtype, h, w)


def roi_align_backward(
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    input=None,
    deterministic=False,
    channels_last=False,
):
    """The input gradient (the max mode reads the features ``input``)."""
    if pool_mode == "max":
        args = (grad_output, input, rois, spatial_scale, sampling_ratio, aligned)
        return _max_backward(*args, channels_last=channels_last)
    n, c, h, w = input_shape
    shape = (n, h, w)
    _, _, pooled_h, pooled_w = grad_output.shape
    rows = _rows(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    slots = _dense(rois, rows, shape, c) if len(rois) * pooled_h * pooled_w <= FEW_BINS else None
    if slots is not None:  # the bits of the paths below: each pixel sums its bins in order
        grad = _sampling.zeros(input_shape, grad_output.dtype, channels_last)
        _sampling.dense_transpose(grad, slots, rois[:, 0].astype(np.int64), grad_output)
        return grad
    g_rows = _sampling.BinRows(grad_output, rois.dtype)
    plan = (*rows, _cost(rows, shape))
    bins = pooled_h * pooled_w
    entries = plan[-1].sum()  # at most
    if len(rois) * bins <= FEW_BINS and entries <= _sampling.BUDGET and 8 * entries < n * h * w:
        # One chunk, in the calling thread, its operator over every pixel: add_transposed
        # sums the few pixels it reads alone (no index of every pixel: the entries are few),
        # each over its bins in order, as the chunk on the tiles would (the same bits)
        # without laying out the tiles.
        def operator(k0, k1):
            return _operator(rois, plan, shape, k0, k1)

        parts = [[(0, len(rois))]]
        args = (input_shape, grad_output.dtype, bins, parts, operator, g_rows)
        return _sampling.input_gradient(*args, channels_last=channels_last)
    pixels = _sampling.pixels_reached(_reach(rois, plan, shape), shape, c)
    if _sampling.too_large(plan[-1]):  # every bin a box, in the order of the gradient's rows
        rois, plan = _bins(rois, plan, shape)
        bins = 1
    return _sampling.input_gradient(
        input_shape,
        grad_output.dtype,
        bins,
        _sampling.parts(plan[-1], _sampling.work_per_entry(c, bound=True)),
        lambda k0, k1: _in_pieces(rois, plan, shape, k0, k1, pixels),
        g_rows,
        pixels,
        channels_last,
    )


def roi_align_box_backward(
    grad_output,
    input,
    rois,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    deterministic=False,
):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    args = (grad_output, input, rois, spatial_scale, sampling_ratio, aligned)
    if pool_mode == "max":
        return _max_box_backward(*args)
    pooled = grad_output.shape[2:]
    g = _geometry.roi_align_grid(rois, spatial_scale, *pooled, sampling_ratio, aligned)
    y, x = _geometry.bin_axes(g, None, pooled, 0.0)
    free = (aligned | (g.width > 1), aligned | (g.height > 1))  # the legacy min size 1 holds
    return _box_gradients.box_gradient(
        grad_output, input, rois, g, y, x, spatial_scale, None, free, None
    )


# Max mode: the samples of every bin, reduced (see the module notes).


def _max_grid(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    g = _geometry.roi_align_grid(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    y, x = _geometry.bin_axes(g, None, (pooled_h, pooled_w), 0.0)
    return g, y, x


def _pixels(input, rois, y, x, shape, ct):
    """The features' pixels that the boxes read, channels last in ``ct`` (float16: float32)."""
    return _sampling.pixels_read(input, _sampling.reach(rois[:, 0], y[:2], x[:2], shape), ct)


def _image_of_bins(rois, k0, k1, bins):
    """Image of every bin of boxes ``k0:k1`` (``bins`` of them, in box order)."""
    per_box = bins // max(k1 - k0, 1)
    return rois[k0:k1, 0].astype(np.int64)[np.arange(bins) // max(per_box, 1)]


def _chunk(pixels, rois, shape, y, x, k0, k1):
    """Samples, values and winners of boxes k0:k1 (bins in (box, ph, pw) order)."""
    _, h, w = shape
    axes = _samples.bins_of(y, x, k0, k1)
    s = _samples.samples(*axes, h, w)
    bins = len(axes[0])
    image = _image_of_bins(rois, k0, k1, bins)
    vals = _samples.values(s, image, pixels)
    value, winner = _bin_max.scan_max(s, vals, bins)
    return s, image, value, winner, (axes[2], axes[5])


def _box_in_pieces(pixels, rois, shape, y, x, k, spans):
    """:func:`_chunk` of box ``k`` whose samples come in pieces ``spans``.

    The samples returned are the winning ones only (``winner`` indexes them): every other
    sample was dropped with its piece.
    """
    _, h, w = shape
    c = pixels.rows.shape[1]
    axes = _samples.bins_of(y, x, k, k + 1)
    bins = len(axes[0])
    image = _image_of_bins(rois, k, k + 1, bins)
    running = _bin_max.Running(bins, c, pixels.rows.dtype)

    def piece(span):
        s = _samples.samples(*axes, h, w, span=span)
        return _bin_max.piece_max(s, _samples.values(s, image, pixels), bins)

    for has, best, at, first_out in _samples.in_order(piece, spans):
        running.add(has, best, at, first_out)
    value, at = running.result()
    b_of, c_of = np.nonzero(at >= 0)
    # The distinct winning samples in (bin, scan) order, and every winner's index among them.
    pairs, inverse = np.unique(np.stack([b_of, at[b_of, c_of]], 1), axis=0, return_inverse=True)
    s = _samples.samples_at(axes, h, w, pairs[:, 0], pairs[:, 1])
    winner = np.full(at.shape, -1, np.int64)
    winner[b_of, c_of] = inverse.ravel()
    return s, image, value, winner, (axes[2], axes[5])


def _winners(pixels, rois, shape, y, x, k0, k1, dtype=None):
    """``(value, slot)`` of every bin of boxes k0:k1 (``_bin_max.slot_max``)."""
    _, h, w = shape
    axes = _samples.bins_of(y, x, k0, k1)
    s = _samples.samples(*axes, h, w)
    image = _image_of_bins(rois, k0, k1, len(axes[0]))
    return _bin_max.slot_max(s, image, pixels, len(axes[0]), dtype)


def _chunks(pixels, rois, shape, y, x, fn, one=_chunk):
    """Yield, chunk by chunk of boxes, ``[fn(k0, k1, chunk) for each range k0:k1 of it]``.

    ``chunk`` is ``one``'s: :func:`_chunk`'s, the ranges computed by the threads, or
    :func:`_winners`' of the whole chunk, whose blocks of bins the threads compute (the
    threads, each given a range, would queue for the GIL between the many short NumPy calls
    that list a range's samples). For a box that comes in pieces, :func:`_box_in_pieces`'s
    (its pieces computed by the threads; for :func:`_winners`, as its ``(value, None)``).
    """
    _, h, w = shape
    c = pixels.rows.shape[1]

    def run(k0, k1):
        return fn(k0, k1, one(pixels, rois, shape, y, x, k0, k1))

    for ranges, spans in _samples.work(y, x, h, w, c, spare=False):
        if spans is None and one is _winners:  # its blocks are the threads' work
            yield [run(ranges[0][0], ranges[-1][1])]
        elif spans is None:
            yield _parallel.map_ordered(lambda r: run(*r), ranges)
        else:
            ((k0, k1),) = ranges
            chunk = _box_in_pieces(pixels, rois, shape, y, x, k0, spans)
            yield [fn(k0, k1, chunk if one is _chunk else (chunk[2], None))]


def _max_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    n, c, h, w = input.shape
    shape = (n, h, w)
    out = _results.zeros(np, (len(rois), c, pooled_h, pooled_w), rois.dtype)
    _, y, x = _max_grid(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    pixels = _pixels(input, rois, y, x, shape, rois.dtype)

    def write(k0, k1, chunk):
        _sampling.bins_to_boxes(chunk[0], out[k0:k1])

    for _ in _chunks(pixels, rois, shape, y, x, write, _winners):
        pass
    _scratch.give(pixels.rows)
    return out.astype(input.dtype, copy=False)


class _Sum(NamedTuple):
    """Where the input gradient is summed: see :func:`_sum_into`.

    Cell ``(image, channel, y, x)`` is ``memory[at(image, y, x) + channel * step]``.
    """

    memory: np.ndarray  # flat view that np.add.at adds into
    at: Callable  # (image, y, x) of pixels -> their index in memory for channel 0
    step: int  # from one channel to the next
    finish: Callable  # () -> the (N, C, H, W) gradient


def _sum_into(shape, ct, dtype, channels_last, pixels):
    """The buffer that the input gradient of ``dtype`` is summed into, in ``ct``.

    The gradient itself, NCHW or stored channels last; for float16 (summed in float32) on a
    few tiles, float32 rows of the pixels that ``pixels`` (_sampling.pixels_read) covers only,
    written into the float16 gradient at the end: no float32 copy of the whole gradient.
    """
    n, c, h, w = shape
    if dtype != ct and pixels.runs is not None:
        rows = np.zeros((pixels.size, c), ct)

        def finish():
            grad = _sampling.zeros(shape, dtype, channels_last)
            for p, q, i, y0, y1, x0, x1 in pixels.runs.blocks().tolist():
                cells = rows[p:q].reshape(y1 - y0, x1 - x0, c)
                grad[i, :, y0:y1, x0:x1] = cells.transpose(2, 0, 1)  # rounded once
            return grad

        return _Sum(rows.reshape(-1), lambda i, y, x: pixels.at(i, y, x) * c, 1, finish)
    grad = _sampling.zeros(shape, ct, channels_last)

    def finish():  # rounded in its own memory: 1x the gradient beyond it, not 2x
        return _sampling.narrow(grad, dtype)

    if channels_last:  # the NHWC array, as a flat view
        memory = grad.transpose(0, 2, 3, 1).reshape(-1)
        return _Sum(memory, lambda i, y, x: ((i * h + y) * w + x) * c, 1, finish)
    return _Sum(grad.reshape(-1), lambda i, y, x: ((i * c) * h + y) * w + x, h * w, finish)


def _max_input_gradient(g_rows, input, rois, y, x, bins, dtype, channels_last, pixels):
    """The (N, C, H, W) input gradient of ``dtype``: the winners' taps weighed by ``g_rows``."""
    n, c, h, w = input.shape
    shape = (n, h, w)
    total = _sum_into(input.shape, g_rows.dtype, dtype, channels_last, pixels)

    def contributions(k0, k1, chunk):
        """(target, value) of the winners' contributions of boxes k0:k1, tap by tap."""
        s, image, _, winner, _ = chunk
        b_of, c_of = np.nonzero(winner >= 0)
        at = winner[b_of, c_of]
        gv = g_rows.take(k0 * bins + b_of, c_of)
        channel = c_of * total.step
        image = image[s.bin]
        taps = ((s.y0, s.x0), (s.y0, s.x1), (s.y1, s.x0), (s.y1, s.x1))
        return [  # each sample's cells first, then those of the winners (far more)
            (total.at(image, yy, xx)[at] + channel, gv * wt[at])
            for (yy, xx), wt in zip(taps, _samples.weights(s), strict=True)
        ]

    for found in _chunks(pixels, rois, shape, y, x, contributions):
        # Tap by tap over the whole chunk, its ranges in order: every cell adds its terms in
        # the same order however the chunk was split over the threads (deterministic). On the
        # flat view: add.at's fast path for one index array (several times faster).
        for tap in range(4):
            target = np.concatenate([contributions[tap][0] for contributions in found])
            value = np.concatenate([contributions[tap][1] for contributions in found])
            np.add.at(total.memory, target, value)
    return total.finish()


def _max_box_gradient(g_rows, rois, y, x, shape, grid, bins, pooled, scale, aligned, pixels):
    """The (K, 5) box gradient from the winning samples' slopes."""
    grad_rois = np.zeros((len(rois), 5), np.float64)
    free = (aligned | (grid.width > 1), aligned | (grid.height > 1))
    c = g_rows.channels

    def run(k0, k1, chunk):
        s, image, _, winner, (gh, gw) = chunk
        s, winner = _bin_max.winning(s, winner)
        won = winner >= 0
        b_of, c_of = np.nonzero(won)
        weight = np.zeros((len(s.bin), c), g_rows.dtype)
        weight[winner[won], c_of] = g_rows.take(k0 * bins + b_of, c_of)
        dx, dy = _samples.slopes(s, image, pixels)
        chunk_free = (free[0][k0:k1], free[1][k0:k1])
        grad_rois[k0:k1] = _samples.box_gradient(
            s, dx, dy, weight, len(gh), pooled, gh, gw, scale, None, chunk_free
        )

    for _ in _chunks(pixels, rois, shape, y, x, run):
        pass
    return grad_rois


def _max_winners(grad_output, input, rois, spatial_scale, sampling_ratio, aligned):
    """What both backwards read: the gradient's rows, the sampling grid, the pixels read."""
    n, c, h, w = input.shape
    shape = (n, h, w)
    _, _, pooled_h, pooled_w = grad_output.shape
    g_rows = _sampling.BinRows(grad_output, rois.dtype)
    grid, y, x = _max_grid(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    return g_rows, grid, y, x, _pixels(input, rois, y, x, shape, rois.dtype)


def _max_slots(pixels, rois, shape, y, x):
    """``(slot, chunk)``: the winners of every bin (K * PH * PW, C), the chunk of every box.

    ``slot`` as _bin_max.slot_max gives it, of the chunks of _samples.work, whose order the
    input gradient's sums follow. None where a box comes in pieces, a bin has more samples
    than slots count, or SciPy's products are not rounded (then :func:`_max_input_gradient`).
    """
    n, h, w = shape
    k, c, bins = len(rois), pixels.rows.shape[1], y[0].shape[1] * y[0].shape[2]
    # A bin's samples are at most its rows' times its columns' (rows depend on ph alone).
    ny = np.subtract(*_sampling.sample_range(*(a[:, :, 0] for a in y), h)[::-1])
    nx = np.subtract(*_sampling.sample_range(*(a[:, 0, :] for a in x), w)[::-1])
    dtype = _bin_max.slot_dtype(int((ny.max(1, initial=0) * nx.max(1, initial=0)).max(initial=0)))
    work = list(_samples.work(y, x, h, w, c, spare=False))
    if dtype is None or any(spans is not None for _, spans in work):
        return None
    if not _bin_max.products_rounded():
        return None
    slot = np.empty((k * bins, c), dtype)
    chunk = np.empty(k, np.int64)

    def run(k0, k1):
        slot[k0 * bins : k1 * bins] = _winners(pixels, rois, shape, y, x, k0, k1, dtype)[1]

    for index, (ranges, _) in enumerate(work):
        run(ranges[0][0], ranges[-1][1])
        chunk[ranges[0][0] : ranges[-1][1]] = index
    return slot, chunk


def _max_backward(grad_output, input, rois, spatial_scale, sampling_ratio, aligned, channels_last):
    """The input gradient, NCHW or stored channels last."""
    g_rows, _, y, x, pixels = _max_winners(
        grad_output, input, rois, spatial_scale, sampling_ratio, aligned
    )
    n, _, h, w = input.shape
    dtype = grad_output.dtype
    found = _max_slots(pixels, rois, (n, h, w), y, x)
    if found is None:
        bins = grad_output.shape[2] * grad_output.shape[3]
        out = _max_input_gradient(g_rows, input, rois, y, x, bins, dtype, channels_last, pixels)
        _scratch.give(pixels.rows)
        return out
    _scratch.give(pixels.rows)
    grad = _sampling.zeros(input.shape, dtype, channels_last)
    rows, columns = [a[:, :, 0] for a in y], [a[:, 0, :] for a in x]
    _bin_max.add_winners(grad, *found, rois[:, 0].astype(np.int64), rows, columns, g_rows)
    return grad


def _max_box_backward(grad_output, input, rois, spatial_scale, sampling_ratio, aligned):
    """The (K, 5) gradient with respect to the boxes."""
    g_rows, grid, y, x, pixels = _max_winners(
        grad_output, input, rois, spatial_scale, sampling_ratio, aligned
    )
    n, c, h, w = input.shape
    pooled = grad_output.shape[2:]
    bins = pooled[0] * pooled[1]
    out = _max_box_gradient(
        g_rows, rois, y, x, (n, h, w), grid, bins, pooled, spatial_scale, aligned, pixels
    )
    _scratch.give(pixels.rows)
    return out.astype(rois.dtype.type)
