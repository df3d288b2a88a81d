"""How far RoI Pool's rounding moves each box and its bins: :func:`quantization_error`."""

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from cuproi import _docstrings, _validate
from cuproi._types import OutputSize


class QuantizationError(NamedTuple):
    """Misalignment of RoI Pool for every box; every field is a (K,) float64 array.

    Shifts are absolute distances between an exact boundary and the one RoI Pool reads, in
    feature cells and in input pixels (cells divided by ``spatial_scale``); areas are fractions
    of the exact box area. See :func:`quantization_error` for the definitions.
    """

    box_shift: np.ndarray
    bin_shift: np.ndarray
    box_shift_pixels: np.ndarray
    bin_shift_pixels: np.ndarray
    area_lost: np.ndarray
    area_added: np.ndarray
    area_error: np.ndarray


@_docstrings.fill()
def quantization_error(
    boxes: ArrayLike, spatial_scale: float, output_size: OutputSize
) -> QuantizationError:
    """Misalignment introduced by RoI Pool's two rounding steps, per box (vectorized).

    Parameters
    ----------
    boxes : (K, 5) or (K, 4) array_like
        ``[batch_index, x1, y1, x2, y2]`` or ``[x1, y1, x2, y2]`` in input-image pixels (a
        single box may be given as a 1-D array). The batch index is not used.
    spatial_scale : float
        Factor from box coordinates to feature coordinates, e.g. 1/16 for stride 16.
    {output_size}

    Returns
    -------
    QuantizationError
        A named tuple of (K,) float64 arrays:

        ``box_shift``, ``box_shift_pixels``
            The largest distance between an edge of the exact box and the matching edge of
            the region RoI Pool reads, in feature cells and in input pixels.
        ``bin_shift``, ``bin_shift_pixels``
            The largest distance between an edge of an exact bin and the matching edge of the
            quantized bin, over all bins and both axes (at least ``box_shift``: the outer
            edges of the first and last bins are the box's).
        ``area_lost``, ``area_added``, ``area_error``
            The area of the exact box outside the quantized region, the area of the quantized
            region outside the exact box, and their sum (the symmetric difference), each
            divided by the exact box area: 0 means a perfect fit. A box of zero area has
            ``area_lost`` 0 and ``area_added`` (and ``area_error``) ``inf``.

    Raises
    ------
    TypeError
        Boxes that are not real numbers (or not a host array), a non-real scale, a non-integer
        output size.
    ValueError
        Boxes of the wrong shape, with non-finite values or beyond ``+-2**20`` feature cells
        once scaled (as in :func:`cuproi.roi_pool`); a scale that is not positive or above
        ``2**20``; a size that is not positive or above ``MAX_OUTPUT_SIZE`` (16384) bins.

    Notes
    -----
    Geometry: in feature coordinates cell ``i`` covers ``[i, i + 1)`` and the exact box is
    ``[x1 * s, x2 * s] x [y1 * s, y2 * s]`` (``s = spatial_scale``; empty if ``x2 < x1``), the
    convention of ``roi_align(..., aligned=True)`` and of :func:`cuproi.deform_roi_pool`, which
    sample it exactly. The exact bin edges along x are ``x1 * s + p * (x2 - x1) * s / PW`` for
    ``p = 0 .. PW``.

    RoI Pool (:func:`cuproi.roi_pool`) reads whole cells instead. Step 1 rounds the scaled
    corners to cells, ``q1 = round(x1 * s)`` and ``q2 = round(x2 * s)`` (half away from zero),
    and takes cells ``q1`` to ``q2`` inclusive, ``n = max(q2 - q1 + 1, 1)`` cells. Step 2 cuts
    them into bins ``[q1 + floor(p * n / PW), q1 + ceil((p + 1) * n / PW))``. The quantized
    region is the union of the bins, ``[q1, q1 + n)`` (before the clip to the feature map,
    which this function does not know). Because the end is inclusive, even a box whose
    corners lie on cell boundaries reads one more cell at its right and bottom (a shift of one
    cell there), the known "+1" of RoI Pool. The bin arithmetic is the op's, in floating point:
    where ``PW * (n / PW)`` rounds above ``n`` (e.g. ``n = 57``, ``PW = 7`` in float32) the last
    bin, and so the region, reaches one cell further, in torchvision too.

    Coordinates are computed in float64 for float64 boxes and float32 otherwise, as
    :func:`cuproi.roi_pool` does for float64 and float32 features.

    Examples
    --------
    >>> boxes = np.array([[0, 10.0, 20.0, 170.0, 100.0],   # 160 x 80 px
    ...                   [0, 24.0, 24.0, 232.0, 56.0]])   # 208 x 32 px
    >>> err = cuproi.quantization_error(boxes, spatial_scale=1 / 16, output_size=7)
    >>> err.box_shift_pixels
    array([22., 24.])
    >>> err.bin_shift_pixels.round(2)
    array([28.86, 33.14])
    >>> err.area_error.round(3)
    array([0.395, 1.173])
    """
    scale = _validate.spatial_scale(spatial_scale)
    pooled_h, pooled_w = _validate.output_size(output_size)
    rois = _validate.host_boxes(boxes, scale)
    ct = np.float64 if rois.dtype == np.float64 else np.float32
    if not ct(scale) > 0:
        raise ValueError(
            f"spatial_scale {scale} is not a positive {np.dtype(ct)} (the dtype in which "
            f"{rois.dtype} boxes are computed)"
        )
    coords = rois[:, -4:].astype(ct)
    # Boxes in chunks, so that the (boxes, bins) temporaries stay near _CHUNK elements.
    step = max(_CHUNK // (max(pooled_h, pooled_w) + 1), 1)
    parts = [
        _errors(coords[i : i + step], scale, pooled_h, pooled_w, ct)
        for i in range(0, max(len(coords), 1), step)
    ]
    return QuantizationError(*(np.concatenate(field) for field in zip(*parts, strict=True)))


# Elements of the largest (boxes, bins) temporary of one chunk of boxes.
_CHUNK = 2**20


def _errors(coords, scale, pooled_h, pooled_w, ct):
    """The QuantizationError of (K, 4) ``[x1, y1, x2, y2]`` coordinates in ``ct``."""
    x = _axis(coords[:, 0], coords[:, 2], scale, pooled_w, ct)
    y = _axis(coords[:, 1], coords[:, 3], scale, pooled_h, ct)
    box_shift = np.maximum(x.box_shift, y.box_shift)
    bin_shift = np.maximum(x.bin_shift, y.bin_shift)
    lost, added = _areas(x, y)
    return QuantizationError(
        box_shift, bin_shift, box_shift / scale, bin_shift / scale, lost, added, lost + added
    )


class _Axis(NamedTuple):
    """Exact and quantized extent of every box along one axis, and its largest shifts."""

    exact_start: np.ndarray
    exact_end: np.ndarray
    start: np.ndarray
    end: np.ndarray
    box_shift: np.ndarray
    bin_shift: np.ndarray


def _axis(lo, hi, scale, pooled, ct):
    """Quantized bins of [lo, hi] (input pixels) next to the exact ones, one axis."""
    # Imported here so that importing cuproi does not load the CPU backend (and SciPy).
    from cuproi._cpu import _geometry

    exact_lo = lo * ct(scale)
    exact_hi = hi * ct(scale)
    # RoI Pool's quantization, as cuproi._cpu._geometry.pool_bins computes it (without the clip).
    first = _geometry.c_round(exact_lo).astype(np.int64)
    last = _geometry.c_round(exact_hi).astype(np.int64)
    size = np.maximum(last - first + 1, 1).astype(ct) / ct(pooled)
    p = np.arange(pooled + 1, dtype=ct)
    starts = np.floor(p[:-1] * size[:, None]).astype(np.int64) + first[:, None]
    ends = np.ceil(p[1:] * size[:, None]).astype(np.int64) + first[:, None]
    # The exact bins, in float64 from the scaled coordinates the op sees.
    begin = exact_lo.astype(np.float64)
    length = np.maximum(exact_hi.astype(np.float64) - begin, 0.0)
    edges = begin[:, None] + np.arange(pooled + 1) * length[:, None] / pooled
    edges[:, -1] = begin + length  # exactly the box end, so bin_shift >= box_shift
    bin_shift = np.maximum(
        np.abs(starts - edges[:, :-1]).max(1, initial=0.0),
        np.abs(ends - edges[:, 1:]).max(1, initial=0.0),
    )
    start, end = starts[:, 0].astype(np.float64), ends.max(1).astype(np.float64)
    box_shift = np.maximum(np.abs(start - begin), np.abs(end - (begin + length)))
    return _Axis(begin, begin + length, start, end, box_shift, bin_shift)


def _areas(x, y):
    """(lost, added): parts of the exact box outside the quantized one and vice versa."""

    def overlap(a):
        return np.maximum(np.minimum(a.end, a.exact_end) - np.maximum(a.start, a.exact_start), 0)

    exact = (x.exact_end - x.exact_start) * (y.exact_end - y.exact_start)
    quantized = (x.end - x.start) * (y.end - y.start)
    common = overlap(x) * overlap(y)
    lost = np.divide(exact - common, exact, out=np.zeros_like(exact), where=exact > 0)
    added = np.divide(quantized - common, exact, out=np.full_like(exact, np.inf), where=exact > 0)
    return lost, added


# The former name of :func:`cuproi._validate.host_boxes`, which cuproi.viz imports from here.
