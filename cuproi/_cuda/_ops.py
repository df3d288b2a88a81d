"""Kernel launches of every op, written against an array module and a launcher.

Each function allocates its outputs with ``xp``, picks the entry point for the dtype and the
index width, casts every scalar to its exact C type (CuPy passes a Python float as a double
whatever the kernel expects) and calls ``launch(source, entry, n, args)``. The GPU backend binds
``xp`` to CuPy and ``launch`` to a CUDA launch; the tests bind them to NumPy and to the same
sources compiled for the host, so this marshalling is checked on machines without a GPU.

Arrays arrive validated and C-contiguous: features in their dtype, boxes and offsets in the
compute dtype (float32 for float16 and float32 features, float64 for float64). The features of
RoI Align and Deformable RoI Pooling may also be stored channels last (``cuproi._layout``).
"""

import numpy as np

from cuproi import _layout
from cuproi._cuda import _launch

# Arrays of this many elements or more take the _i64 entry points (int32 flat indices overflow).
LARGE = 2**31

_SUFFIX = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


class _Index(int):
    """A scalar argument in the kernel's index type: int32, or int64 in the _i64 variants."""


def _run(launch, op, direction, dtype, items, *args, per_block=False):
    """Launch ``items`` work items of ``op``'s ``direction`` entry point for ``dtype`` features.

    Every kernel takes the item count first, in its index type, as are the ``_Index`` among
    ``args``: int32, or int64 in the _i64 variant. The _i64 variant is taken once any array
    among the arguments reaches LARGE elements, whichever it is (an offset into a buffer of box
    terms, 4 per output element, or of deformable offsets, twice the output with one channel,
    overflows int32 before the features or the output do), or once the grid-stride loop's last
    step, ``items - 1 + stride``, would pass int32's largest value: the loop index would wrap
    to a negative value below ``items`` and the loop would go on writing out of bounds.
    """
    stride = _launch.grid(items, per_block)[1]
    large = items + stride > 2**31 or any(getattr(a, "ndim", 0) and a.size >= LARGE for a in args)
    index = np.int64 if large else np.int32
    entry = f"cuproi_{op}_{direction}_{_SUFFIX[np.dtype(dtype)]}" + ("_i64" if large else "")
    args = [index(a) if isinstance(a, _Index) else a for a in args]
    launch(op, entry, items, (index(items), *args), per_block=per_block)


def _ints(*values):
    return tuple(np.int32(v) for v in values)


def _unused(xp, dtype):
    """An empty array (a null pointer) of ``dtype``, for a kernel argument never read or written.

    The kernel's pointer type is honoured, and nothing is allocated.
    """
    return xp.empty(0, dtype)


# NCHW features with at least this many channels are transposed for the channels-last kernels:
# the lanes of a warp take 32 consecutive channels of one bin there (kernels/roi_align.cu), which
# fewer channels would leave idle. Features stored channels last take them with any channels.
CHANNELS_LAST_FROM = 32
_CHANNEL_TILE = 32  # channels per block of the channels-last kernels
_TILE = 32  # kernels/layout.cu


def _transpose(xp, launch, a, rows, cols):
    """The C-contiguous array ``a``, read as (batch, rows, cols), as a (batch, cols, rows) one."""
    batch = a.size // (rows * cols)
    out = xp.empty((batch, cols, rows), a.dtype)
    tiles = batch * -(-rows // _TILE) * -(-cols // _TILE)
    _run(
        launch,
        "layout",
        "transpose",
        a.dtype,
        tiles,
        a,
        *_ints(batch, rows, cols),
        out,
        per_block=True,
    )
    return out


def _takes_channels_last(x):
    """Whether the features ``x`` go to the channels-last kernels (see CHANNELS_LAST_FROM)."""
    return x.shape[1] >= CHANNELS_LAST_FROM or not x.flags.c_contiguous


def _nhwc(xp, launch, x):
    """The features ``x`` as the channels-last kernels read them: C-contiguous (N, H, W, C)."""
    n, c, h, w = x.shape
    if _layout.channels_last(x):
        return x.transpose(0, 2, 3, 1)  # a view: no copy
    return _transpose(xp, launch, x, c, h * w)


def _nchw(xp, x):
    """The features ``x`` as the NCHW kernels read them: C-contiguous (N, C, H, W)."""
    return xp.ascontiguousarray(x)


def _input_gradient(xp, launch, grad, shape, channels_last):
    """A channels-last input gradient (N, H, W, C) as (N, C, H, W): a view, or transposed."""
    n, c, h, w = shape
    if channels_last:
        return grad.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return _transpose(xp, launch, grad, h * w, c).reshape(shape)


class _GradSum:
    """The zeroed input-gradient buffers of a backward, and how the kernel sums into them.

    By default the kernel adds with atomicAdd into ``value``. ``deterministic`` sums in 128-bit
    fixed point (kernels/common/grad_sum.cuh) with a scale, 2**exponent, chosen on the device
    from ``grad_output`` so that no host synchronisation is needed: every input-gradient element
    is a sum of at most ``grad_output.size`` terms of magnitude at most ``max|grad_output|`` (the
    bilinear weights of a bin sum to at most 1), and that bound times 2**exponent stays below
    2**125. The bound uses the finite values only; inf and NaN go around the fixed point.
    """

    def __init__(self, xp, shape, dtype, grad_output, deterministic):
        self.value = xp.zeros(shape, dtype)
        self.deterministic = bool(deterministic) and grad_output.size > 0
        if not self.deterministic:  # the kernel never touches these two
            self.fixed, self.exponent = _unused(xp, np.uint64), _unused(xp, np.int32)
            return
        self.fixed = xp.zeros((*shape, 2), np.uint64)
        g = grad_output.astype(dtype, copy=False)
        largest = xp.where(xp.isfinite(g), xp.abs(g), 0).max().astype(np.float64)
        _, e = xp.frexp(largest * grad_output.size)  # bound < 2**e
        self.exponent = xp.asarray(125 - e, dtype=np.int32)

    def args(self):
        """Kernel arguments: (C* value, u64* fixed, const int* exponent, int deterministic)."""
        return self.value, self.fixed, self.exponent, np.int32(self.deterministic)

    def result(self, launch, dtype):
        """The gradient in ``dtype`` (the fixed-point sums converted first)."""
        if self.deterministic:
            n = self.value.size
            _run(
                launch,
                "fixed_point",
                "finalize",
                self.value.dtype,
                n,
                self.fixed,
                self.exponent,
                self.value,
            )
        return self.value.astype(dtype, copy=False)


def _align_forward(source, xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, *ints):
    """Forward of kernels/<source>.cu, RoI Align's argument list (avg and max mode)."""
    n, c, h, w = input.shape
    input = _nchw(xp, input)
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    scalars = (rois.dtype.type(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w, *ints))
    _run(launch, source, "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def roi_align_forward(
    xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
):
    n, c, h, w = input.shape
    if _takes_channels_last(input):  # one block per box and tile of channels
        x = _nhwc(xp, launch, input)
        out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
        items = len(rois) * -(-c // _CHANNEL_TILE)
        scalars = (
            rois.dtype.type(spatial_scale),
            *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned),
        )
        _run(
            launch,
            "roi_align",
            "forward_nhwc",
            input.dtype,
            items,
            x,
            rois,
            *scalars,
            out,
            per_block=True,
        )
        return out
    return _align_forward(
        "roi_align",
        xp,
        launch,
        input,
        rois,
        spatial_scale,
        pooled_h,
        pooled_w,
        sampling_ratio,
        aligned,
    )


class _BoxGrad:
    """The zeroed box gradient of a backward with ``wrt_boxes`` (kernels/common/bilinear.cuh).

    By default a (K, 5) array into which every output element adds with atomicAdd; when
    ``deterministic``, an (n, 4) array of per-element terms, summed per box afterwards in a
    fixed order (``n = K * C * PH * PW``, so ``16 * n`` bytes in float32).
    """

    def __init__(self, xp, grad_output, dtype, deterministic):
        self.k = grad_output.shape[0]
        self.deterministic = bool(deterministic) and grad_output.size > 0
        self.xp = xp
        shape = (grad_output.size, 4) if self.deterministic else (self.k, 5)
        self.value = xp.zeros(shape, dtype)
        # The kernel never touches the input-gradient buffers when it computes the box gradient.
        self.unused = (_unused(xp, dtype), _unused(xp, np.uint64), _unused(xp, np.int32))

    def args(self):
        """Kernel arguments in the place of _GradSum.args (the same deterministic flag)."""
        return (*self.unused, np.int32(self.deterministic))

    def result(self):
        if not self.deterministic:
            return self.value
        terms = self.value.reshape(self.k, -1, 4).sum(axis=1)
        return self.xp.concatenate([self.xp.zeros((self.k, 1), terms.dtype), terms], axis=1)


def roi_align_backward(
    xp,
    launch,
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    deterministic=False,
    input=None,
    wrt="input",
    channels_last=False,
):
    """Gradient with respect to the input, or (``wrt="boxes"``) the (K, 5) boxes (reads input).

    The input gradient is NCHW, or with ``channels_last`` stored channels last.
    """
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    scalars = (
        rois.dtype.type(spatial_scale),
        *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned),
    )
    if wrt == "boxes":
        box = _BoxGrad(xp, grad_output, rois.dtype, deterministic)
        _run(
            launch,
            "roi_align",
            "backward",
            grad_output.dtype,
            grad_output.size,
            grad_output,
            rois,
            *scalars,
            *box.args(),
            _nchw(xp, input),
            box.value,
            np.int32(1),
        )
        return box.result()
    if channels_last or c >= CHANNELS_LAST_FROM:
        # A channels-last gradient (coalesced atomic adds), transposed back at the end for NCHW.
        grad = _GradSum(xp, (n, h, w, c), rois.dtype, grad_output, deterministic)
        items = len(rois) * -(-c // _CHANNEL_TILE)
        _run(
            launch,
            "roi_align",
            "backward_nhwc",
            grad_output.dtype,
            items,
            grad_output,
            rois,
            *scalars,
            *grad.args(),
            per_block=True,
        )
        return _input_gradient(
            xp, launch, grad.result(launch, grad_output.dtype), input_shape, channels_last
        )
    grad = _GradSum(xp, input_shape, rois.dtype, grad_output, deterministic)  # f16 sums in f32
    _run(
        launch,
        "roi_align",
        "backward",
        grad_output.dtype,
        grad_output.size,
        grad_output,
        rois,
        *scalars,
        *grad.args(),
        _unused(xp, grad_output.dtype),  # input: not read for the input gradient
        _unused(xp, rois.dtype),  # grad_rois: not written
        np.int32(0),
    )
    return grad.result(launch, grad_output.dtype)


def roi_pool_forward(xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, argmax=True):
    # The kernel finds the argmax while it takes the maximum: it is always returned.
    input = _nchw(xp, input)
    n, c, h, w = input.shape
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    argmax = xp.empty(out.shape, np.int32)
    scalars = (rois.dtype.type(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w))
    _run(launch, "roi_pool", "forward", input.dtype, out.size, input, rois, *scalars, out, argmax)
    return out, argmax


def roi_pool_backward(xp, launch, grad_output, rois, argmax, input_shape, deterministic=False):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    grad = _GradSum(xp, input_shape, rois.dtype, grad_output, deterministic)
    _run(
        launch,
        "roi_pool",
        "backward",
        grad_output.dtype,
        grad_output.size,
        grad_output,
        rois,
        argmax,
        *_ints(n, c, h, w, pooled_h, pooled_w),
        *grad.args(),
    )
    return grad.result(launch, grad_output.dtype)


def _deform_args(rois, offset, mask, spatial_scale, sampling_ratio, gamma, sizes):
    """The arguments after the boxes of every deform_roi_pool kernel: offsets, mask, scalars.

    An absent offset (mask) is passed as the boxes, with a flag that keeps the kernel off it.
    """
    ct = rois.dtype.type
    return (
        rois if offset is None else offset,
        np.int32(offset is not None),
        rois if mask is None else mask,
        np.int32(mask is not None),
        ct(spatial_scale),
        np.int32(sampling_ratio),
        ct(gamma),
        *_ints(*sizes),
    )


def deform_roi_pool_forward(
    xp,
    launch,
    input,
    rois,
    offset,
    spatial_scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    gamma,
    mask=None,
):
    n, c, h, w = input.shape
    sizes = (n, c, h, w, pooled_h, pooled_w)
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    channels_last = _takes_channels_last(input)
    _run(
        launch,
        "deform_roi_pool",
        "forward_nhwc" if channels_last else "forward",
        input.dtype,
        len(rois) * -(-c // _CHANNEL_TILE) if channels_last else out.size,
        _nhwc(xp, launch, input) if channels_last else input,
        rois,
        *_deform_args(rois, offset, mask, spatial_scale, sampling_ratio, gamma, sizes),
        out,
        per_block=channels_last,
    )
    return out


def deform_roi_pool_backward(
    xp,
    launch,
    grad_output,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    deterministic=False,
    mask=None,
    wrt="input",
    channels_last=False,
):
    """``(grad_input, grad_offset, grad_mask)`` (None: no offset or mask), or the boxes' (K, 5).

    ``grad_input`` is NCHW, or with ``channels_last`` stored channels last.
    """
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    sizes = (n, c, h, w, pooled_h, pooled_w)
    scalars = _deform_args(rois, offset, mask, spatial_scale, sampling_ratio, gamma, sizes)
    if wrt == "boxes":
        box = _BoxGrad(xp, grad_output, ct, deterministic)
        _run(
            launch,
            "deform_roi_pool",
            "backward",
            input.dtype,
            grad_output.size,
            grad_output,
            _nchw(xp, input),
            rois,
            *scalars,
            *box.args(),
            _unused(xp, ct),  # grad_offset and grad_mask: never touched here either
            _unused(xp, ct),
            box.value,  # grad_rois
            np.int32(1),
        )
        return box.result()
    nhwc = channels_last or _takes_channels_last(input)
    grad = _GradSum(xp, (n, h, w, c) if nhwc else input.shape, ct, grad_output, deterministic)
    # Deterministic: per-channel (per tile of channels, channels last) terms, summed over the
    # channels (tiles) below in a fixed order.
    tiles = -(-c // _CHANNEL_TILE) if nhwc else c
    per_channel = (k, tiles) if grad.deterministic else (k,)
    grad_offset = None if offset is None else xp.zeros((*per_channel, 2, pooled_h, pooled_w), ct)
    grad_mask = None if mask is None else xp.zeros((*per_channel, 1, pooled_h, pooled_w), ct)
    if nhwc:  # the features are read only for the offset and mask gradients
        unread = offset is None and mask is None
        features = _unused(xp, input.dtype) if unread else _nhwc(xp, launch, input)
        items, last = k * tiles, ()
    else:  # grad_rois: not written
        features, items, last = _nchw(xp, input), grad_output.size, (_unused(xp, ct), np.int32(0))
    # Without offsets (mask) the kernel never touches their gradients.
    _run(
        launch,
        "deform_roi_pool",
        "backward_nhwc" if nhwc else "backward",
        input.dtype,
        items,
        grad_output,
        features,
        rois,
        *scalars,
        *grad.args(),
        _unused(xp, ct) if grad_offset is None else grad_offset,
        _unused(xp, ct) if grad_mask is None else grad_mask,
        *last,
        per_block=nhwc,
    )
    if grad.deterministic:
        grad_offset = None if grad_offset is None else grad_offset.sum(axis=1)
        grad_mask = None if grad_mask is None else grad_mask.sum(axis=1)
    result = grad.result(launch, grad_output.dtype)
    if nhwc:
        result = _input_gradient(xp, launch, result, input.shape, channels_last)
    return result, grad_offset, grad_mask


def roi_align_max_forward(
    xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
):
    return _align_forward(
        "roi_align_max",
        xp,
        launch,
        input,
        rois,
        spatial_scale,
        pooled_h,
        pooled_w,
        sampling_ratio,
        aligned,
    )


def roi_align_max_backward(
    xp,
    launch,
    grad_output,
    input,
    rois,
    spatial_scale,
    sampling_ratio,
    aligned,
    deterministic=False,
    wrt="input",
    channels_last=False,
):
    """Gradient of the max mode with respect to the input, or (``wrt="boxes"``) the boxes.

    The input gradient is NCHW, or with ``channels_last`` stored channels last (transposed).
    """
    input = _nchw(xp, input)
    n, c, h, w = input.shape
    _, _, pooled_h, pooled_w = grad_output.shape
    head = (
        grad_output,
        input,
        rois,
        rois.dtype.type(spatial_scale),
        *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned),
    )
    size = grad_output.size
    if wrt == "boxes":
        box = _BoxGrad(xp, grad_output, rois.dtype, deterministic)
        args = (*box.args(), box.value, np.int32(1))
        _run(launch, "roi_align_max", "backward", input.dtype, size, *head, *args)
        return box.result()
    grad = _GradSum(xp, input.shape, rois.dtype, grad_output, deterministic)
    args = (*grad.args(), _unused(xp, rois.dtype), np.int32(0))  # grad_rois: not written
    _run(launch, "roi_align_max", "backward", input.dtype, size, *head, *args)
    result = grad.result(launch, grad_output.dtype)
    return _layout.as_channels_last(xp, result) if channels_last else result


# ---- position-sensitive ops (ps_roi_align, ps_roi_pool) ---------------------------------------


def _ps_launch(xp, launch, op, input, rois, spatial_scale, pooled_h, pooled_w, *extra):
    """Forward of a position-sensitive op: (K, C / (PH * PW), PH, PW) output, one thread each."""
    n, c, h, w = input.shape
    out = xp.empty((len(rois), c // (pooled_h * pooled_w), pooled_h, pooled_w), input.dtype)
    scalars = (rois.dtype.type(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w, *extra))
    _run(launch, op, "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def _ps_backward(
    xp, launch, op, grad_output, rois, input_shape, spatial_scale, deterministic, *extra
):
    """Backward of a position-sensitive op into an (N, C, H, W) gradient."""
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    grad = _GradSum(xp, input_shape, rois.dtype, grad_output, deterministic)  # f16 sums in f32
    scalars = (rois.dtype.type(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w, *extra))
    args = (grad_output, rois, *scalars, *grad.args())
    _run(launch, op, "backward", grad_output.dtype, grad_output.size, *args)
    return grad.result(launch, grad_output.dtype)


def ps_roi_align_forward(
    xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio
):
    return _ps_launch(
        xp, launch, "ps_roi_align", input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio
    )


def ps_roi_align_backward(
    xp, launch, grad_output, rois, input_shape, spatial_scale, sampling_ratio, deterministic=False
):
    return _ps_backward(
        xp,
        launch,
        "ps_roi_align",
        grad_output,
        rois,
        input_shape,
        spatial_scale,
        deterministic,
        sampling_ratio,
    )


def ps_roi_pool_forward(xp, launch, input, rois, spatial_scale, pooled_h, pooled_w):
    return _ps_launch(xp, launch, "ps_roi_pool", input, rois, spatial_scale, pooled_h, pooled_w)


def ps_roi_pool_backward(
    xp, launch, grad_output, rois, input_shape, spatial_scale, deterministic=False
):
    return _ps_backward(
        xp, launch, "ps_roi_pool", grad_output, rois, input_shape, spatial_scale, deterministic
    )


# ---- multi_scale_roi_align -------------------------------------------------------------------

MULTI_SCALE_LEVELS = 8  # levels the fused kernels take (kernels/multi_scale_roi_align.cu)


def _pyramid(shapes, spatial_scales, thresholds, ct):
    """The per-level scalars (h0..h7, w0..w7, s0..s7, t1..t7) of the multi-scale kernels.

    Unused levels repeat level 0 and their thresholds are +inf, so no box is assigned to them.
    """
    pad = MULTI_SCALE_LEVELS - len(shapes)
    heights = [s[2] for s in shapes] + [shapes[0][2]] * pad
    widths = [s[3] for s in shapes] + [shapes[0][3]] * pad
    scales = [ct(s) for s in spatial_scales] + [ct(spatial_scales[0])] * pad
    limits = [np.float64(t) for t in thresholds] + [np.float64(np.inf)] * pad
    return (*_ints(*heights), *_ints(*widths), *scales, *limits)


def multi_scale_roi_align_forward(
    xp,
    launch,
    features,
    rois,
    spatial_scales,
    thresholds,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
):
    features = [_nchw(xp, x) for x in features]
    n, c = features[0].shape[:2]
    dtype = features[0].dtype
    out = xp.empty((len(rois), c, pooled_h, pooled_w), dtype)
    slots = list(features) + [features[0]] * (MULTI_SCALE_LEVELS - len(features))
    _run(
        launch,
        "multi_scale_roi_align",
        "forward",
        dtype,
        out.size,
        *slots,
        rois,
        *_ints(n, c, pooled_h, pooled_w, sampling_ratio, aligned),
        *_pyramid([f.shape for f in features], spatial_scales, thresholds, rois.dtype.type),
        out,
    )
    return out


def multi_scale_roi_align_backward(
    xp,
    launch,
    grad_output,
    rois,
    input_shapes,
    spatial_scales,
    thresholds,
    sampling_ratio,
    aligned,
    deterministic=False,
):
    """Every level's gradient summed into one buffer in one launch, returned as views of it."""
    n, c = input_shapes[0][:2]
    _, _, pooled_h, pooled_w = grad_output.shape
    sizes = [int(np.prod(s)) for s in input_shapes]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    grad = _GradSum(xp, (int(starts[-1]),), rois.dtype, grad_output, deterministic)
    offsets = [int(s) for s in starts[:-1]] + [0] * (MULTI_SCALE_LEVELS - len(input_shapes))
    _run(
        launch,
        "multi_scale_roi_align",
        "backward",
        grad_output.dtype,
        grad_output.size,
        grad_output,
        rois,
        *_ints(n, c, pooled_h, pooled_w, sampling_ratio, aligned),
        *_pyramid(input_shapes, spatial_scales, thresholds, rois.dtype.type),
        *map(_Index, offsets),
        *grad.args(),
    )
    flat = grad.result(launch, grad_output.dtype)
    return [flat[starts[i] : starts[i + 1]].reshape(shape) for i, shape in enumerate(input_shapes)]


# ---- prroi_pool ------------------------------------------------------------------------------


def prroi_pool_forward(xp, launch, input, rois, spatial_scale, pooled_h, pooled_w):
    input = _nchw(xp, input)
    n, c, h, w = input.shape
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    scalars = (rois.dtype.type(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w))
    _run(launch, "prroi_pool", "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def prroi_pool_backward(
    xp,
    launch,
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    deterministic=False,
    input=None,
    wrt="input",
):
    """Gradient with respect to the input, or (``wrt="boxes"``) the (K, 5) boxes (reads input)."""
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    head = (grad_output, rois, ct(spatial_scale), *_ints(n, c, h, w, pooled_h, pooled_w))
    size = grad_output.size
    if wrt == "boxes":
        box = _BoxGrad(xp, grad_output, rois.dtype, deterministic)
        args = (*box.args(), _nchw(xp, input), box.value, np.int32(1))
        _run(launch, "prroi_pool", "backward", grad_output.dtype, size, *head, *args)
        return box.result()
    grad = _GradSum(xp, input_shape, rois.dtype, grad_output, deterministic)  # f16 sums in f32
    # The input is not read for the input gradient, and grad_rois is not written.
    args = (*grad.args(), _unused(xp, grad_output.dtype), _unused(xp, ct), np.int32(0))
    _run(launch, "prroi_pool", "backward", grad_output.dtype, size, *head, *args)
    return grad.result(launch, grad_output.dtype)


# ---- roi_align_rotated -----------------------------------------------------------------------


def roi_align_rotated_forward(
    xp,
    launch,
    input,
    rois,
    spatial_scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
    clockwise,
):
    """Rotated RoI Align: rois (K, 6) [batch_index, cx, cy, w, h, angle in degrees]."""
    return _align_forward(
        "roi_align_rotated",
        xp,
        launch,
        input,
        rois,
        spatial_scale,
        pooled_h,
        pooled_w,
        sampling_ratio,
        aligned,
        clockwise,
    )


def roi_align_rotated_backward(
    xp,
    launch,
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    clockwise,
    deterministic=False,
):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    grad = _GradSum(xp, input_shape, rois.dtype, grad_output, deterministic)  # f16 sums in f32
    _run(
        launch,
        "roi_align_rotated",
        "backward",
        grad_output.dtype,
        grad_output.size,
        grad_output,
        rois,
        rois.dtype.type(spatial_scale),
        *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned, clockwise),
        *grad.args(),
    )
    return grad.result(launch, grad_output.dtype)
