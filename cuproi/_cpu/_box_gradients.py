"""Gradients with respect to the box coordinates of RoI Align (avg) and Deformable RoI Pooling.

Every sample sits at ``x1 * scale - shift + (a + u) * box_w`` along x (``u`` its fraction of the
box width, ``a`` a deformable bin's shift in box widths), so its value moves with x1 and x2
through its slope; the box gradient sums ``d loss / d value * slope * d position / d x1`` (and
x2, y1, y2) over the samples, channels and bins of the box. The slopes are the right derivatives
of the bilinear surface (zero in the edge bands where the forward flattens it); the adaptive
grid count is piecewise constant and contributes 0. See ``add_box_terms`` in the kernels.
"""

import numpy as np

from cuproi._cpu import _parallel, _samples, _sampling, _scratch


def box_gradient(grad_output, input, rois, g, y, x, scale, shift, free, mask):
    """(K, 5) box gradient from every sample, in chunks of boxes or pieces of one box.

    Only the tiles of the features that the boxes read are copied (_sampling.pixels_read).
    A box with more samples than a chunk holds adds its samples' terms piece by piece to
    running sums (_samples.add_terms): the same sums, to the bit, as all at once.
    """
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    shape = (n, h, w)
    ct = rois.dtype.type
    pixels = _sampling.pixels_read(input, _sampling.reach(rois[:, 0], y[:2], x[:2], shape), ct)
    g_rows = _sampling.BinRows(grad_output, ct)
    bins = pooled_h * pooled_w
    per_bin = np.repeat(1.0 / g.count.astype(np.float64), bins).astype(ct)  # 1 / count
    if mask is not None:
        per_bin = per_bin * mask.reshape(-1)
    pooled = (pooled_h, pooled_w)
    out = np.zeros((k, 5), np.float64)

    def terms(k0, k1, axes, span=None):
        """The samples (in ``span`` of the candidates) of boxes k0:k1 and their terms."""
        s = _samples.samples(*axes, h, w, span=span)
        image = rois[k0:k1, 0].astype(np.int64)[np.arange(len(axes[0])) // bins]
        dx, dy = _samples.slopes(s, image, pixels)
        rows = k0 * bins + s.bin
        weight = g_rows.take(rows) * per_bin[rows][:, None]
        return s.bin, _samples.sample_terms(s, dx, dy, weight, pooled, axes[2], axes[5])

    def finish(k0, k1, sums):  # every range of boxes writes its own rows
        chunk_shift = None if shift is None else tuple(a[k0:k1].ravel() for a in shift)
        chunk_free = (free[0][k0:k1], free[1][k0:k1])
        out[k0:k1] = _samples.box_terms(sums, pooled, scale, chunk_shift, chunk_free)

    def run(k0, k1):
        axes = _samples.bins_of(y, x, k0, k1)
        sums = np.zeros((4, len(axes[0])), np.float64)
        _samples.add_terms(sums, *terms(k0, k1, axes))
        finish(k0, k1, sums)

    def run_in_pieces(k0, k1, spans):  # the pieces in order, spread over the threads
        axes = _samples.bins_of(y, x, k0, k1)
        sums = np.zeros((4, len(axes[0])), np.float64)
        for b, t in _samples.in_order(lambda span: terms(k0, k1, axes, span), spans):
            _samples.add_terms(sums, b, t)
        finish(k0, k1, sums)

    for ranges, spans in _samples.work(y, x, h, w, c):
        if spans is None:
            _parallel.map_ordered(lambda r: run(*r), ranges)
        else:
            run_in_pieces(*ranges[0], spans)
    _scratch.give(pixels.rows)
    return out.astype(ct)
