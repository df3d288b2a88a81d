"""Pictures of RoI Pool, RoI Align and Deformable RoI Pool, drawn from the ops' own geometry.

Needs matplotlib (``pip install matplotlib``), imported when a function is called, never on
``import cuproi``. Every function returns a :class:`matplotlib.figure.Figure` (notebooks show
it; ``fig.savefig("roi.png")`` or ``fig.savefig("roi.svg")`` saves it) built without pyplot, so
it works headless and stays out of pyplot's list of open figures.

Nothing is re-derived here: the cells RoI Pool's bins read are those of the CPU backend (the
bins are drawn as its rounded box cut evenly, in the same arithmetic), the max-pooled cells
come from calling :func:`cuproi.roi_pool` with ``return_argmax=True``, and the sample points of
RoI Align and Deformable RoI Pool, their range test and their bilinear neighbours come from the
sampling code both ops run. What you see is what the ops compute.

Coordinates: the axes are feature-map coordinates in which cell ``(h, w)`` is the unit square
``[w, w + 1) x [h, h + 1)``, so a box ``[x1, y1, x2, y2]`` (input pixels) is drawn at
``[x1, x2] x [y1, y2]`` times ``spatial_scale``; the top axis reads input pixels. A bilinear
sample at position ``p`` in the ops' index coordinates (where the value of cell ``i`` sits at
``i``) is drawn at ``p + 0.5``, among the centres of the cells it reads.
"""

from __future__ import annotations  # help() shows ArrayLike, not the union it stands for

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

import cuproi
from cuproi import _validate
from cuproi._types import OutputSize

if TYPE_CHECKING:  # matplotlib is imported when a function is called
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# A sample of RoI Align's grid, (box, ph, pw, i, j); entries that are None are picked.
Sample = Sequence[int | None]

__all__ = ["plot_comparison", "plot_deform_roi_pool", "plot_roi_align", "plot_roi_pool"]

_EXACT = "#1f77b4"  # the box as given
_QUANTIZED = "#d62728"  # what RoI Pool reads
_POOL_BINS = "#ff7f0e"
_ALIGN = "#2ca02c"
_DEFORM = "#9467bd"
_REGULAR = "#7f7f7f"
_CHOSEN = "#e377c2"
_AUTO = (0, None, None, None, None)  # a sample of the first box, picked by _pick
_GREYS = {"cmap": "Greys", "interpolation": "nearest"}  # feature maps: dark = high


def plot_roi_pool(
    features: ArrayLike,
    boxes: ArrayLike,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    *,
    channel: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Draw RoI Pool: exact box, quantized box and bins, misaligned area, max-pooled cells.

    Parameters
    ----------
    features : (H, W), (C, H, W) or (1, C, H, W) array, or a shape ``(H, W)``
        The feature map drawn (channel ``channel``) and pooled. A shape tuple draws a smooth
        synthetic map of that size.
    boxes : (4,), (K, 4) or (K, 5) array_like
        ``[x1, y1, x2, y2]`` or ``[batch_index, x1, y1, x2, y2]`` in input pixels; every box
        is drawn on the one map shown (a batch index is ignored).
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    spatial_scale : float, optional
        Factor from box coordinates to feature coordinates.
    channel : int, optional
        Channel shown and pooled when ``features`` has channels.
    ax : matplotlib.axes.Axes, optional
        Draw here (legend below it) instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure. Its main Axes holds Rectangle patches with ``gid`` ``"exact box"``,
        ``"quantized box"`` and ``"bin"`` (``K * PH * PW`` of them: the quantized box cut into
        equal parts), a ``"bin cells"`` patch (the cells the middle bin of the first box
        reads), the misaligned areas (gids ``"lost"`` and ``"added"``) and a scatter (gid
        ``"max cells"``) with the maximum cell of every non-empty bin, one point per bin.

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError, ValueError, IndexError
        Bad arguments, as :func:`cuproi.roi_pool`.

    Notes
    -----
    The quantized box is the union of the bins as the op reads them (clipped to the map); the
    area between it and the exact box is what :func:`cuproi.quantization_error` measures (that
    function does not clip). A bin reads every cell it touches (``floor`` of its start,
    ``ceil`` of its end), so neighbouring bins whose shared edge falls inside a cell both read
    it, and when that cell holds both maxima one star marks the two.

    Examples
    --------
    >>> from cuproi import viz
    >>> fig = viz.plot_roi_pool((12, 16), [20.0, 24.0, 150.0, 120.0], 3, spatial_scale=1 / 16)
    >>> len([p for p in fig.axes[0].patches if p.get_gid() == "bin"])
    9
    >>> fig.savefig("roi_pool.svg")  # doctest: +SKIP
    """
    plane, rois = _inputs(features, boxes, channel)
    pooled, scale = _validate.output_size(output_size), _validate.spatial_scale(spatial_scale)
    fig, main, legend, _ = _figure(ax)
    _draw_map(main, plane)
    points, geometry = _pool_layers(main, plane, rois, pooled, scale)
    view = _view(points, plane)
    _frame(main, plane, view, scale)
    _fit(main, legend, view)
    main.set_title(_pool_title(rois, pooled, scale), fontsize=10)
    _legend(legend or main, _pool_legend(geometry))
    return fig


def plot_roi_align(
    features: ArrayLike,
    boxes: ArrayLike,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    sample: Sample | None = _AUTO,
    channel: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Draw RoI Align: the bins, every bilinear sample, and the four neighbours of one sample.

    Parameters
    ----------
    features, boxes, output_size, spatial_scale, channel
        As :func:`plot_roi_pool`.
    sampling_ratio : int, optional
        Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)``.
    aligned : bool, optional
        Half-pixel shift, as :func:`cuproi.roi_align`.
    sample : tuple or None, optional
        ``(box, ph, pw, i, j)``: sample ``(i, j)`` (row, column) of bin ``(ph, pw)``, whose four
        neighbours and weights are drawn; None for none. Entries that are None are picked: the
        sample nearest the centre of its box whose four neighbours are non-zero (else one with
        a non-zero neighbour, else the one nearest the centre), so that the zoom shows values
        to interpolate rather than an empty part of the map.
    ax : matplotlib.axes.Axes, optional
        Draw the main panel here instead of in a new figure; a new figure also gets a zoom on
        the chosen sample, with the neighbours' values and the weighted sum.

    Returns
    -------
    matplotlib.figure.Figure
        Its first Axes holds ``"exact box"`` and ``"bin"`` Rectangle patches, a scatter of the
        samples that count (gid ``"samples"``: ``K * PH * PW * gh * gw`` points for boxes inside
        the map), a scatter of those outside ``[-1, H] x [-1, W]`` that add zero (gid ``"samples
        off the map"``) and, for the chosen sample, one line per neighbour (gid
        ``"neighbour"``, four) labelled with its weight (gid ``"weight"``). The legend lists
        samples off the map only when there are some.

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError, ValueError, IndexError
        Bad arguments, as :func:`cuproi.roi_align`, or a ``sample`` outside the grid.

    Examples
    --------
    >>> from cuproi import viz
    >>> fig = viz.plot_roi_align((12, 16), [20.0, 24.0, 150.0, 120.0], 3, 1 / 16, 2, True)
    >>> len(next(c for c in fig.axes[0].collections if c.get_gid() == "samples").get_offsets())
    36
    """
    plane, rois = _inputs(features, boxes, channel)
    pooled, scale = _validate.output_size(output_size), _validate.spatial_scale(spatial_scale)
    ratio, aligned = _validate.sampling_ratio(sampling_ratio), bool(aligned)
    grids = _sample_grids(rois, pooled, scale, ratio, aligned=aligned)
    chosen = None if sample is None else _chosen(grids, plane, pooled, sample)
    fig, main, legend, zoom = _figure(ax, zoom=chosen is not None)
    _draw_map(main, plane)
    points = _align_layers(main, plane, rois, grids, scale, chosen)
    view = _view(points, plane)
    _frame(main, plane, view, scale)
    _fit(main, legend, view)
    main.set_title(_align_title(grids, pooled, aligned), fontsize=10)
    _legend(legend or main, _align_legend(main, chosen is not None))
    if zoom is not None:
        _bilinear_zoom(zoom, plane, chosen)
    return fig


def plot_deform_roi_pool(
    features: ArrayLike,
    boxes: ArrayLike,
    offset: ArrayLike | None,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    *,
    offset_source: str | None = None,
    channel: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Draw Deformable RoI Pool: the regular bins, the shifted bins and samples, and arrows.

    Parameters
    ----------
    features, boxes, output_size, spatial_scale, channel, ax
        As :func:`plot_roi_pool`.
    offset : (K, 2, PH, PW) array or None
        Per-bin shifts as :func:`cuproi.deform_roi_pool` takes them (x, then y, in units of
        ``gamma`` times the box width and height); None draws no shift.
    sampling_ratio, gamma : optional
        As :func:`cuproi.deform_roi_pool`.
    offset_source : str, optional
        Where the offsets come from, said in the title (``"learned"``, or ``"a synthetic
        pattern, not learned"`` for made-up ones); None says nothing.

    Returns
    -------
    matplotlib.figure.Figure
        Its first Axes holds the regular bins (Rectangle gid ``"regular bin"``, a faint grid:
        their samples are RoI Align's), the shifted bins (gid ``"bin"``) and their samples
        (scatter gid ``"samples"``, ``K * PH * PW * gh * gw`` points for boxes inside the map;
        those that add zero in ``"samples off the map"``) and a quiver (gid ``"offsets"``) with
        one arrow per bin, from its regular centre to its shifted one.

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError, ValueError, IndexError
        Bad arguments, as :func:`cuproi.deform_roi_pool`.

    Examples
    --------
    >>> import numpy as np
    >>> from cuproi import viz
    >>> offset = np.full((1, 2, 3, 3), 0.5, np.float32)
    >>> fig = viz.plot_deform_roi_pool((12, 16), [20.0, 24.0, 150.0, 120.0], offset, 3, 1 / 16)
    >>> next(c for c in fig.axes[0].collections if c.get_gid() == "offsets").N
    9
    """
    plane, rois = _inputs(features, boxes, channel)
    pooled, scale = _validate.output_size(output_size), _validate.spatial_scale(spatial_scale)
    ratio, gamma = _validate.sampling_ratio(sampling_ratio), _validate.gamma(gamma)
    offset = _offset(offset, len(rois), pooled, plane.dtype)
    fig, main, legend, _ = _figure(ax)
    _draw_map(main, plane)
    points, shift = _deform_layers(main, plane, rois, offset, pooled, scale, ratio, gamma)
    view = _view(points, plane)
    _frame(main, plane, view, scale)
    _fit(main, legend, view)
    main.set_title(_deform_title(gamma, shift, offset is not None, offset_source), fontsize=10)
    _legend(legend or main, _deform_legend(main))
    return fig


def plot_comparison(
    features: ArrayLike,
    boxes: ArrayLike,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    offset: ArrayLike | None = None,
    gamma: float = 0.1,
    *,
    aligned: bool = True,
    sample: Sample | None = _AUTO,
    offset_source: str | None = None,
    channel: int = 0,
    image: ArrayLike | None = None,
    width: float = 18.0,
) -> Figure:
    """RoI Pool, RoI Align and Deformable RoI Pool side by side on the same box(es).

    The top row draws the three methods on one view, as the single-method functions do. The
    bottom row shows the context (the input image with the feature grid, or the whole map),
    the bilinear interpolation of the chosen RoI Align sample, and the pooled outputs of the
    three ops for the first box on one colour scale.

    Parameters
    ----------
    features, boxes, output_size, spatial_scale, channel
        As :func:`plot_roi_pool`.
    sampling_ratio : int, optional
        Samples per bin of RoI Align and Deformable RoI Pool.
    offset, gamma, offset_source : optional
        As :func:`plot_deform_roi_pool`.
    aligned, sample : optional
        As :func:`plot_roi_align`; ``sample`` None leaves out the zoom.
    image : (h, w) or (h, w, 3) array, optional
        The input image the features come from, drawn with the boxes in the context panel.
    width : float, optional
        Width in inches; the height follows from the shape of the view.

    Returns
    -------
    matplotlib.figure.Figure
        Axes titled ``"RoI Pool ..."``, ``"RoI Align ..."`` and ``"Deformable RoI Pool ..."``
        first, then the bottom row. The outputs' images share one
        :class:`~matplotlib.colors.Normalize`, drawn by their colour bar.

    Raises
    ------
    ImportError
        Without matplotlib.
    TypeError, ValueError, IndexError
        Bad arguments, as the ops.

    Examples
    --------
    >>> from cuproi import viz
    >>> fig = viz.plot_comparison((12, 16), [20.0, 24.0, 150.0, 120.0], 3, 1 / 16)
    >>> [ax.get_title().splitlines()[0] for ax in fig.axes[:3]]
    ['RoI Pool (Fast R-CNN, 2015)', 'RoI Align (Mask R-CNN, 2017)', 'Deformable RoI Pool (2017)']
    """
    from matplotlib.figure import Figure

    plane, rois = _inputs(features, boxes, channel)
    pooled, scale = _validate.output_size(output_size), _validate.spatial_scale(spatial_scale)
    ratio, gamma = _validate.sampling_ratio(sampling_ratio), _validate.gamma(gamma)
    offset = _offset(offset, len(rois), pooled, plane.dtype)
    grids = _sample_grids(rois, pooled, scale, ratio, aligned=aligned)
    chosen = None if sample is None else _chosen(grids, plane, pooled, sample)
    fig = Figure(figsize=(width, width), layout="constrained")
    axes = fig.subplot_mosaic(
        [["pool", "align", "deform"], ["l0", "l1", "l2"], ["context", "zoom", "outputs"]]
    )
    top = [axes["pool"], axes["align"], axes["deform"]]
    for ax in top:
        _draw_map(ax, plane)
    points, geometry = _pool_layers(top[0], plane, rois, pooled, scale)
    points += _align_layers(top[1], plane, rois, grids, scale, chosen)
    deform, shift = _deform_layers(top[2], plane, rois, offset, pooled, scale, ratio, gamma)
    view = _view(points + deform, plane)
    for ax in top:
        _frame(ax, plane, view, scale)
    # Rows in inches: the top panels as tall as the view is for their width (plus titles and
    # labels), the legends, the bottom row.
    (x0, x1), (y1, y0) = view
    rows = [width / 3.4 * (y1 - y0) / (x1 - x0) + 1.4, 0.8, width / 4.6 + 0.9]
    fig.set_size_inches(width, sum(rows))
    top[0].get_gridspec().set_height_ratios(rows)
    top[0].set_title(_pool_title(rois, pooled, scale), fontsize=10)
    top[1].set_title(_align_title(grids, pooled, aligned), fontsize=10)
    top[2].set_title(_deform_title(gamma, shift, offset is not None, offset_source), fontsize=10)
    legends = [
        _pool_legend(geometry),
        _align_legend(top[1], chosen is not None),
        _deform_legend(top[2]),
    ]
    for name, handles in zip(["l0", "l1", "l2"], legends, strict=True):
        _legend(axes[name], handles)
    _context(axes["context"], plane, rois, scale, view, image)
    if chosen is None:
        axes["zoom"].set_axis_off()
    else:
        _bilinear_zoom(axes["zoom"], plane, chosen)
    first = None if offset is None else offset[:1]
    _outputs(axes["outputs"], plane, rois[:1], first, pooled, scale, ratio, gamma, aligned)
    source = f" ({offset_source})" if offset_source else ""
    fig.suptitle(
        "The same box, three ways. RoI Pool snaps the box and its bins to whole cells and takes "
        "the maximum of each bin;\nRoI Align averages bilinear samples of the exact bins; "
        f"Deformable RoI Pool does the same after shifting every bin by its own offset{source}",
        fontsize=13,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Inputs


def _inputs(features, boxes, channel):
    """(H, W) map and (K, 5) boxes on image 0, both in the compute dtype of the map."""
    if isinstance(features, tuple) and all(isinstance(v, (int, np.integer)) for v in features):
        plane = _pattern(*_validate.input_shape((1, 1, *features), "features shape")[2:])
    else:
        plane = _plane(np.asarray(features), channel)
    plane = plane.astype(_validate.compute_dtype(plane.dtype), copy=False)
    coords = _validate.host_boxes(boxes, 1.0)[:, -4:].astype(plane.dtype)  # map cells
    if not len(coords):
        raise ValueError("boxes is empty: there is nothing to draw")
    return plane, np.column_stack([np.zeros(len(coords), plane.dtype), coords])


def _plane(x, channel):
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"features must be float16, float32 or float64; got {x.dtype}")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3:
        if not 0 <= channel < x.shape[0]:
            raise IndexError(f"channel {channel} is outside the {x.shape[0]} channels")
        x = x[channel]
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(
            "features must be an (H, W), (C, H, W) or (1, C, H, W) array or a shape (H, W); "
            f"got an array of shape {x.shape}"
        )
    return x


def _pattern(h, w):
    """A smooth map with bumps, for drawings from a shape alone."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return np.sin(0.9 * xx) * np.cos(0.7 * yy) + 0.3 * np.sin(0.25 * (xx + yy))


def _visible(plane):
    """Magnitudes above this are non-zero as a reader sees it.

    0.1% of the largest finite magnitude: rounding leaves dust of about 1e-8 where a map is
    empty (the demo's sky), and a sample there shows only zeros to two decimals.
    """
    finite = np.abs(plane[np.isfinite(plane)])
    return 1e-3 * float(finite.max()) if finite.size else 0.0


def _offset(offset, k, pooled, dtype):
    return None if offset is None else _validate.offset(np, np.asarray(offset), k, pooled, dtype)


# ---------------------------------------------------------------------------------------------
# Geometry, from the ops' own code


class _Pool(NamedTuple):
    """RoI Pool of every box: exact box, clipped bins, quantized region, max cells."""

    exact: np.ndarray  # (K, 4) x0, y0, x1, y1 in feature coordinates
    rows: tuple  # (h0, h1), each (K, PH): cells [h0, h1) of every bin row
    cols: tuple  # (w0, w1), each (K, PW)
    region: np.ndarray  # (K, 4): union of the non-empty bins, NaN if all are empty
    argmax: np.ndarray  # (K, PH, PW) flat cell index, -1 for an empty bin
    edges: tuple  # (y, x), (K, PH + 1) and (K, PW + 1): the rounded box cut into equal bins


def _pool_geometry(plane, rois, pooled, scale):
    from cuproi._cpu import _geometry

    h, w = plane.shape
    h0, h1, w0, w1 = _geometry.pool_bins(rois, scale, *pooled, h, w)
    # The bins before floor and ceil, in pool_bins' arithmetic: bin p spans [p, p + 1) times the
    # bin size from the rounded start, and reads every cell it touches.
    ct = rois.dtype.type
    first = _geometry.c_round(rois[:, 1:3] * ct(scale))
    last = _geometry.c_round(rois[:, 3:5] * ct(scale))
    size = np.maximum(last - first + 1, 1) / np.array(pooled[::-1], ct)
    edges = tuple(
        (np.arange(n + 1, dtype=ct) * size[:, a, None]).astype(np.float64) + first[:, a, None]
        for a, n in ((1, pooled[0]), (0, pooled[1]))
    )
    _, argmax = cuproi.roi_pool(plane[None, None], rois, pooled, scale, return_argmax=True)
    full = ((h1 > h0)[:, :, None] & (w1 > w0)[:, None, :]).any((1, 2))
    region = np.column_stack([w0.min(1), h0.min(1), w1.max(1), h1.max(1)]).astype(float)
    region[~full] = np.nan
    exact = rois[:, 1:].astype(np.float64) * scale
    return _Pool(exact, (h0, h1), (w0, w1), region, argmax[:, 0], edges)


class _Samples(NamedTuple):
    """Bins and samples of one box, in the ops' index coordinates (see the module notes)."""

    bin_y: np.ndarray  # (PH, PW) start of every bin
    bin_x: np.ndarray
    size_y: np.ndarray  # (PH, PW) bin size
    size_x: np.ndarray
    y: np.ndarray  # (PH, PW, gh, 1) sample rows
    x: np.ndarray  # (PH, PW, 1, gw) sample columns


def _sample_grids(rois, pooled, scale, ratio, aligned=None, offset=None, gamma=0.1):
    """Bins and samples of every box: RoI Align's if ``aligned`` is given, else mmcv's."""
    from cuproi._cpu import _geometry, _sampling

    if aligned is None:
        grid = _geometry.deform_grid(rois, scale, *pooled, ratio)
    else:
        grid = _geometry.roi_align_grid(rois, scale, *pooled, ratio, aligned)
    bins = _geometry.bin_axes(grid, offset, pooled, gamma)
    (start_y, size_y, grid_h), (start_x, size_x, grid_w) = bins
    boxes = []
    for k in range(len(rois)):
        rows, cols = np.arange(max(grid_h[k, 0, 0], 0)), np.arange(max(grid_w[k, 0, 0], 0))
        y = _sampling.sample_positions(
            start_y[k][..., None], size_y[k][..., None], grid_h[k][..., None], rows
        )
        x = _sampling.sample_positions(
            start_x[k][..., None], size_x[k][..., None], grid_w[k][..., None], cols
        )
        boxes.append(
            _Samples(start_y[k], start_x[k], size_y[k], size_x[k], y[..., None], x[:, :, None])
        )
    return boxes


def _counted(s, shape):
    """(PH, PW, gh, gw) mask of the samples the op adds (the others add zero)."""
    from cuproi._cpu import _sampling

    return _sampling.in_range(s.y, shape[0]) & _sampling.in_range(s.x, shape[1])


class _Chosen(NamedTuple):
    """One RoI Align sample: its position (index coordinates) and its bilinear taps."""

    label: tuple  # (box, ph, pw, i, j)
    y: float
    x: float
    taps: list  # [(row, col, weight)], one per distinct neighbour; empty if the sample adds 0


def _chosen(grids, plane, pooled, sample):
    """The sample ``(box, ph, pw, i, j)`` and its neighbours, by the ops' range and edge rules."""
    from cuproi._cpu import _sampling

    sample = tuple(sample)
    k, ph, pw, i, j = _pick(grids, plane, sample) if None in sample else sample
    try:
        if min(k, ph, pw, i, j) < 0:
            raise IndexError
        y, x = grids[k].y[ph, pw, i, 0], grids[k].x[ph, pw, 0, j]
    except IndexError:
        grid = (grids[0].y.shape[2], grids[0].x.shape[3]) if grids else (0, 0)
        raise IndexError(
            f"sample {tuple(sample)} is outside the grid: {len(grids)} boxes, {pooled} bins, "
            f"{grid} samples per bin"
        ) from None
    taps = {}
    if _sampling.in_range(y, plane.shape[0]) and _sampling.in_range(x, plane.shape[1]):
        low_y, high_y, fy, _ = _sampling.edge_taps(np.asarray(y), plane.shape[0])
        low_x, high_x, fx, _ = _sampling.edge_taps(np.asarray(x), plane.shape[1])
        for row, wy in ((low_y, 1 - fy), (high_y, fy)):
            for col, wx in ((low_x, 1 - fx), (high_x, fx)):
                key = (int(row), int(col))  # at the edge two taps can be one cell
                taps[key] = taps.get(key, 0.0) + float(wy * wx)
    taps = [(row, col, weight) for (row, col), weight in taps.items()]
    return _Chosen((k, ph, pw, i, j), float(y), float(x), taps)


def _pick(grids, plane, sample):
    """``sample`` with its None entries filled, nearest the box centre on a non-zero part.

    The candidates are the samples whose four neighbours are non-zero, else those with a
    non-zero neighbour, else all; among them, the one nearest the centre of its box. The middle
    of a box can lie on an empty part of the map (sky: zero features), where the zoom would
    show a sum of zeros. Given entries that match no sample are kept (the caller reports
    them); None entries then become 0.
    """
    from cuproi._cpu import _sampling

    best, label = None, tuple(0 if v is None else v for v in sample)
    floor = _visible(plane)
    for k, g in enumerate(grids):
        if sample[0] is not None and k != sample[0]:
            continue
        y, x = (a.astype(np.float64) for a in np.broadcast_arrays(g.y, g.x))  # (PH, PW, gh, gw)
        index = np.indices(y.shape).reshape(4, -1)
        keep = np.ones(y.size, bool)
        for given, axis in zip(sample[1:], index, strict=True):
            if given is not None:
                keep &= axis == given
        if not keep.any():
            continue
        y, x, index = y.ravel()[keep], x.ravel()[keep], index[:, keep]
        counted = _sampling.in_range(y, plane.shape[0]) & _sampling.in_range(x, plane.shape[1])
        low_y, high_y, _, _ = _sampling.edge_taps(np.where(counted, y, 0.0), plane.shape[0])
        low_x, high_x, _, _ = _sampling.edge_taps(np.where(counted, x, 0.0), plane.shape[1])
        values = plane[[low_y, low_y, high_y, high_y], [low_x, high_x, low_x, high_x]]
        read = counted & (np.abs(values) > floor)
        tier = np.where(read.all(0), 0, np.where(read.any(0), 1, 2))
        centre_y = (g.bin_y.min() + (g.bin_y + g.size_y).max()) / 2
        centre_x = (g.bin_x.min() + (g.bin_x + g.size_x).max()) / 2
        distance = np.hypot(y - float(centre_y), x - float(centre_x))
        n = np.lexsort((distance, tier))[0]
        if best is None or (tier[n], distance[n]) < best:
            best, label = (tier[n], distance[n]), (k, *(int(v) for v in index[:, n]))
    return label


# ---------------------------------------------------------------------------------------------
# Layers: each draws one method into an Axes and returns the (x, y) points the view must show


def _pool_layers(ax, plane, rois, pooled, scale):
    """Draw; return the points to show and the geometry (for the legend)."""
    g = _pool_geometry(plane, rois, pooled, scale)
    points = []
    for k in range(len(rois)):
        # The bins as cut, not the cells they read: those overlap by a cell wherever a bin
        # edge falls inside one, and their outlines would draw every cell line of the box.
        ys, xs = g.edges[0][k], g.edges[1][k]
        for p, q in np.ndindex(*pooled):
            cut = (xs[q], ys[p], xs[q + 1], ys[p + 1])
            ax.add_patch(_rect(cut, ec=_POOL_BINS, lw=1.3, gid="bin", zorder=3))
        exact, region = g.exact[k], g.region[k]
        if np.isfinite(region).all():
            _difference(ax, region, exact, _QUANTIZED, "added", hatch=None)
            _difference(ax, exact, region, _EXACT, "lost", hatch="////")
            ax.add_patch(_rect(region, ec=_QUANTIZED, lw=2.2, gid="quantized box", zorder=5))
            points += [region[:2], region[2:]]
        ax.add_patch(_rect(exact, ec=_EXACT, lw=2.2, ls="--", gid="exact box", zorder=6))
        points += [exact[:2], exact[2:]]
    # What one bin reads, so that the overlap (and the stars bins share) can be seen.
    p, q = pooled[0] // 2, pooled[1] // 2
    (h0, h1), (w0, w1) = (a[0] for a in g.rows), (a[0] for a in g.cols)
    if h1[p] > h0[p] and w1[q] > w0[q]:
        cells = (w0[q], h0[p], w1[q], h1[p])
        style = {"fc": _POOL_BINS, "alpha": 0.45, "ec": "none", "gid": "bin cells", "zorder": 2}
        ax.add_patch(_rect(cells, fill=True, **style))
    rows, cols = np.divmod(g.argmax[g.argmax >= 0], plane.shape[1])
    star = {"marker": "*", "s": 90, "c": "gold", "edgecolors": "black", "linewidths": 0.6}
    ax.scatter(cols + 0.5, rows + 0.5, gid="max cells", zorder=7, **star)
    return points, g


def _align_layers(ax, plane, rois, grids, scale, chosen):
    points = _exact_boxes(ax, rois, scale)
    points += _sample_layers(ax, plane, grids, _ALIGN, "bin", "samples", zorder=4)
    if chosen is not None:
        _neighbour_lines(ax, chosen, labels=True)
    return points


def _deform_layers(ax, plane, rois, offset, pooled, scale, ratio, gamma):
    """Draw; return the points to show and the largest bin shift in cells."""
    from matplotlib.colors import to_rgba

    points = _exact_boxes(ax, rois, scale)
    regular = _sample_grids(rois, pooled, scale, ratio)
    shifted = _sample_grids(rois, pooled, scale, ratio, offset=offset, gamma=gamma)
    # The regular bins as a faint grid only (their samples are RoI Align's, drawn beside), the
    # shifted ones as tinted tiles: outlines of both crossing each other read as clutter.
    for g in regular:
        for p, q in np.ndindex(g.bin_y.shape):
            x0, y0 = g.bin_x[p, q] + 0.5, g.bin_y[p, q] + 0.5
            corners = (x0, y0, x0 + g.size_x[p, q], y0 + g.size_y[p, q])
            style = {"ec": _REGULAR, "lw": 0.8, "ls": ":", "gid": "regular bin", "zorder": 3}
            ax.add_patch(_rect(corners, **style))
            points += [corners[:2], corners[2:]]
    tile = {"fc": to_rgba(_DEFORM, 0.13), "lw": 1.0}
    points += _sample_layers(ax, plane, shifted, _DEFORM, "bin", "samples", 4, s=7, tile=tile)
    start = np.concatenate([_centres(s) for s in regular])
    move = np.concatenate([_centres(s) for s in shifted]) - start
    in_data_units = {"angles": "xy", "scale_units": "xy", "scale": 1, "units": "xy"}
    # Shaft and head in cells, so that an arrow is as bold as the bins it moves; none for a
    # bin that does not move (minlength 0).
    shape = {"width": 0.07, "headwidth": 3.5, "headlength": 3.5, "headaxislength": 3.2}
    edge = {"edgecolor": "white", "linewidth": 0.5, "minlength": 0}
    ax.quiver(
        *start.T, *move.T, color="black", gid="offsets", zorder=8, **in_data_units, **shape, **edge
    )
    return points, float(np.hypot(*move.T).max(initial=0.0))


def _exact_boxes(ax, rois, scale):
    exact = rois[:, 1:].astype(np.float64) * scale
    for box in exact:
        ax.add_patch(_rect(box, ec=_EXACT, lw=2.2, ls="--", gid="exact box", zorder=6))
    return [p for box in exact for p in (box[:2], box[2:])]


def _sample_layers(ax, plane, grids, color, bin_gid, sample_gid, zorder, s=14, tile=None):
    """Bins as rectangles (outlines, or tiles styled by ``tile``), samples as dots.

    Samples that add zero are crosses.
    """
    inside, outside, points = [np.zeros((0, 2))], [np.zeros((0, 2))], []
    style = {"ec": color, "lw": 0.9, "gid": bin_gid, "zorder": zorder}
    style.update(tile or {})
    for g in grids:
        for p, q in np.ndindex(g.bin_y.shape):
            x0, y0 = g.bin_x[p, q] + 0.5, g.bin_y[p, q] + 0.5
            corners = (x0, y0, x0 + g.size_x[p, q], y0 + g.size_y[p, q])
            ax.add_patch(_rect(corners, fill=tile is not None, **style))
            points += [corners[:2], corners[2:]]
        y, x = np.broadcast_arrays(g.y, g.x)
        xy = np.column_stack([x.ravel(), y.ravel()]).astype(np.float64) + 0.5
        counted = _counted(g, plane.shape).ravel()
        inside.append(xy[counted])
        outside.append(xy[~counted])
    inside, outside = np.concatenate(inside), np.concatenate(outside)
    dots = {"s": s, "c": color, "zorder": zorder + 1}
    ax.scatter(*inside.T, edgecolors="white", linewidths=0.3, gid=sample_gid, **dots)
    ax.scatter(*outside.T, marker="x", gid=f"{sample_gid} off the map", **dots)
    return points + list(inside) + list(outside)


def _neighbour_lines(ax, chosen, labels, fontsize=7):
    """Lines from the chosen sample to its neighbours, thicker for larger weights."""
    sx, sy = chosen.x + 0.5, chosen.y + 0.5
    for row, col, weight in chosen.taps:
        cx, cy = col + 0.5, row + 0.5
        ax.plot([sx, cx], [sy, cy], color=_CHOSEN, lw=1 + 3 * weight, gid="neighbour", zorder=9)
        if labels:  # outwards from the sample, so the four labels do not overlap
            away = (np.sign(cx - sx) or 1, -(np.sign(cy - sy) or 1))
            frame = {"boxstyle": "round,pad=0.1", "fc": "white", "ec": _CHOSEN, "lw": 0.6}
            ax.annotate(
                f"{weight:.2f}",
                (cx, cy),
                xytext=(9 * away[0], 7 * away[1]),
                bbox=frame,
                textcoords="offset points",
                ha="center",
                va="center",
                fontsize=fontsize,
                gid="weight",
                zorder=10,
            )
    dot = {"s": 60, "c": _CHOSEN, "edgecolors": "black", "linewidths": 0.8}
    ax.scatter([sx], [sy], gid="chosen sample", zorder=11, **dot)


# ---------------------------------------------------------------------------------------------
# Bottom row of the comparison


def _bilinear_zoom(ax, plane, chosen):
    """The chosen sample among the cells around it, with values, weights and their sum."""
    _draw_map(ax, plane)
    h, w = plane.shape
    # 4 x 4 cells: the two rows and columns a sample inside the map reads, and one more around.
    x0, y0 = int(np.floor(chosen.x)) - 1, int(np.floor(chosen.y)) - 1
    ax.set_xlim(x0, x0 + 4)
    ax.set_ylim(y0 + 4, y0)
    ax.set_aspect("equal")
    ax.set_xticks(range(x0, x0 + 5))
    ax.set_yticks(range(y0, y0 + 5))
    weights = {(row, col): weight for row, col, weight in chosen.taps}
    frame = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}
    for row in range(max(y0, 0), min(y0 + 4, h)):
        for col in range(max(x0, 0), min(x0 + 4, w)):
            text = f"f={plane[row, col]:.2f}"
            if (row, col) in weights:
                text += f"\nw={weights[row, col]:.3f}"
                ax.add_patch(_rect((col, row, col + 1, row + 1), ec=_CHOSEN, lw=2, zorder=3))
            ax.text(col + 0.5, row + 0.5, text, ha="center", va="center", fontsize=8, bbox=frame)
    _neighbour_lines(ax, chosen, labels=False)
    k, ph, pw, i, j = chosen.label
    terms = [f"{wt:.3f} × {plane[r, c]:.2f}" for r, c, wt in chosen.taps]
    value = sum(wt * float(plane[r, c]) for r, c, wt in chosen.taps)
    lines = [" + ".join(terms[n : n + 2]) for n in range(0, len(terms), 2)]
    if chosen.taps:
        label = "value = Σ w × f = " + "\n+ ".join(lines) + f" = {value:.3f}"
    else:
        label = "off the map, outside [-1, H] × [-1, W]: the sample adds 0"
    ax.set_title(
        f"RoI Align: bilinear interpolation of one sample\n(box {k}, bin ({ph}, {pw}), "
        f"sample ({i}, {j}) at x={chosen.x + 0.5:.2f}, y={chosen.y + 0.5:.2f})",
        fontsize=10,
    )
    ax.set_xlabel(label, fontsize=9)
    ax.tick_params(labelsize=7)


def _context(ax, plane, rois, scale, view, image):
    """The whole input (image with the feature grid, or the map) with the boxes and the view."""
    h, w = plane.shape
    if image is None:
        _draw_map(ax, plane)
        unit, what = 1.0, f"The whole feature map ({h}x{w} cells)"
    else:
        image = np.asarray(image)
        ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), cmap="gray")
        unit, what = 1 / scale, f"The input image ({image.shape[0]}x{image.shape[1]} px)"
        for x in np.arange(0, image.shape[1] + 1e-9, unit):
            ax.axvline(x, color="white", lw=0.3, alpha=0.6)
        for y in np.arange(0, image.shape[0] + 1e-9, unit):
            ax.axhline(y, color="white", lw=0.3, alpha=0.6)
    for box in rois[:, 1:].astype(np.float64) * scale * unit:
        ax.add_patch(_rect(box, ec=_EXACT, lw=1.8, ls="--"))
    (x0, x1), (y1, y0) = view
    ax.add_patch(_rect(np.array([x0, y0, x1, y1]) * unit, ec="black", lw=1, ls=":"))
    grid = f"; lines: the feature grid (stride {unit:g})" if image is not None else ""
    ax.set_title(f"{what} with the boxes{grid};\ndotted: the view above", fontsize=10)
    ax.tick_params(labelsize=7)


def _outputs(ax, plane, rois, offset, pooled, scale, ratio, gamma, aligned):
    """The (PH, PW) outputs of the three ops for the first box, on one colour scale.

    The thumbnails go side by side, stacked, or two by two, whichever draws them largest at
    the output's aspect in the room the figure's layout leaves the panel.
    """
    from matplotlib.colors import Normalize

    x = plane[None, None]
    common = {"output_size": pooled, "spatial_scale": scale, "sampling_ratio": ratio}
    outputs = [
        ("RoI Pool", cuproi.roi_pool(x, rois, pooled, scale)),
        ("RoI Align", cuproi.roi_align(x, rois, aligned=aligned, **common)),
        ("Deformable RoI Pool", cuproi.deform_roi_pool(x, rois, offset, gamma=gamma, **common)),
    ]
    # One norm for the three, so that a shade means the same value in each (the colour bar).
    values = np.stack([out[0, 0] for _, out in outputs]).astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1.0)
    ph, pw = pooled
    ax.set_title(
        f"What the detection head gets: the {ph}x{pw} pooled output of box 0\n"
        "(one grey scale for the three: dark = high)",
        fontsize=10,
    )
    fig = ax.figure
    fig.get_layout_engine().execute(fig)  # the panel's size once titles and labels have room
    room = ax.get_position().size * fig.get_size_inches()
    label, gap, bar = 0.28, 0.2, 0.75  # inches: a name above each, between them, colour bar
    width, height = room[0] - bar, room[1]
    layouts = [(1, 3), (3, 1), (2, 2)]  # (rows, columns)
    inch = [  # inches per cell: the largest thumbnails each layout fits in the room
        min((width - (c - 1) * gap) / (c * pw), (height - r * label - (r - 1) * gap) / (r * ph))
        for r, c in layouts
    ]
    # A row or a column compares best: two by two only where it is clearly larger.
    n = int(np.argmax(inch[:2])) if max(inch[:2]) >= inch[2] / 1.25 else 2
    (rows, cols), inch = layouts[n], inch[n]
    step_x, step_y = pw + gap / inch, ph + (label + gap) / inch  # in cells
    for n, name in enumerate(name for name, _ in outputs):
        left, top = (n % cols) * step_x, (n // cols) * step_y + label / inch
        extent = (left, left + pw, top + ph, top)
        image = ax.imshow(values[n], extent=extent, norm=norm, **_GREYS)
        # A frame: the output's zeros are white, and without it its edge would not show.
        ax.add_patch(_rect((left, top, left + pw, top + ph), ec="#888888", lw=0.6))
        ax.text(left + pw / 2, top - 0.08 / inch, name, ha="center", va="bottom", fontsize=9)
    right, bottom = cols * step_x - gap / inch, rows * step_y - gap / inch
    # The colour bar beside the thumbnails, as tall as they are (an inset placed in cells).
    cax = ax.inset_axes(
        [right + 0.15 / inch, label / inch, 0.15 / inch, bottom - label / inch],
        transform=ax.transData,
    )
    fig.colorbar(image, cax=cax).set_label("pooled value", fontsize=8)
    cax.tick_params(labelsize=7)
    margin = 0.03 / inch  # so that the frames' outer half is not clipped
    ax.set_xlim(-margin, right + bar / inch)
    ax.set_ylim(bottom + margin, -margin)
    ax.set_aspect("equal")
    ax.set_axis_off()


# ---------------------------------------------------------------------------------------------
# Drawing helpers


def _figure(ax, zoom=False):
    """(figure, main Axes, legend Axes, zoom Axes): ``ax`` alone if given, else new ones."""
    if ax is not None:
        return ax.figure, ax, None, None
    from matplotlib.figure import Figure

    if zoom:
        fig = Figure(figsize=(11.5, 8), layout="constrained")
        axes = fig.subplot_mosaic(
            [["main", "zoom"], ["legend", "."]], width_ratios=[2, 1], height_ratios=[1, 0.16]
        )
        return fig, axes["main"], axes["legend"], axes["zoom"]
    fig = Figure(figsize=(7.5, 8), layout="constrained")
    main, legend = fig.subplots(2, 1, height_ratios=[1, 0.16])
    return fig, main, legend, None


def _fit(main, legend, view):
    """Size a figure made by _figure to the shape of the view (a caller's Axes is left alone)."""
    if legend is None:
        return
    (x0, x1), (y1, y0) = view
    panel = float(np.clip(6.2 * (y1 - y0) / (x1 - x0), 2.5, 10.0)) + 1.5  # + titles, labels
    main.figure.set_size_inches(main.figure.get_size_inches()[0], panel + 1.0)
    main.get_gridspec().set_height_ratios([panel, 1.0])


def _draw_map(ax, plane):
    h, w = plane.shape
    finite = plane[np.isfinite(plane)]
    low, high = (finite.min(), finite.max()) if finite.size else (0, 1)
    # Lightened (the top 40% of the grey scale unused) so that the drawings on it stand out.
    limits = {"vmin": low, "vmax": high + 0.6 * (high - low)}
    ax.imshow(plane.astype(np.float64), extent=(0, w, h, 0), zorder=0, **limits, **_GREYS)


def _rect(xyxy, fill=False, **style):
    """A Rectangle from its corners (x0, y0, x1, y1)."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=fill, **style)


def _difference(ax, a, b, color, gid, hatch):
    """Fill the part of rectangle ``a`` outside rectangle ``b`` (at most four rectangles)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    x0, x1 = min(max(bx0, ax0), ax1), max(min(bx1, ax1), ax0)  # b's columns within a
    pieces = [
        (ax0, ay0, x0, ay1),  # left of b
        (x1, ay0, ax1, ay1),  # right of b
        (x0, ay0, x1, min(max(by0, ay0), ay1)),  # above b
        (x0, max(min(by1, ay1), ay0), x1, ay1),  # below b
    ]
    style = {"fc": color, "alpha": 0.28, "ec": "none", "hatch": hatch, "gid": gid, "zorder": 2}
    for px0, py0, px1, py1 in pieces:
        if px1 > px0 and py1 > py0:
            ax.add_patch(_rect((px0, py0, px1, py1), fill=True, **style))


def _centres(s):
    """(PH * PW, 2) bin centres (x, y) in drawing coordinates."""
    x = s.bin_x + s.size_x / 2 + 0.5
    y = s.bin_y + s.size_y / 2 + 0.5
    return np.column_stack([x.ravel(), y.ravel()]).astype(np.float64)


def _view(points, plane):
    """((x0, x1), (y1, y0)): the boxes and samples with a margin (y pointing down)."""
    pts = [p for p in points if np.isfinite(p).all()] or [(0, 0), plane.shape[::-1]]
    lo, hi = np.min(pts, 0), np.max(pts, 0)
    margin = max(0.1 * (hi - lo).max(), 1.0)
    return (lo[0] - margin, hi[0] + margin), (hi[1] + margin, lo[1] - margin)


def _frame(ax, plane, view, scale):
    """Limits, cell grid, axes in cells (bottom, left) and input pixels (top)."""
    from matplotlib.ticker import MaxNLocator

    (x0, x1), (y1, y0) = view
    h, w = plane.shape
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    if max(x1 - x0, y1 - y0) <= 80:  # cell boundaries, unless they would turn the map grey
        ax.set_xticks(np.arange(max(np.ceil(x0), 0), min(x1, w) + 1), minor=True)
        ax.set_yticks(np.arange(max(np.ceil(y0), 0), min(y1, h) + 1), minor=True)
        ax.grid(which="minor", color="#bbbbbb", lw=0.4)
        ax.tick_params(which="minor", length=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("x (feature cells)")
    ax.set_ylabel("y (feature cells)")
    top = ax.secondary_xaxis("top", functions=(lambda c: c / scale, lambda p: p * scale))
    top.set_xlabel("x (input pixels)", fontsize=8)
    top.tick_params(labelsize=7)


def _legend(ax, handles):
    """The legend: in a legend-only Axes, or below a main Axes."""
    if ax.has_data():
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.08),
            ncol=2,
            fontsize=8,
            frameon=False,
        )
        return
    ax.set_axis_off()
    ax.legend(handles=handles, loc="upper center", ncol=2, fontsize=8.5, frameon=False)


def _handles(*entries):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(label=label, **style) if kind == "patch" else Line2D([], [], label=label, **style)
        for kind, label, style in entries
    ]


def _box_entry(label="exact box (x spatial_scale)"):
    return ("patch", label, {"fill": False, "ec": _EXACT, "lw": 2, "ls": "--"})


def _marker(face, edge, marker="o", size=6):
    return {"ls": "none", "marker": marker, "mfc": face, "mec": edge, "ms": size}


def _pool_legend(geometry):
    argmax = geometry.argmax
    bins, empty = argmax.size, int((argmax < 0).sum())
    stars = len(np.unique(argmax[argmax >= 0]))
    ph, pw = argmax.shape[1:]
    shared = f"{stars} stars for {bins - empty} bins:\nbins sharing a cell share a star"
    if empty:
        shared += f"; {empty} empty\nbins have none"
    return _handles(
        _box_entry(),
        (
            "patch",
            "quantized box: cells RoI Pool reads",
            {"fill": False, "ec": _QUANTIZED, "lw": 2},
        ),
        (
            "patch",
            f"{ph}x{pw} bins: the quantized box cut evenly",
            {"fill": False, "ec": _POOL_BINS},
        ),
        (
            "patch",
            "cells the middle bin reads: all it touches",
            {"fc": _POOL_BINS, "alpha": 0.45},
        ),
        ("line", f"max of each bin (argmax),\n{shared}", _marker("gold", "black", "*", 11)),
        ("patch", "area added by rounding", {"fc": _QUANTIZED, "alpha": 0.28}),
        ("patch", "area lost by rounding", {"fc": _EXACT, "alpha": 0.28, "hatch": "////"}),
    )


def _drawn(ax, gid):
    """How many points the scatter ``gid`` of ``ax`` has: legends list only what is drawn."""
    return sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == gid)


def _align_legend(ax, chosen):
    entries = [
        _box_entry(),
        ("patch", "exact bins, no rounding", {"fill": False, "ec": _ALIGN}),
        ("line", "bilinear samples (averaged)", _marker(_ALIGN, "white")),
    ]
    if _drawn(ax, "samples off the map"):
        entries.append(("line", "sample off the map (adds 0)", _marker(_ALIGN, _ALIGN, "x")))
    if chosen:
        entries.append(
            (
                "line",
                "one sample and its 4 neighbours",
                _marker(_CHOSEN, "black", size=8),
            )
        )
    return _handles(*entries)


def _deform_legend(ax):
    entries = [
        _box_entry(),
        ("patch", "regular bins (offset 0)", {"fill": False, "ec": _REGULAR, "ls": ":"}),
        ("patch", "bins shifted by the offsets", {"fc": _DEFORM, "alpha": 0.25, "ec": _DEFORM}),
        ("line", "shifted samples (averaged)", _marker(_DEFORM, "white")),
    ]
    if _drawn(ax, "samples off the map"):
        entries.append(("line", "sample off the map (adds 0)", _marker(_DEFORM, _DEFORM, "x")))
    entries.append(
        ("line", "shift of each bin", {"color": "black", "lw": 1.5, "marker": ">", "ms": 5})
    )
    return _handles(*entries)


def _pool_title(rois, pooled, scale):
    err = cuproi.quantization_error(rois, scale, pooled)
    return (
        "RoI Pool (Fast R-CNN, 2015)\n"
        f"box edges off by up to {err.box_shift.max():.2f} cells "
        f"({err.box_shift_pixels.max():.0f} px), bin edges by {err.bin_shift.max():.2f}; "
        f"area {100 * err.area_added.max():+.0f}% / {-100 * err.area_lost.max():+.0f}%"
    )


def _align_title(grids, pooled, aligned):
    per_bin = sorted({(g.y.shape[2], g.x.shape[3]) for g in grids})
    samples = ", ".join(f"{gh}x{gw}" for gh, gw in per_bin)
    where = "the exact box" if aligned else "the box shifted by half a cell"
    return (
        "RoI Align (Mask R-CNN, 2017)\n"
        f"{pooled[0]}x{pooled[1]} bins x {samples} bilinear samples on {where}; no rounding"
    )


def _deform_title(gamma, shift, offset, source):
    if not offset:
        return "Deformable RoI Pool (2017)\nno offset given: the bins stay where RoI Align's are"
    source = f"\noffsets: {source}" if source else ""
    return (
        "Deformable RoI Pool (2017)\n"
        f"RoI Align bins shifted by {gamma:g} x box size x offset; largest {shift:.2f} cells"
        f"{source}"
    )
