"""ONNX translations of the ops that no ONNX operator computes: compositions of standard ones.

Imported by :func:`cuproi.torch._onnx._register` when onnxscript's registry is (this module
imports onnxscript). Every function builds its graph in trace-only mode: Python runs once at
export, with the op's static arguments as Python values.

- ``multi_scale_roi_align``: the level of every box by cuproi's rule (its area in float64
  against the float64 thresholds of :func:`cuproi._pyramid.level_rule`), then one ``RoiAlign``
  per level on that level's boxes (``NonZero``, ``GatherND``), scattered back into box order
  (``ScatterND``);
- ``roi_align_rotated``: the sample positions of every bin in the kernels' operation order,
  read by :func:`bilinear` (``Gather`` of four taps with cuproi's border rule), averaged;
- ``deform_roi_pool``: the same on RoI Align's grid with every bin's start shifted by its
  offset, times the mask;
- ``roi_align`` in max mode: the same samples on RoI Align's grid, reduced by ``ReduceMax``.
"""

import numpy as np
import onnx_ir as ir
from onnxscript.onnx_opset import opset18 as op

from cuproi import _pyramid

BOOL = 9
INT64 = 7
DOUBLE = 11


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
    out = op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]), shape)
    for level, (x, scale) in enumerate(zip(features, scales, strict=True)):
        at = op.Transpose(op.NonZero(op.Equal(levels, level)))  # (K_l, 1) rows of the level
        picked = op.GatherND(rois, at)
        pooled = roi_align(x, picked, *options, scale, sampling_ratio, aligned)
        out = op.ScatterND(out, at, pooled)
    return out


def like(value, reference):
    """The scalar ``value`` in the dtype of ``reference`` (rounded from double, as numpy's)."""
    return op.CastLike(constant(value, np.float64), reference)


def compute_type(input, rois):
    """The boxes in the dtype cuproi computes coordinates in: float32 for float16 features."""
    if input.dtype == ir.DataType.FLOAT16:
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


def bilinear(input, batch, y, x, every_tap=False):
    """Values (..., C) of the samples at ``y``, ``x`` (any shape) of image ``batch`` (same).

    cuproi's rule: a sample outside ``[-1, H] x [-1, W]`` (or NaN) is 0; in the bands below 0
    and past the last cell it takes the edge value (its position clamped). ``Where`` keeps the
    out-of-range samples out, so they add nothing even where the features are not finite. A
    tap of weight 0 adds nothing either (the CPU backend's sparse operators hold no such
    entry), unless ``every_tap`` (max mode, whose samples multiply all four taps): this only
    matters where the features are not finite.
    """
    shape = op.Shape(input)
    h, w = op.Shape(input, start=2, end=3), op.Shape(input, start=3, end=4)
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
    # The features as rows of a (N * H * W, C) table, read by flat cell index.
    table = op.Reshape(op.Transpose(input, perm=[0, 2, 3, 1]), op.Concat(
        constant([-1], np.int64), op.Slice(shape, [1], [2], [0]), axis=0
    ))  # fmt: skip
    row = op.Mul(op.Cast(batch, to=INT64), h)

    def tap(yi, xi, weight):
        cells = op.Add(op.Mul(op.Add(row, yi), w), xi)
        values = op.Gather(table, cells, axis=0)
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


def pooled_average(values, valid, count):
    """(K, C, PH, PW) averages of the samples ``values`` (K, PH, GH, PW, GW, C)."""
    if valid is not None:
        values = op.Where(op.Unsqueeze(valid, [-1]), values, op.CastLike(like(0, count), values))
    total = op.ReduceSum(values, constant([2, 4], np.int64), keepdims=0)  # (K, PH, PW, C)
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
    values = bilinear(input, op.Unsqueeze(box[0], [1, 2, 3, 4]), y, x)
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
    values = bilinear(input, op.Unsqueeze(column(r, 0), [1, 2, 3, 4]), y, x)
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
    values = bilinear(input, op.Unsqueeze(column(r, 0), [1, 2, 3, 4]), y, x, every_tap=True)
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


def register(registration):
    """Register the translations of this module in onnxscript's registry ``registration``."""
    for translation in (deform_roi_pool, multi_scale_roi_align, roi_align_rotated):
        registration.torch_op(f"cuproi::{translation.__name__}", trace_only=True)(translation)
