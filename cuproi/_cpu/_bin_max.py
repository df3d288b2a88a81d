"""Max mode's winners: the first maximum of every bin's samples, and the gradient it takes.

mmcv's ``pool_mode="max"`` takes, for every (bin, channel), the first maximum in scan order of
the bin's bilinear samples (an out-of-range sample competes as 0, a NaN wins), as bin_max in
kernels/common/bilinear.cuh. The samples come from :mod:`cuproi._cpu._samples`; here they are
valued and reduced (``slot_max``: one SciPy product per block of bins where it rounds as
NumPy does, else ``first_max``; ``Running`` for a box cut into pieces), and every winner's
gradient is added to its 4 taps (``add_winners``), band of rows by band, in the same order
whatever the chunks and threads.
"""

import functools
from typing import NamedTuple

import numpy as np
import scipy.sparse

from cuproi._cpu import _parallel, _samples, _sampling

# Samples per bin up to which first_max reduces bins slot by slot: a pass over a set of bins
# per slot (fast for the many small bins of a box head, where np.maximum.reduceat is several
# times slower). Larger bins are reduced one at a time by argmax.
_SLOTS = 256


def first_max(s, vals, bins):
    """The first maximum in scan order of every (bin, channel) over the samples ``s``.

    Returns ``(has, first, value)``: the bins that have samples (H,), the index in ``s`` of
    their first maximum (H, C), and its value (the winning sample's bits: the sign of a zero,
    the payload of a NaN). A NaN is the maximum (its first occurrence wins); no out-of-range
    zeros here (:func:`beats_zero`). No value is rounded, so any grouping of the bins (or of
    their samples, :class:`Running`) gives the same result.
    """
    counts = np.bincount(s.bin, minlength=bins)
    has = np.flatnonzero(counts)
    n = counts[has]
    starts = np.cumsum(counts)[has] - n
    largest = n.max(initial=0)
    if largest <= _SLOTS and largest * len(n) <= 2 * len(s.bin):  # padding at most 2x
        return has, *_first_by_slots(vals, starts, n)
    first = np.empty((len(has), vals.shape[1]), np.int64)
    value = np.empty(first.shape, vals.dtype)
    # Small bins in classes of sizes within a factor of 4 (1-2, 3-8, 9-32, ...), so that the
    # slots padded to the largest bin of a class are at most 4 times the samples.
    level = np.where(n <= _SLOTS, np.ceil(np.log2(n)) // 2, -1).astype(np.int64)
    for group_level in np.unique(level):
        group = np.flatnonzero(level == group_level)
        if group_level >= 0:
            first[group], value[group] = _first_by_slots(vals, starts[group], n[group])
            continue
        for j in group:  # argmax: the first maximum, or the first NaN
            first[j] = starts[j] + vals[starts[j] : starts[j] + n[j]].argmax(axis=0)
            value[j] = value_at(vals, first[j])
    return has, first, value


def _first_by_slots(vals, starts, n):
    """first_max of bins of ``n`` samples from ``starts``, one pass per slot."""
    # Slot t of every bin holds its sample t, or its last one where it has fewer: repeats
    # change neither the maximum nor the first sample that reaches it. One gather, then
    # elementwise passes over the slots (np.maximum.reduceat is several times slower).
    order = starts[:, None] + np.minimum(np.arange(n.max(initial=1)), n[:, None] - 1)
    slots = vals[order]  # (bins, slots, C)
    best = slots[:, 0].copy()
    for t in range(1, slots.shape[1]):
        np.maximum(best, slots[:, t], out=best)  # NaN propagates
    nan = np.isnan(best)
    any_nan = nan.any()
    first = np.empty(best.shape, np.int64)
    for t in reversed(range(slots.shape[1])):  # the earliest hit is written last
        hit = slots[:, t] == best
        if any_nan:
            hit |= nan & np.isnan(slots[:, t])
        np.copyto(first, order[:, t, None], where=hit)
    # The maximum is the first sample's value to the bit, but where it is a zero (np.maximum
    # may keep the sign of a later one) or a NaN (its payload).
    bins, channels = np.nonzero((best == 0) | nan)
    best[bins, channels] = vals[first[bins, channels], channels]
    return first, best


def value_at(vals, first):
    """``vals[first[..., c], c]``: the values of the samples ``first`` (..., C) of (S, C)."""
    c = vals.shape[1]
    return np.take(np.ascontiguousarray(vals), first * c + np.arange(c))  # one flat gather


def beats_zero(best, at, out):
    """Where an out-of-range sample at scan index ``out`` (-1: none) beats the winner ``best``.

    The zero (mmcv's value of a sample off the map) wins when larger, or equal and earlier than
    the winner's scan index ``at``; a NaN never loses (kernels: bin_max).
    """
    return (out >= 0) & ~np.isnan(best) & ((best < 0) | ((best == 0) & (out < at)))


@functools.cache
def products_rounded():
    """Whether SciPy's CSR product rounds every product before it adds it, as NumPy does.

    ``(0 + 1 * -(1 + 2**-11)) + a * a`` with ``a = 1 + 2**-12`` is 0 when ``a * a`` is
    rounded first (to ``1 + 2**-11``), 2**-24 with a fused multiply-add (float64 likewise).
    SciPy's x86-64 wheels have no FMA; a build that contracts (an ARM one may) is not used.
    """
    for dtype, e in ((np.float32, 12), (np.float64, 27)):
        a = 1 + 2.0**-e
        op = scipy.sparse.csr_matrix(
            (np.array([1, a], dtype), np.array([0, 1]), np.array([0, 2])), shape=(1, 2)
        )
        for channels in (1, 3):
            x = np.repeat(np.array([[-(1 + 2.0 ** (1 - e))], [a]], dtype), channels, 1)
            if np.any(op @ x != 0):
                return False
    return True


_TAPS = ("y0", "x0"), ("y0", "x1"), ("y1", "x0"), ("y1", "x1")


def _tap(s, iy, ix, rows):
    """Row and column of one tap (names in :data:`_TAPS`) of the samples ``rows`` of ``s``."""
    return getattr(s, iy)[rows], getattr(s, ix)[rows]


class _Operator(NamedTuple):
    """The 4 taps of every sample: their rows of a Pixels (S, 4) and weights (S, 4)."""

    columns: np.ndarray
    weights: np.ndarray


def _operator(s, image, pixels):
    """The taps of the samples ``s`` of bins of images ``image``, in :func:`values`' order."""
    at = image[s.bin]
    columns = np.stack([pixels.at(at, *_tap(s, iy, ix, slice(None))) for iy, ix in _TAPS], 1)
    return _Operator(columns, np.stack(_samples.weights(s), 1))


def _values_of(op, pixels, rows):
    """Values (len(rows), C) of the samples ``rows`` of ``op`` (:func:`_operator`).

    Row ``r`` of the sparse product holds the 4 taps of its sample in :func:`values`' order,
    so SciPy adds their rounded products to 0 in that order: :func:`values`' bits, but that a
    sum of -0 terms comes out +0 (and a NaN's payload may differ). The callers read such
    values only where a bin's maximum is 0 or NaN, and take those from :func:`_exact`.
    """
    indptr = np.arange(0, 4 * len(rows) + 1, 4)
    a = scipy.sparse.csr_matrix(
        (op.weights[rows].ravel(), op.columns[rows].ravel(), indptr),
        shape=(len(rows), pixels.size),
    )
    return a @ pixels.rows


def _exact(s, image, pixels, rows, channels):
    """Values of samples ``rows``, one channel each (``channels``), as :func:`values`.

    Of two NaN terms the first one's bits are kept, as in ``_samples.values``.
    """
    at = image[s.bin[rows]]
    total = None
    for (iy, ix), w in zip(_TAPS, _samples.weights(s), strict=True):
        term = pixels.rows[pixels.at(at, *_tap(s, iy, ix, rows)), channels] * w[rows]
        total = term if total is None else np.where(np.isnan(total), total, total + term)
    return total


# Bins padded to more than twice their samples, or of more samples than this, are reduced by
# scan_max instead (slot_max's running slots count in a byte).
_FAST_SLOTS = 254


def slot_dtype(largest):
    """The unsigned dtype of winning slots of bins of up to ``largest`` samples, or None.

    Its largest value marks no winner (see :func:`no_slot`); None beyond 65534 samples.
    """
    for dtype in (np.uint8, np.uint16):
        if largest < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return None


def no_slot(dtype):
    """The slot of no winner: an out-of-range zero, or a bin without samples."""
    return np.iinfo(dtype).max


def slot_max(s, image, pixels, bins, dtype=None):
    """Max-mode winner of every (bin, channel) as :func:`scan_max`, by slots of the bins.

    Returns ``(value (B, C), slot (B, C) of dtype)``: the winner is the bin's in-range sample
    number ``slot`` (in scan order), :func:`no_slot` for none (``slot`` None without
    ``dtype``: the values alone; else it must hold every bin's samples). Bins of up to
    :data:`_FAST_SLOTS` samples are reduced slot by slot (:func:`_by_slots`), in blocks of
    :data:`_BLOCK` values spread over the backend's threads; larger ones, or all where SciPy's
    products are not rounded, go to :func:`scan_max`.
    """
    c = pixels.rows.shape[1]
    counts = np.bincount(s.bin, minlength=bins)
    has = np.flatnonzero(counts)
    n = counts[has]
    starts = np.cumsum(n) - n
    fast = n <= _FAST_SLOTS if products_rounded() else np.zeros(len(n), bool)
    if fast.all() and len(has) == bins:  # no scatter: the common box head
        return _by_slots(s, image, pixels, starts, n, dtype)
    value = np.empty((bins, c), pixels.rows.dtype)
    value[counts == 0] = 0  # the others are written below
    slot = None if dtype is None else np.full((bins, c), no_slot(dtype), dtype)
    if fast.any():
        value[has[fast]], at = _by_slots(s, image, pixels, starts[fast], n[fast], dtype)
        if slot is not None:
            slot[has[fast]] = at
    if not fast.all():  # by scan_max, on their samples only, their bins renumbered
        slow, m = has[~fast], n[~fast]
        first = np.cumsum(m) - m  # of each bin, among those samples
        sub = _samples.subset(s, np.repeat(starts[~fast] - first, m) + np.arange(m.sum()))
        sub = sub._replace(bin=np.repeat(np.arange(len(m)), m), first_out=s.first_out[slow])
        value[slow], winner = scan_max(sub, _samples.values(sub, image[slow], pixels), len(m))
        if slot is not None:
            slot[slow] = np.where(winner >= 0, winner - first[:, None], no_slot(dtype))
    return value, slot


def _by_slots(s, image, pixels, starts, n, dtype):
    """``(value, slot)`` (H, C) of the bins of ``n`` samples from ``starts``.

    Slot ``t`` of a bin is its sample ``t`` (its last where it has fewer): blocks of bins are
    valued by one sparse product each, their pixels read once, and reduced slot by slot
    (:func:`_reduce_slots`): a later slot takes a (bin, channel) only where strictly larger,
    so the first maximum wins. Where the maximum is 0 or NaN, or where an out-of-range zero
    competes, its slot and bits are then taken as :func:`first_max` does (:func:`_again`).
    """
    c = pixels.rows.shape[1]
    # In their order (a block's boxes read nearby pixels) where padding every bin to the
    # largest at most doubles the slots; else in order of their samples (adaptive sampling's
    # bins differ), so that a block's bins pad few slots to its largest.
    order = None if _even(n) else np.argsort(n, kind="stable")
    if order is not None:
        starts, n = starts[order], n[order]
    best = np.empty((len(n), c), pixels.rows.dtype)
    at = None if dtype is None else np.empty(best.shape, np.uint8)
    op = _operator(s, image, pixels)
    cap = max(_BLOCK // max(c, 1), 1)
    # Where even, every bin's slots at once (at most twice its samples), as a block takes them.
    every = _slot_samples(starts, n) if order is None else None

    def block(span):
        rows = slice(*span)
        slots = _slot_samples(starts[rows], n[rows]) if every is None else every[rows]
        _reduce_slots(_slot_values(op, pixels, slots), best[rows], None if at is None else at[rows])

    work = 4 * int(n.sum()) * c  # multiply-adds of the products
    _parallel.map_ordered(block, _spans(n, cap), _parallel.workers(work, _parallel.PRODUCT_GRAIN))
    # np.maximum keeps a NaN but not its slot, either zero, and the product may sum -0 terms
    # to +0 or keep another NaN payload: those bins are valued again, slot by slot.
    out = s.first_out[s.bin[starts]]
    edge = out >= 0
    if not np.abs(best).min(initial=np.inf) > 0:  # some zero or NaN
        edge[np.flatnonzero(~(np.abs(best) > 0)) // c] = True
    again = np.flatnonzero(edge)
    args = (s, image, pixels, op, starts, n, out, best, at)
    _parallel.map_ordered(lambda span: _again(*args, again[slice(*span)]), _spans(n[again], cap))
    if order is not None:  # back to the bins' order
        best = _unsorted(best, order)
        at = None if at is None else _unsorted(at, order)
    if dtype is not None and np.dtype(dtype) != at.dtype:  # no slot: the new dtype's
        wide = at.astype(dtype)
        wide[at == no_slot(np.uint8)] = no_slot(dtype)
        at = wide
    return best, at


def _spans(n, cap):
    """Consecutive spans of the bins of ``n`` samples: at most ``cap`` padded slots each.

    A span's padded slots are its bins times its largest bin; a larger bin is a span alone.
    """
    if _even(n):  # equal spans: padded to the largest bin, a bin at most doubles its slots
        step = max(cap // int(n.max(initial=1)), 1)
        return [(i, min(i + step, len(n))) for i in range(0, len(n), step)]
    spans, i = [], 0
    while i < len(n):
        window = np.maximum.accumulate(n[i : i + cap])  # a span has at most cap bins
        padded = np.arange(1, len(window) + 1) * window
        spans.append((i, i + max(int(np.searchsorted(padded, cap, side="right")), 1)))
        i = spans[-1][1]
    return spans


def _even(n):
    """Whether padding the bins of ``n`` samples to the largest at most doubles their slots."""
    return n.max(initial=0) * len(n) <= 2 * n.sum()


def _slot_samples(starts, n):
    """The samples (B, T) of the T slots of the B bins of ``n`` samples from ``starts``.

    Slot ``t`` is the bin's sample ``t``, or its last where it has fewer: repeats change
    neither the maximum nor the first sample that holds it.
    """
    return starts[:, None] + np.minimum(np.arange(int(n.max(initial=1))), n[:, None] - 1)


def _slot_values(op, pixels, slots):
    """Values (T, B, C) of the samples ``slots`` (B, T) of :func:`_slot_samples`."""
    return _values_of(op, pixels, slots.T.ravel()).reshape(slots.shape[1], len(slots), -1)


def _again(s, image, pixels, op, starts, n, out, best, at, rows):
    """Winners of the bins ``rows`` as :func:`first_max` takes them, from their maxima ``best``.

    The first NaN wins; the value is the winning sample's exact one (the sign of a zero, the
    payload of a NaN); an out-of-range sample at scan index ``out`` competes as 0.
    """
    c = pixels.rows.shape[1]
    slots = _slot_samples(starts[rows], n[rows])
    vals = _slot_values(op, pixels, slots)
    sub = best[rows]
    first = _first_slots(vals, sub)
    h, ch = np.divmod(np.flatnonzero(~(np.abs(sub) > 0)), c)
    sub[h, ch] = _exact(s, image, pixels, slots[h, first[h, ch]], ch)
    scan = s.scan[slots[np.arange(len(rows))[:, None], first]]
    zero = beats_zero(sub, scan, out[rows, None])
    best[rows] = np.where(zero, 0, sub)
    if at is not None:
        at[rows] = np.where(zero, no_slot(np.uint8), first)


def _unsorted(rows, order):
    """``rows`` of bins in ``order``, put back in the order of the bins."""
    out = np.empty_like(rows)
    out[order] = rows
    return out


# Values reduced at once by slot_max (slots x bins x channels): a block that stays in the
# cache across the passes over its slots, and whose product's output is not mapped afresh.
_BLOCK = 1 << 18


def _reduce_slots(vals, best, at):
    """Reduce the values ``vals`` (T, B, C) of the T slots of B bins into ``best`` and ``at``.

    ``best`` (B, C) gets every (bin, channel)'s maximum over its T slots, ``at`` (None: not
    wanted) the first slot that holds it, but where it is NaN (:func:`slot_max` fixes those).
    """
    best[...] = vals[0]
    if at is None:
        for v in vals[1:]:
            np.maximum(best, v, out=best)
        return
    at[...] = 0
    later, step = np.empty(best.shape, bool), np.empty(best.shape, np.uint8)
    for t in range(1, len(vals)):  # at = t where larger: max(at, t * later), as at < t
        np.greater(vals[t], best, out=later)
        np.maximum(at, np.multiply(later, np.uint8(t), out=step), out=at)
        np.maximum(best, vals[t], out=best)


def _first_slots(v, best):
    """The first slot ``t`` of ``v`` (T, ...) whose value is ``best`` (...), or is NaN with it."""
    at = np.zeros(best.shape, np.uint8)
    later = np.empty(best.shape, bool)
    nan = np.isnan(best)
    for t in reversed(range(1, len(v))):  # the earliest hit is written last
        np.equal(v[t], best, out=later)
        if nan.any():
            later |= nan & np.isnan(v[t])
        # at = t where hit, else as it was; masked writes are ten times slower
        at += later * (np.uint8(t) - at)
    np.equal(v[0], best, out=later)
    if nan.any():
        later |= nan & np.isnan(v[0])
    at *= ~later
    return at


def scan_max(s, vals, bins):
    """Max-mode winner of every (bin, channel): ``(value (B, C), sample index (B, C) or -1)``.

    First maximum in scan order, a NaN wins, an out-of-range sample competes as 0 (its index is
    -1: no gradient), a bin without samples gives 0 with index -1 (kernels: bin_max). The value
    is the winning sample's, as in the kernels.
    """
    c = vals.shape[1]
    value = np.zeros((bins, c), vals.dtype)
    winner = np.full((bins, c), -1, np.int64)
    if len(s.bin):
        has, first, best = first_max(s, vals, bins)
        zero = beats_zero(best, s.scan[first], s.first_out[has][:, None])
        value[has] = np.where(zero, 0, best)
        winner[has] = np.where(zero, -1, first)
    return value, winner


class Running:
    """The max-mode winners of a set of bins, from pieces of their samples taken in scan order.

    :meth:`add` takes each piece's first maxima; the earlier piece keeps a tie, a NaN wins
    over a number, so the result is :func:`scan_max`'s however the samples were cut.
    """

    def __init__(self, bins, channels, dtype):
        self.best = np.zeros((bins, channels), dtype)
        self.at = np.full((bins, channels), -1, np.int64)  # scan index in the bin; -1: none
        self.out = np.full(bins, -1, np.int64)  # first out-of-range scan index; -1: none

    def add(self, has, best, at, first_out):
        """Fold in a piece: its bins ``has``, their first maxima ``best`` at scan ``at``."""
        now, now_at = self.best[has], self.at[has]
        take = (now_at < 0) | (~np.isnan(now) & (np.isnan(best) | (best > now)))
        self.best[has] = np.where(take, best, now)
        self.at[has] = np.where(take, at, now_at)
        some = first_out >= 0
        fold = some & ((self.out < 0) | (first_out < self.out))
        self.out[fold] = first_out[fold]

    def result(self):
        """``(value (B, C), winning scan index (B, C) or -1)``, out-of-range zeros included."""
        zero = (self.at >= 0) & beats_zero(self.best, self.at, self.out[:, None])
        return np.where(zero, 0, self.best), np.where(zero, -1, self.at)


def piece_max(s, vals, bins):
    """A piece's contribution to :class:`Running`: ``(has, best, scan index, first_out)``."""
    has, first, best = first_max(s, vals, bins)
    return has, best, s.scan[first], s.first_out


def winning(s, winner):
    """The samples that win some channel, and ``winner`` as indices into them.

    The box gradient of max mode reads the winners' slopes only (as the kernels do); this
    keeps those samples, in their order.
    """
    used = np.zeros(len(s.bin) + 1, bool)
    used[winner.ravel()] = True  # -1 marks the extra last slot
    if used[:-1].all():  # many channels: every sample wins one
        return s, winner
    keep = np.flatnonzero(used[:-1])
    remap = np.full(len(s.bin) + 1, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    return _samples.subset(s, keep), remap[winner]


# Max mode's input gradient: every winner's 4 taps, weighed by its bin's gradient.


def _rows_reached(start, size, height):
    """Rows ``[lo, hi)`` that the taps of bins from ``start``, of ``size``, may read (each).

    The bounds of ``_sampling.reach``, bin by bin: a cell and a relative 1e-5 of slack, NaN
    reaching every row.
    """
    start = np.asarray(start, np.float64)
    end = start + size
    lo, hi = np.fmin(start, end), np.fmax(start, end)
    slack = 1 + 1e-5 * (np.abs(lo) + np.abs(hi))
    with np.errstate(invalid="ignore"):
        first = np.fmax(np.minimum(np.floor(lo - slack), height), 0)
        stop = np.fmin(np.maximum(np.floor(hi + slack) + 2, 0), height)
    return first.astype(np.int64), stop.astype(np.int64)


def _bands(image, lo, hi, load, n, rows):
    """Bands ``(image, r0, r1)`` of the rows that bins read, of about BUDGET ``load`` each.

    Bin row ``j`` of image ``image[j]`` reads rows ``lo[j]:hi[j]``; its ``load`` (its samples
    times the channels) is counted at its first row. A band has at most ``rows`` rows, and
    one at least; the bands cover, image by image, the rows from the first to the last read.
    """
    bands = []
    for i in range(n):
        mine = image == i
        if not mine.any():
            continue
        first, stop = int(lo[mine].min()), int(hi[mine].max())
        per_row = np.bincount(lo[mine] - first, load[mine], stop - first)
        before = np.cumsum(per_row) - per_row
        band = before // _sampling.BUDGET
        cuts = np.flatnonzero(
            (np.diff(band) != 0) | (np.diff(np.arange(stop - first) // rows) != 0)
        )
        edges = [first, *(first + cuts + 1).tolist(), stop]
        bands += [(i, r0, r1) for r0, r1 in zip(edges[:-1], edges[1:], strict=True)]
    return bands


# Elements of a band's sums written into the NCHW planes at a time. A band is up to BUDGET
# values; copied into the planes at once, transposed, its copy took 3 to 4 times as long as by
# pieces of a few rows (a 2-core VM: 45 against 12 ms for 2 x 256 x 100 x 152 float32).
_WRITE = 1 << 17


def add_winners(grad, slot, chunk, image, y, x, g_rows):
    """Write max mode's input gradient into the zeroed (N, C, H, W) ``grad``, band by band.

    ``slot`` (K * PH * PW, C) are the winners (:func:`slot_max`), ``chunk`` (K,) the chunk
    of every box in the order the sums run, ``image`` (K,) its image, ``y`` and ``x`` the
    (start, bin size, grid) of the boxes' bin rows (K, PH) and columns (K, PW) (RoI Align's
    bins: a row's start does not depend on the column), ``g_rows`` the gradient's rows
    (_sampling.BinRows).

    Each winner adds ``g * w`` to each of its 4 taps; a cell's terms are summed from 0 in
    the order of the kernels' port that came first: chunk by chunk, tap by tap, bin by bin
    (np.add.at over the winners of each tap). Here every band of rows takes the samples of
    the bins that reach it, each with a row of its bin's gradient, a zero in the channels it
    does not win (adding it changes no sum: :func:`_terms`), and SciPy's CSR product sums a
    cell's entries in the order of that row (products rounded, :func:`products_rounded`): the
    cells of a band, in that order, once. Every cell belongs to one band, so the bands run in
    parallel.
    """
    n, c, h, w = grad.shape
    k, pooled_h = y[0].shape
    pooled_w = x[0].shape[1]
    lo, hi = _rows_reached(y[0], y[1], h)
    ny = np.subtract(*_sampling.sample_range(*y, h)[::-1])
    nx = np.subtract(*_sampling.sample_range(*x, w)[::-1]).sum(1)
    reach = (hi > lo) & (ny > 0) & (nx[:, None] > 0)
    kk, pp = np.nonzero(reach)
    load = ny[kk, pp] * nx[kk] * max(c, 1)
    rows = max(_sampling.BUDGET // max(w * c, 1), 1)
    bands = _bands(image[kk], lo[kk, pp], hi[kk, pp], load, n, rows)
    image_of_row = np.where(reach, image[:, None], -1)

    col_lo, col_hi = _rows_reached(x[0], x[1], w)  # the columns every bin column may read
    bin_load = np.zeros(y[0].shape)
    bin_load[kk, pp] = load

    def group(sel, i, r0, r1, area, partial):
        """The sums of the cells ``area`` after the bin rows ``sel``, from ``partial``."""
        box = sel // pooled_h
        bins = (sel[:, None] * pooled_w + np.arange(pooled_w)).ravel()
        axes = [np.repeat(a.ravel()[sel], pooled_w) for a in y]
        axes += [a[box].ravel() for a in x]
        s = _samples.samples(*axes, h, w)
        counts = np.bincount(s.bin, minlength=len(bins))
        number = np.arange(len(s.bin)) - (np.cumsum(counts) - counts)[s.bin]
        inside = ((s.y0 >= r0) & (s.y0 < r1)) | ((s.y1 >= r0) & (s.y1 < r1))
        if not inside.any():
            return partial
        terms, column = _terms(slot[bins], g_rows.take(bins), s.bin, number, inside)
        s = _samples.subset(s, inside)
        return _band_sums(area, s, terms, column, chunk[box[s.bin // pooled_w]], partial)

    def band(i, r0, r1):
        # The bin rows (box, ph) reaching rows r0:r1 of image i, every bin of them, in groups
        # of whole chunks of about BUDGET load, the sums carried from one to the next.
        sel = np.flatnonzero(((image_of_row == i) & (lo < r1) & (hi > r0)).ravel())
        if not len(sel):
            return
        box = sel // pooled_h
        x0, x1 = int(col_lo[box].min()), int(col_hi[box].max())
        area = (r0, r1, x0, max(x1, x0 + 1))
        before = np.cumsum(bin_load.ravel()[sel]) - bin_load.ravel()[sel]
        runs = np.flatnonzero(np.diff(chunk[box]) != 0) + 1  # where a chunk starts
        cuts = runs[np.diff(before[np.r_[0, runs]] // _sampling.BUDGET) != 0]
        edges = [0, *cuts.tolist(), len(sel)]
        sums = None
        for e0, e1 in zip(edges[:-1], edges[1:], strict=True):
            sums = group(sel[e0:e1], i, r0, r1, area, sums)
        if sums is not None:  # (cells, C) into the planes, _WRITE elements at a time
            x0, x1 = area[2:]
            sums = sums.reshape(r1 - r0, x1 - x0, c)
            for q0, q1 in _sampling.chunks(np.full(r1 - r0, (x1 - x0) * c), _WRITE):
                grad[i, :, r0 + q0 : r0 + q1, x0:x1] = sums[q0:q1].transpose(2, 0, 1)

    _parallel.map_ordered(lambda b: band(*b), bands)


# Slots per bin up to which _terms makes the rows of the winners slot by slot (one pass over
# the bins each); beyond, sample by sample (a gather of the slots and gradient rows each).
_SLOT_ROWS = 16


def _terms(slot, g, b, number, keep):
    """Rows of each sample's bin's gradient ``g`` where it wins (``slot``), a zero elsewhere.

    A finite ``g`` is multiplied by 0 or 1; one with infinities or NaN (0 * inf is NaN) is
    masked on its bits. Either zero will do: a cell's sum starts from +0, so it is never -0,
    and adding +0 or -0 to it changes no bit.

    ``b`` and ``number`` are every sample's bin and slot; ``keep`` the samples that need a
    row. Returns the rows and, for each kept sample, its row.
    """
    largest = int(number.max(initial=-1)) + 1
    if largest <= _SLOT_ROWS:  # row t * B + b: bin b's slot t
        won = np.empty(g.shape, bool)
        if np.isfinite(g).all():  # g times 1 or 0
            rows = np.empty((largest, *g.shape), g.dtype)
            for t in range(largest):
                np.multiply(g, np.equal(slot, t, out=won), out=rows[t])
        else:  # g's bits and all ones where slot t wins, 0 elsewhere (np.where is slower)
            bits = np.dtype(f"u{g.itemsize}")
            rows, mask = np.empty((largest, *g.shape), bits), np.empty(g.shape, bits)
            for t in range(largest):
                np.subtract(0, np.equal(slot, t, out=won), out=mask, dtype=bits)
                np.bitwise_and(g.view(bits), mask, out=rows[t])
        rows = rows.view(g.dtype).reshape(largest * len(g), g.shape[1])
        return rows, (number * len(g) + b)[keep]
    kept = np.flatnonzero(keep)
    wins = slot[b[kept]] == number[kept, None].astype(slot.dtype)
    return np.where(wins, g[b[kept]], 0), np.arange(len(kept))


def _band_sums(area, s, terms, column, chunk, partial=None):
    """The (cells, C) sums of the taps of samples ``s`` in ``area`` (r0, r1, x0, x1).

    Sample ``j`` weighs row ``column[j]`` of ``terms`` (R, C); ``chunk`` (S,) orders the
    sums: chunk, then tap, then sample (see :func:`add_winners`). With ``partial``, the sums
    of earlier chunks, each cell's first term is its partial sum (times 1; a sum from +0 is
    never -0, so adding it to 0 changes no bit).
    """
    r0, r1, x0, x1 = area
    width, count = x1 - x0, len(s.bin)
    cells = (r1 - r0) * width
    # Position of the entry (sample j, tap t) in (chunk, tap, sample) order: the samples come
    # in chunk order, so a chunk's entries are its 4 runs of samples from 4 * its first one.
    first = np.searchsorted(chunk, chunk, side="left")
    size = np.searchsorted(chunk, chunk, side="right") - first
    j = np.arange(count)
    # The entries in that order (the partial sums first), those in the area kept, then
    # sorted by cell (stably: radix sort for 16-bit cells).
    start = 0 if partial is None else cells
    cell = np.full(start + 4 * count, -1, np.int64)
    columns = np.empty(start + 4 * count, np.int64)
    data = np.empty(start + 4 * count, terms.dtype)
    if partial is not None:
        cell[:cells] = columns[:cells] = np.arange(cells)
        columns[:cells] += len(terms)
        data[:cells] = 1
        terms = np.concatenate([terms, partial])
    for t, ((iy, ix), wt) in enumerate(zip(_TAPS, _samples.weights(s), strict=True)):
        yy, xx = getattr(s, iy), getattr(s, ix)
        position = start + 4 * first + t * size + (j - first)
        cell[position] = np.where((yy >= r0) & (yy < r1), (yy - r0) * width + (xx - x0), -1)
        columns[position] = column
        data[position] = wt
    ok = cell >= 0
    cell, columns, data = cell[ok], columns[ok], data[ok]
    order = np.argsort(cell.astype(np.uint16) if cells <= 1 << 16 else cell, kind="stable")
    cell = cell[order]
    indptr = np.searchsorted(cell, np.arange(cells + 1))
    op = scipy.sparse.csr_matrix((data[order], columns[order], indptr), shape=(cells, len(terms)))
    return op @ terms
