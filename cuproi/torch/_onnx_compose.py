"""ONNX translations of the ops (:data:`TRANSLATIONS`), in standard ONNX operators only.

Imported by :func:`cuproi.torch._onnx._register` when onnxscript's registry is (this module
imports onnxscript), and by the legacy exporter's symbolic functions (_onnx_legacy). Every
function builds its graph in trace-only mode: Python runs once at export, with the op's static
arguments as Python values, and emits each node by ``op``: onnxscript's opset 18, or the
TorchScript graph of the legacy exporter (:func:`emitting`).

- ``roi_align`` in avg mode: ``RoiAlign`` (onnxruntime's kernel is torchvision's);
- ``roi_pool``: ``MaxRoiPool``, whose bins are torchvision's and cuproi's.

The ops no ONNX operator computes are compositions:

- ``multi_scale_roi_align``: the level of every box by cuproi's rule (its area in float64
  against the float64 thresholds of :func:`cuproi._pyramid.level_rule`), then one ``RoiAlign``
  per level on that level's boxes (``NonZero``, ``GatherND``), scattered back into box order
  (``ScatterND``);
- ``roi_align_rotated``: the sample positions of every bin in the kernels' operation order,
  read by :func:`bilinear` (``Gather`` of four taps with cuproi's border rule), averaged;
- ``deform_roi_pool``: the same on RoI Align's grid with every bin's start shifted by its
  offset, times the mask;
- ``roi_align`` in max mode: the same samples on RoI Align's grid, reduced by ``ReduceMax``;
- ``ps_roi_align``: RoI Align's samples (aligned), each bin read on its own score maps;
- ``ps_roi_pool``: the cells of every quantized bin (``Gather``), averaged, the same way;
- ``prroi_pool``: every pixel a bin reaches times the mean of its hat over the bin's rows and
  that over its columns (the exact integral of the bilinear surface, separable), summed.
"""

import contextlib
from typing import NamedTuple

import numpy as np
import onnx_ir as ir
from onnxscript.onnx_opset import opset18 as op

from cuproi import _pyramid

BOOL = 9
INT32 = 6
INT64 = 7
DOUBLE = 11


@contextlib.contextmanager
def emitting(ops):
    """Translations emit their nodes by ``ops`` (an object with opset 18's operators) within.

    It replaces this module's ``op`` meanwhile: one export at a time, as torch's exporters run.
    """
    global op
    saved, op = op, ops
    try:
        yield
    finally:
        op = saved


def is_float16(value):
    """Whether ``value``, an onnxscript or a TorchScript graph value, holds float16."""
    if hasattr(value, "dtype"):
        return value.dtype == ir.DataType.FLOAT16
    return value.type().scalarType() == "Half"  # the legacy exporter's torch._C.Value


def rois_and_indices(rois):
    """ONNX's (K, 4) boxes and (K,) int64 batch indices from (K, 5) boxes."""
    indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64)
    return op.Slice(rois, [1], [5], [1]), indices


def roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """``RoiAlign`` of (K, 5) boxes: cuproi's avg mode (onnxruntime's kernel is torchvision's)."""
    boxes, indices = rois_and_indices(rois)
    if aligned and sampling_ratio <= 0:
        # A flipped side gives no samples (zeros) in cuproi, but a negative sample count, which
        # overflows, in onnxruntime: it is made zero-size, which gives the same zeros there.
        start = op.Slice(boxes, [0], [2], [1])
        boxes = op.Concat(start, op.Max(op.Slice(boxes, [2], [4], [1]), start), axis=1)
    return op.RoiAlign(
        input,
        boxes,
        indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_h,
        output_width=pooled_w,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )


def constant(value, dtype):
    """A constant tensor of ``value`` in numpy ``dtype``."""
    return op.Constant(value=ir.tensor(np.asarray(value, dtype)))


def column(rois, j):
    """Column ``j`` of a (K, M) tensor, as (K,)."""
    return op.Squeeze(op.Slice(rois, [j], [j + 1], [1]), [1])


def box_levels(rois, thresholds):
    """(K,) int64 level of every box: how many of the float64 ``thresholds`` its area reaches.

    The area ``(x2 - x1) * (y2 - y1)`` is computed in float64 from the box coordinates, as the
    backends compute it (cuproi/_cpu/multi_scale_roi_align.py).
    """
    r = op.Cast(rois, to=DOUBLE)
    area = op.Mul(op.Sub(column(r, 3), column(r, 1)), op.Sub(column(r, 4), column(r, 2)))
    reached = [
        op.Cast(op.GreaterOrEqual(area, constant(t, np.float64)), to=INT64) for t in thresholds
    ]
    levels = reached[0]
    for more in reached[1:]:
        levels = op.Add(levels, more)
    return levels


def multi_scale_roi_align(
    features,
    rois,
    pooled_h: int,
    pooled_w: int,
    spatial_scales,
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
):
    """cuproi::multi_scale_roi_align: one ``RoiAlign`` per level on the boxes of that level."""
    count = _pyramid.count_levels(list(features), "features")
    rule = canonical_scale, canonical_level
    scales, thresholds = _pyramid.level_rule(spatial_scales, count, np.float32, *rule)
    options = pooled_h, pooled_w
    if count == 1:
        return roi_align(features[0], rois, *options, scales[0], sampling_ratio, aligned)
    levels = box_levels(rois, thresholds)
    # Zeros of the output's shape (K, C, PH, PW), then each level's rows written in place.
    k, c = op.Shape(rois, start=0, end=1), op.Shape(features[0], start=1, end=2)
    shape = op.Concat(k, c, constant([pooled_h, pooled_w], np.int64), axis=0)
    out = op.Expand(like(0, features[0]), shape)
    for level, (x, scale) in enumerate(zip(features, scales, strict=True)):
        # (K_l, 1) rows of the level
        at = op.Transpose(op.NonZero(op.Equal(levels, level)), perm=[1, 0])
        picked = op.GatherND(rois, at)
        pooled = roi_align(x, picked, *options, scale, sampling_ratio, aligned)
        out = op.ScatterND(out, at, pooled)
    return out


def like(value, reference):
    """The scalar ``value`` in the dtype of ``reference`` (rounded from double, as numpy's)."""
    return op.CastLike(constant(value, np.float64), reference)


def compute_type(input, rois):
    """The boxes in the dtype cuproi computes coordinates in: float32 for float16 features."""
    if is_float16(input):
        return op.Cast(rois, to=ir.DataType.FLOAT)
    return rois


def bin_starts(start, bin_size, pooled):
    """``start + p * bin_size`` for every bin ``p``: (K, P) from (K,) or (K, 1) values."""
    p = op.CastLike(op.Range(0, pooled, 1), start)
    return op.Add(start, op.Mul(p, bin_size))


def sample_offsets(bin_size, grid, count):
    """``((i + 0.5) * bin_size) / grid`` of every sample ``i`` of a bin: (K, G).

    ``bin_size`` and ``grid`` (as a float) are (K, 1); ``count`` is the static or dynamic
    number G of samples laid out (the largest grid). The start of its bin plus this is a
    sample's position in the kernels' operation order (sample_at()), so it rounds as cuproi's.
    """
    i = op.CastLike(op.Range(0, count, 1), bin_size)
    return op.Div(op.Mul(op.Add(i, like(0.5, bin_size)), bin_size), grid)


def axis_samples(start, bin_size, grid, count, pooled):
    """Positions (K, P, G) of the samples of every bin along an axis, from (K,) values."""
    start, bin_size = op.Unsqueeze(start, [1]), op.Unsqueeze(bin_size, [1])
    grid = op.CastLike(op.Unsqueeze(grid, [1]), bin_size)
    starts = op.Unsqueeze(bin_starts(start, bin_size, pooled), [2])
    return op.Add(starts, op.Unsqueeze(sample_offsets(bin_size, grid, count), [1]))


def grid_sizes(bin_h, bin_w, sampling_ratio):
    """Samples per bin of every box, as cuproi's ``samples_per_bin``.

    Returns ``(gh, gw, count, largest)``: the samples along each axis, (K,) int64; the divisor
    ``max(gh * gw, 1)``, (K,) in the bins' dtype; and the largest gh and gw, laid out for every
    box: ints for a fixed ``sampling_ratio``, int64 scalars (at least 1) for the adaptive grid.
    """
    if sampling_ratio > 0:
        gh = gw = op.Expand(constant(sampling_ratio, np.int64), op.Shape(bin_h))
        largest = sampling_ratio, sampling_ratio
    else:
        gh, gw = (op.Cast(op.Ceil(b), to=INT64) for b in (bin_h, bin_w))
        one = constant([1], np.int64)
        largest = tuple(op.ReduceMax(op.Concat(g, one, axis=0), keepdims=0) for g in (gh, gw))
    product = op.Mul(op.CastLike(gh, bin_h), op.CastLike(gw, bin_w))
    return gh, gw, op.Max(product, like(1, bin_h)), largest


class Maps(NamedTuple):
    """Feature maps laid out to be read by cell (:func:`read`).

    Cell (y, x) of image n is row ``(n * H + y) * W + x`` of ``table``, (N * H * W, C), for
    :func:`feature_maps`; ``table`` is that table flattened for :func:`score_maps`, whose
    ``channels`` hold the offsets of the channels one bin position reads in a row. ``height``
    and ``width`` are H and W, ``depth`` is C, as (1,) int64.
    """

    table: object
    height: object
    width: object
    depth: object
    channels: object = None


def feature_maps(input):
    """(N, C, H, W) features as :class:`Maps`: every channel read at once."""
    h, w, c = (op.Shape(input, start=j, end=j + 1) for j in (2, 3, 1))
    rows = op.Transpose(input, perm=[0, 2, 3, 1])
    return Maps(op.Reshape(rows, op.Concat(constant([-1], np.int64), c, axis=0)), h, w, c)


def score_maps(input, pooled_h, pooled_w):
    """Position-sensitive (N, C_out * PH * PW, H, W) score maps as :class:`Maps`.

    Bin position ``b = ph * PW + pw`` reads channels ``c * PH * PW + b``: the offsets
    ``channels`` (0, PH * PW, ...) from ``b`` in a cell's row. (Reading the rows of a table of
    the maps regrouped by bin position would take a ``Reshape`` then a ``Transpose``, which
    torch's legacy exporter fails on with dynamic shapes.)
    """
    maps = feature_maps(input)
    depth = op.Squeeze(maps.depth, [0])
    channels = op.Range(0, depth, pooled_h * pooled_w)
    return maps._replace(table=op.Reshape(maps.table, [-1]), channels=channels)


def bin_positions(pooled_h, pooled_w):
    """(PH, 1, PW, 1) position ``ph * PW + pw`` of every bin in :func:`score_maps`."""
    at = np.arange(pooled_h)[:, None] * pooled_w + np.arange(pooled_w)
    return constant(at.reshape(pooled_h, 1, pooled_w, 1), np.int64)


def images(batch):
    """(K, 1, 1, 1, 1) int64 image of every box from its float ``batch`` index (K,)."""
    return op.Unsqueeze(op.Cast(batch, to=INT64), [1, 2, 3, 4])


def read(maps, image, y, x, bin=None):
    """Values (..., C) of cells (``y``, ``x``) of ``image`` (int64, broadcast together).

    With :func:`score_maps`, (..., C_out): the channels of bin position ``bin`` (broadcast).
    """
    cells = op.Add(op.Mul(op.Add(op.Mul(image, maps.height), y), maps.width), x)
    if maps.channels is None:
        return op.Gather(maps.table, cells, axis=0)
    at = op.Add(op.Mul(cells, maps.depth), bin)
    return op.Gather(maps.table, op.Add(op.Unsqueeze(at, [-1]), maps.channels), axis=0)


def bilinear(maps, image, y, x, every_tap=False, bin=None):
    """Values (..., C) of the samples at ``y``, ``x`` (any shape) of ``image`` (same).

    ``maps`` is :func:`feature_maps`, or :func:`score_maps` read at bin position ``bin``.
    cuproi's rule: a sample outside ``[-1, H] x [-1, W]`` (or NaN) is 0; in the bands below 0
    and past the last cell it takes the edge value (its position clamped). ``Where`` keeps the
    out-of-range samples out, so they add nothing even where the features are not finite. A
    tap of weight 0 adds nothing either (the CPU backend's sparse operators hold no such
    entry), unless ``every_tap`` (max mode, whose samples multiply all four taps): this only
    matters where the features are not finite.
    """
    h, w = maps.height, maps.width
    fh, fw = op.CastLike(h, y), op.CastLike(w, x)
    inside = op.And(
        op.And(op.GreaterOrEqual(y, like(-1, y)), op.LessOrEqual(y, fh)),
        op.And(op.GreaterOrEqual(x, like(-1, x)), op.LessOrEqual(x, fw)),
    )

    def taps(pos, size, fsize):
        """Low and high cells (int64) and the fraction, as cuproi's edge_taps."""
        pos = op.Where(inside, op.Max(pos, like(0, pos)), like(0, pos))
        low = op.Cast(op.Floor(pos), to=INT64)
        last = op.Sub(size, constant(1, np.int64))
        top = op.GreaterOrEqual(low, last)
        high = op.Where(top, last, op.Add(low, constant(1, np.int64)))
        low = op.Where(top, last, low)
        frac = op.Where(top, like(0, pos), op.Sub(pos, op.CastLike(low, pos)))
        return low, high, frac

    y0, y1, ly = taps(y, h, fh)
    x0, x1, lx = taps(x, w, fw)
    hy, hx = op.Sub(like(1, ly), ly), op.Sub(like(1, lx), lx)

    def tap(yi, xi, weight):
        values = read(maps, image, yi, xi, bin)
        weight = op.CastLike(op.Unsqueeze(weight, [-1]), values)
        product = op.Mul(weight, values)
        if every_tap:
            return product
        return op.Where(op.Equal(weight, like(0, weight)), like(0, weight), product)

    value = op.Add(
        op.Add(tap(y0, x0, op.Mul(hy, hx)), tap(y0, x1, op.Mul(hy, lx))),
        op.Add(tap(y1, x0, op.Mul(ly, hx)), tap(y1, x1, op.Mul(ly, lx))),
    )
    return op.Where(op.Unsqueeze(inside, [-1]), value, op.CastLike(like(0, y), value))


def rotation(angle, clockwise):
    """(cos, sin) of ``angle`` degrees in double, rounded to the angle's dtype (cuproi's rule).

    As cuproi/_cpu/roi_align_rotated.py's ``rotation``: the angle reduced to [-45, 45] degrees
    about the nearest multiple of 90 (exact quarter turns), cos and sin turned by the quarters.
    """
    a = op.Cast(angle, to=DOUBLE)
    if clockwise:
        a = op.Neg(a)
    a = op.Mod(a, constant(360.0, np.float64), fmod=1)
    q = op.Floor(op.Add(op.Div(a, constant(90.0, np.float64)), constant(0.5, np.float64)))
    r = op.Mul(op.Sub(a, op.Mul(constant(90.0, np.float64), q)), constant(np.pi / 180, np.float64))
    c, s = op.Cos(r), op.Sin(r)
    four = constant(4.0, np.float64)
    quarter = op.Sub(q, op.Mul(four, op.Floor(op.Div(q, four))))  # q mod 4, exact

    def choose(*values):
        out = values[3]
        for turn in (2, 1, 0):
            out = op.Where(op.Equal(quarter, constant(float(turn), np.float64)), values[turn], out)
        return op.CastLike(out, angle)

    return choose(c, op.Neg(s), op.Neg(c), s), choose(s, c, op.Neg(s), op.Neg(c))


def bin_sums(values, valid):
    """(K, PH, PW, C) sums of the samples ``values`` (K, PH, GH, PW, GW, C) where ``valid``.

    ``Where`` keeps the others out, so they add nothing even where they are not finite.
    """
    if valid is not None:
        zero = op.CastLike(constant(0, np.float64), values)
        values = op.Where(op.Unsqueeze(valid, [-1]), values, zero)
    return op.ReduceSum(values, constant([2, 4], np.int64), keepdims=0)


def pooled_average(values, valid, count):
    """(K, C, PH, PW) averages of the samples ``values`` (K, PH, GH, PW, GW, C)."""
    total = bin_sums(values, valid)
    mean = op.Div(total, op.CastLike(op.Unsqueeze(count, [1, 2, 3]), total))
    return op.Transpose(mean, perm=[0, 3, 1, 2])


def laid_out(grid, largest):
    """(K, G) mask of the samples ``i < grid`` of the largest grid ``largest`` laid out."""
    return op.Less(op.Range(0, largest, 1), op.Unsqueeze(grid, [1]))


def roi_align_rotated(
    input,
    rois,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clockwise: bool,
):
    """cuproi::roi_align_rotated: rotated sample grids, read by :func:`bilinear`, averaged."""
    r = compute_type(input, rois)
    box = [column(r, j) for j in range(6)]
    scale = like(spatial_scale, r)
    shift = like(0.5 if aligned else 0.0, r)
    center_x, center_y = (op.Sub(op.Mul(v, scale), shift) for v in box[1:3])
    width, height = (op.Mul(v, scale) for v in box[3:5])
    if not aligned:  # mmcv's legacy minimum size
        width, height = op.Max(width, like(1, r)), op.Max(height, like(1, r))
    bin_h, bin_w = op.Div(height, like(pooled_h, r)), op.Div(width, like(pooled_w, r))
    gh, gw, count, (most_h, most_w) = grid_sizes(bin_h, bin_w, sampling_ratio)
    start_y, start_x = op.Mul(like(-0.5, r), height), op.Mul(like(-0.5, r), width)
    yy = axis_samples(start_y, bin_h, gh, most_h, pooled_h)  # (K, PH, GH)
    xx = axis_samples(start_x, bin_w, gw, most_w, pooled_w)  # (K, PW, GW)
    yy, xx = op.Unsqueeze(yy, [3, 4]), op.Unsqueeze(xx, [1, 2])
    cos_t, sin_t = (op.Unsqueeze(v, [1, 2, 3, 4]) for v in rotation(box[5], clockwise))
    cy, cx = (op.Unsqueeze(v, [1, 2, 3, 4]) for v in (center_y, center_x))
    y = op.Add(op.Sub(op.Mul(yy, cos_t), op.Mul(xx, sin_t)), cy)  # (K, PH, GH, PW, GW)
    x = op.Add(op.Add(op.Mul(yy, sin_t), op.Mul(xx, cos_t)), cx)
    values = bilinear(feature_maps(input), images(box[0]), y, x)
    valid = None
    if sampling_ratio <= 0:  # the adaptive grid: only the samples of each box's own grid
        valid = op.And(
            op.Unsqueeze(laid_out(gh, most_h), [1, 3, 4]),
            op.Unsqueeze(laid_out(gw, most_w), [1, 2, 3]),
        )
    out = pooled_average(values, valid, count)
    return op.CastLike(out, input)


def align_grid(r, pooled_h, pooled_w, spatial_scale, sampling_ratio, shift, min_one):
    """The RoI Align family's grid of (K, 5) boxes ``r`` (cuproi/_cpu/_geometry.py make_grid).

    Returns ``(start_y, start_x, bin_h, bin_w, height, width)``, (K,) each, and
    :func:`grid_sizes`'s ``(gh, gw, count, largest)``.
    """
    box = [column(r, j) for j in range(5)]
    scale, half = like(spatial_scale, r), like(shift, r)
    start_x, start_y = (op.Sub(op.Mul(v, scale), half) for v in box[1:3])
    width = op.Sub(op.Sub(op.Mul(box[3], scale), half), start_x)
    height = op.Sub(op.Sub(op.Mul(box[4], scale), half), start_y)
    if min_one:  # torchvision's legacy minimum box size
        width, height = op.Max(width, like(1, r)), op.Max(height, like(1, r))
    bin_h, bin_w = op.Div(height, like(pooled_h, r)), op.Div(width, like(pooled_w, r))
    geometry = start_y, start_x, bin_h, bin_w, height, width
    return geometry, grid_sizes(bin_h, bin_w, sampling_ratio)


def adaptive_samples(sampling_ratio, grids):
    """(K, 1, GH, 1, GW) mask of each box's own samples, or None for a fixed grid."""
    if sampling_ratio > 0:
        return None
    gh, gw, _, (most_h, most_w) = grids
    return op.And(
        op.Unsqueeze(laid_out(gh, most_h), [1, 3, 4]),
        op.Unsqueeze(laid_out(gw, most_w), [1, 2, 3]),
    )


def align_positions(r, pooled, spatial_scale, sampling_ratio, aligned, offset=None, gamma=0.0):
    """Sample positions of the RoI Align family: y (K, PH, GH, PW, 1), x (K, PH, 1, PW, GW).

    RoI Align's grid of (K, 5) boxes ``r`` (``aligned``: half-pixel, else at least one cell),
    bin ``(ph, pw)`` starting at the box corner plus ``(gamma * size) * offset[:, :, ph, pw]``
    when there are offsets (in the kernels' order), plus ``ph`` (``pw``) bins. Also returns
    :func:`grid_sizes`'s ``(gh, gw, count, largest)``.
    """
    pooled_h, pooled_w = pooled
    shift = 0.5 if aligned else 0.0
    geometry, grids = align_grid(r, *pooled, spatial_scale, sampling_ratio, shift, not aligned)
    start_y, start_x, bin_h, bin_w, height, width = geometry
    gh, gw, _, (most_h, most_w) = grids
    start_y, start_x = op.Unsqueeze(start_y, [1, 2]), op.Unsqueeze(start_x, [1, 2])
    if offset is not None:  # (K, PH, PW) starts
        shift_x, shift_y = (op.Squeeze(op.Slice(offset, [j], [j + 1], [1]), [1]) for j in (0, 1))
        scale_x, scale_y = (
            op.Unsqueeze(op.Mul(like(gamma, r), s), [1, 2]) for s in (width, height)
        )
        start_x = op.Add(start_x, op.Mul(scale_x, shift_x))
        start_y = op.Add(start_y, op.Mul(scale_y, shift_y))
    ph = op.Unsqueeze(op.CastLike(op.Range(0, pooled_h, 1), r), [1])
    pw = op.CastLike(op.Range(0, pooled_w, 1), r)
    ys = op.Add(start_y, op.Mul(ph, op.Unsqueeze(bin_h, [1, 2])))  # (K, PH, PW) or (K, PH, 1)
    xs = op.Add(start_x, op.Mul(pw, op.Unsqueeze(bin_w, [1, 2])))  # (K, PH, PW) or (K, 1, PW)
    off_y, off_x = (
        sample_offsets(op.Unsqueeze(size, [1]), op.CastLike(op.Unsqueeze(g, [1]), r), most)
        for size, g, most in ((bin_h, gh, most_h), (bin_w, gw, most_w))
    )  # (K, GH) and (K, GW)
    y = op.Add(op.Unsqueeze(ys, [2, 4]), op.Unsqueeze(off_y, [1, 3, 4]))
    x = op.Add(op.Unsqueeze(xs, [2, 4]), op.Unsqueeze(off_x, [1, 2, 3]))
    return y, x, grids


def deform_roi_pool(
    input,
    rois,
    offset,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    mask=None,
):
    """cuproi::deform_roi_pool: aligned RoI Align whose bins start shifted by the offsets."""
    r = compute_type(input, rois)
    o = None if offset is None else op.CastLike(offset, r)
    pooled = pooled_h, pooled_w
    y, x, grids = align_positions(r, pooled, spatial_scale, sampling_ratio, True, o, gamma)
    values = bilinear(feature_maps(input), images(column(r, 0)), y, x)
    out = pooled_average(values, adaptive_samples(sampling_ratio, grids), grids[2])
    if mask is not None:  # modulated (DCNv2): every bin's average times its mask
        out = op.Mul(out, op.CastLike(mask, out))
    if o is not None:  # a bin whose offset is not finite has no place: NaN, as cuproi's
        unplaced = op.Cast(op.Or(op.IsNaN(o), op.IsInf(o)), to=INT64)
        unplaced = op.Cast(op.ReduceMax(unplaced, [1], keepdims=1), to=BOOL)
        out = op.Where(unplaced, op.CastLike(like(np.nan, r), out), out)
    return op.CastLike(out, input)


def roi_align_max(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """cuproi::roi_align in max mode: the largest of each bin's samples (mmcv's max mode).

    An out-of-range sample competes as 0 (:func:`bilinear`), a NaN sample wins, a bin without
    samples (adaptive grid, empty box) is 0, as cuproi's.
    """
    r = compute_type(input, rois)
    pooled = pooled_h, pooled_w
    y, x, grids = align_positions(r, pooled, spatial_scale, sampling_ratio, aligned)
    values = bilinear(feature_maps(input), images(column(r, 0)), y, x, every_tap=True)
    valid = adaptive_samples(sampling_ratio, grids)
    nan = op.IsNaN(values)
    if valid is not None:  # the samples beyond a box's grid do not compete
        valid = op.Unsqueeze(valid, [-1])
        values = op.Where(valid, values, op.CastLike(like(-np.inf, r), values))
        nan = op.And(nan, valid)
    axes = constant([2, 4], np.int64)
    top = op.ReduceMax(values, axes, keepdims=0)  # (K, PH, PW, C)
    nan = op.Cast(op.ReduceMax(op.Cast(nan, to=INT64), axes, keepdims=0), to=BOOL)
    top = op.Where(nan, op.CastLike(like(np.nan, r), top), top)
    if valid is not None:  # a box without samples: zeros
        gh, gw = grids[:2]
        empty = op.Or(
            op.LessOrEqual(gh, constant(0, np.int64)), op.LessOrEqual(gw, constant(0, np.int64))
        )
        top = op.Where(op.Unsqueeze(empty, [1, 2, 3]), op.CastLike(like(0, r), top), top)
    return op.CastLike(op.Transpose(top, perm=[0, 3, 1, 2]), input)


def ps_roi_align(
    input, rois, pooled_h: int, pooled_w: int, spatial_scale: float, sampling_ratio: int
):
    """cuproi::ps_roi_align: RoI Align's samples (aligned, no minimum size), averaged.

    Each bin reads its own score maps (:func:`score_maps`, :func:`bin_positions`).
    """
    r = compute_type(input, rois)
    pooled = pooled_h, pooled_w
    y, x, grids = align_positions(r, pooled, spatial_scale, sampling_ratio, True)
    maps, at = score_maps(input, *pooled), bin_positions(*pooled)
    values = bilinear(maps, images(column(r, 0)), y, x, bin=at)
    out = pooled_average(values, adaptive_samples(sampling_ratio, grids), grids[2])
    return op.CastLike(out, input)


def c_round(v):
    """C's ``round`` (half away from zero; ONNX's ``Round`` is half to even), as _geometry's."""
    a = op.Abs(v)
    r = op.Floor(a)
    r = op.Add(r, op.CastLike(op.GreaterOrEqual(op.Sub(a, r), like(0.5, v)), v))
    return op.Where(op.Less(v, like(0, v)), op.Neg(r), r)


def clamp(v, low, high):
    """``v`` (int64) clamped to ``[low, high]``."""
    return op.Min(op.Max(v, low), high)


def laid_out_cells(lo, count, last):
    """Cells ``lo + i`` (K, P, G) of the largest ``count`` G laid out for every bin, (K, P).

    Returns the cells, clamped to ``[0, last]`` so that every one can be read, and the mask
    of those ``i < count`` of each bin.
    """
    one = constant([1], np.int64)
    largest = op.ReduceMax(op.Concat(op.Reshape(count, [-1]), one, axis=0), keepdims=0)
    i = op.Range(0, largest, 1)
    cells = clamp(op.Add(op.Unsqueeze(lo, [2]), i), constant(0, np.int64), last)
    return cells, op.Less(i, op.Unsqueeze(count, [2]))


def pool_cells(first, last, pooled, size, r):
    """Cells ``[lo, hi)`` (K, P) int64 of every bin along an axis: _geometry's ``pool_bins``.

    ``first`` and ``last`` are the box's rounded edges (K,) int64, ``size`` the axis' (1,)
    int64; the box is ``max(last - first, 1)`` cells (position-sensitive RoI Pool's), its bins'
    edges floored and ceiled in the dtype of ``r``, shifted by ``first`` and clipped to the map.
    """
    length = op.Max(op.Sub(last, first), constant(1, np.int64))
    bin_size = op.Div(op.CastLike(length, r), like(pooled, r))
    edges = op.Mul(op.CastLike(op.Range(0, pooled + 1, 1), r), op.Unsqueeze(bin_size, [1]))
    first, zero = op.Unsqueeze(first, [1]), constant(0, np.int64)
    lo = op.Add(op.Cast(op.Floor(op.Slice(edges, [0], [pooled], [1])), to=INT64), first)
    hi = op.Add(op.Cast(op.Ceil(op.Slice(edges, [1], [pooled + 1], [1])), to=INT64), first)
    lo, hi = clamp(lo, zero, size), clamp(hi, zero, size)
    return lo, op.Max(hi, lo)


def ps_roi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
    """cuproi::ps_roi_pool: the mean of the cells of every quantized bin, an empty one 0.

    Each bin reads its own score maps (:func:`score_maps`, :func:`bin_positions`). Every bin lays
    out the cells of the largest bin (``ReduceMax``, ``Range``) and masks the cells beyond its
    own, as the adaptive grids of :func:`roi_align_rotated`.
    """
    r = compute_type(input, rois)
    maps = score_maps(input, pooled_h, pooled_w)
    edges = [op.Cast(c_round(op.Mul(column(r, j), like(spatial_scale, r))), to=INT64)
             for j in range(1, 5)]  # fmt: skip
    h0, h1 = pool_cells(edges[1], edges[3], pooled_h, maps.height, r)
    w0, w1 = pool_cells(edges[0], edges[2], pooled_w, maps.width, r)
    one = constant(1, np.int64)
    rows, cols = op.Sub(h1, h0), op.Sub(w1, w0)
    ys, y_valid = laid_out_cells(h0, rows, op.Sub(maps.height, one))  # (K, PH, GH)
    xs, x_valid = laid_out_cells(w0, cols, op.Sub(maps.width, one))  # (K, PW, GW)
    ys, xs = op.Unsqueeze(ys, [3, 4]), op.Unsqueeze(xs, [1, 2])
    values = read(maps, images(column(r, 0)), ys, xs, bin_positions(pooled_h, pooled_w))
    valid = op.And(op.Unsqueeze(y_valid, [3, 4]), op.Unsqueeze(x_valid, [1, 2]))
    total = bin_sums(op.CastLike(values, r), valid)  # (K, PH, PW, C_out)
    count = op.Max(op.Mul(op.Unsqueeze(rows, [2]), op.Unsqueeze(cols, [1])), one)
    mean = op.Div(total, op.CastLike(op.Unsqueeze(count, [3]), total))
    return op.CastLike(op.Transpose(mean, perm=[0, 3, 1, 2]), input)


def hat_mean(t, z):
    """The mean of ``hat(u) = max(1 - |u|, 0)`` over ``[t, t + z]`` (``z > 0``), elementwise.

    The operations of _cpu/prroi_pool.py's ``hat_share`` (kernels/prroi_pool.cu): all of one
    piece of ``hat`` in closed form, else the fractions of ``[t, t + z]`` on the rising and
    the falling piece times the means there.
    """
    one, half = like(1, t), like(0.5, t)
    e = op.Add(t, z)
    l1, r1 = op.Max(t, like(-1, t)), op.Min(e, like(0, t))
    l2, r2 = op.Max(t, like(0, t)), op.Min(e, one)
    f1 = op.Div(op.Max(op.Sub(r1, l1), like(0, t)), z)
    f2 = op.Div(op.Max(op.Sub(r2, l2), like(0, t)), z)
    mixed = op.Add(
        op.Mul(f1, op.Add(one, op.Mul(half, op.Add(l1, r1)))),
        op.Mul(f2, op.Sub(one, op.Mul(half, op.Add(l2, r2)))),
    )
    rising = op.And(op.GreaterOrEqual(t, like(-1, t)), op.LessOrEqual(e, like(0, t)))
    falling = op.And(op.GreaterOrEqual(t, like(0, t)), op.LessOrEqual(e, one))
    outside = op.Or(op.LessOrEqual(e, like(-1, t)), op.GreaterOrEqual(t, one))
    weight = op.Where(outside, like(0, t), mixed)
    weight = op.Where(falling, op.Sub(op.Sub(one, t), op.Mul(half, z)), weight)
    return op.Where(rising, op.Add(op.Add(t, one), op.Mul(half, z)), weight)


def integral_taps(a, b, spatial_scale, pooled, size):
    """Pixels (K, P, G) that every bin's integral reads along an axis, their weights and mask.

    As _cpu/prroi_pool.py's ``_axes`` and ``_taps``: the bins of the box edges ``a``, ``b``
    (K,), of size ``max(b * s - a * s, 0) / P``; a bin reads the pixels ``floor(start)`` to
    ``ceil(end)`` clipped to the map (every one, whatever its weight), none when it has no
    size or lies beyond ``[-1, size]``; a pixel's weight is the mean of its hat over the bin.
    """
    scale = like(spatial_scale, a)
    begin = op.Mul(a, scale)
    extent = op.Sub(op.Mul(b, scale), begin)
    bin_size = op.Unsqueeze(op.Div(op.Max(extent, like(0, a)), like(pooled, a)), [1])
    start = bin_starts(op.Unsqueeze(begin, [1]), bin_size, pooled)  # (K, P)
    end = op.Add(start, bin_size)
    fsize = op.CastLike(size, a)
    valid = op.And(
        op.Greater(bin_size, like(0, a)),
        op.And(op.Greater(end, like(-1, a)), op.Less(start, fsize)),
    )
    top = op.Sub(fsize, like(1, a))
    lo, hi = (
        op.Cast(op.Min(op.Max(edge, like(0, a)), top), to=INT64)
        for edge in (op.Floor(start), op.Ceil(end))
    )
    one = constant(1, np.int64)
    count = op.Where(valid, op.Add(op.Sub(hi, lo), one), constant(0, np.int64))
    pixels, mask = laid_out_cells(op.Where(valid, lo, constant(0, np.int64)), count, op.Sub(
        size, one
    ))  # fmt: skip
    t = op.Sub(op.Unsqueeze(start, [2]), op.CastLike(pixels, a))
    return pixels, hat_mean(t, op.Unsqueeze(bin_size, [2])), mask


def prroi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
    """cuproi::prroi_pool: the exact integral of the bilinear surface over every bin / its area.

    Separable: the weight of pixel (h, w) in a bin is the mean of its hat over the bin's rows
    times that over its columns (:func:`hat_mean`); every bin lays out the pixels of the
    widest bin along each axis and masks those beyond its own. A bin without area is 0.
    """
    r = compute_type(input, rois)
    maps = feature_maps(input)
    ys, wy, y_valid = integral_taps(column(r, 2), column(r, 4), spatial_scale, pooled_h,
                                    maps.height)  # fmt: skip
    xs, wx, x_valid = integral_taps(column(r, 1), column(r, 3), spatial_scale, pooled_w,
                                    maps.width)  # fmt: skip
    ys, wy, y_valid = (op.Unsqueeze(v, [3, 4]) for v in (ys, wy, y_valid))  # (K, PH, GY, 1, 1)
    xs, wx, x_valid = (op.Unsqueeze(v, [1, 2]) for v in (xs, wx, x_valid))  # (K, 1, 1, PW, GX)
    values = op.CastLike(read(maps, images(column(r, 0)), ys, xs), r)
    values = op.Mul(op.Unsqueeze(op.Mul(wy, wx), [-1]), values)
    out = op.Transpose(bin_sums(values, op.And(y_valid, x_valid)), perm=[0, 3, 1, 2])
    return op.CastLike(out, input)


def cuproi_roi_align(
    input,
    rois,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str = "avg",
):
    """cuproi::roi_align: ``RoiAlign`` in avg mode, a composition in max mode."""
    options = pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
    if pool_mode == "max":  # ONNX's max mode takes the largest weighted corner: a composition
        return roi_align_max(input, rois, *options)
    return roi_align(input, rois, *options)


def roi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
    """cuproi::roi_pool_inference: ``MaxRoiPool``."""
    pooled = pooled_h, pooled_w
    return op.MaxRoiPool(input, rois, pooled_shape=pooled, spatial_scale=spatial_scale)


def cuproi_roi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
    """cuproi::roi_pool: ``MaxRoiPool``, and zeros for the argmax (the backward's only)."""
    pooled = roi_pool(input, rois, pooled_h, pooled_w, spatial_scale)
    return pooled, op.Cast(op.Mul(pooled, op.CastLike(0, pooled)), to=INT32)


# The translation of every op cuproi::<name>.
TRANSLATIONS = {
    "deform_roi_pool": deform_roi_pool,
    "multi_scale_roi_align": multi_scale_roi_align,
    "prroi_pool": prroi_pool,
    "ps_roi_align": ps_roi_align,
    "ps_roi_pool": ps_roi_pool,
    "roi_align": cuproi_roi_align,
    "roi_align_rotated": roi_align_rotated,
    "roi_pool": cuproi_roi_pool,
    "roi_pool_inference": roi_pool,
}


def register(registration):
    """Register :data:`TRANSLATIONS` in onnxscript's registry ``registration``."""
    for name, translation in TRANSLATIONS.items():
        registration.torch_op(f"cuproi::{name}", trace_only=True)(translation)
