"""Compile the kernels lazily, once per device, and launch them: what every op's launch shares.

A ``Device`` pairs an array module with a launcher: CuPy and :func:`launch` (the CUDA launch on
the current device and stream) on the GPU; NumPy and the same sources compiled for the host in
the tests, so the marshalling of the ops' arguments is checked on machines without a GPU. It
picks the entry point for the dtype and the index width, casts the item count and the
``Index`` arguments to the kernel's index type, and holds the layout changes (transposes,
channels last) of the kernels that take them. ``GradSum`` and ``BoxGrad`` are the zeroed
buffers that backwards sum into (kernels/common/grad_sum.cuh, kernels/common/bilinear.cuh).

Arrays arrive validated and C-contiguous: features in their dtype, boxes and offsets in the
compute dtype (float32 for float16 and float32 features, float64 for float64). The features of
RoI Align and Deformable RoI Pooling may also be stored channels last (``cuproi._layout``).
"""

import functools

import numpy as np

from cuproi import _layout, _results
from cuproi._cuda import _source

_OPTIONS = ("--std=c++17",)
_THREADS = 256
_MAX_BLOCKS = 65535  # grid-stride loops cover any n with a bounded grid

# Arrays of this many elements or more take the _i64 entry points (int32 flat indices overflow).
LARGE = 2**31

# NCHW features with at least this many channels are transposed for the channels-last kernels:
# the lanes of a warp take 32 consecutive channels of one bin there (kernels/roi_align.cu), which
# fewer channels would leave idle. Features stored channels last take them with any channels.
CHANNELS_LAST_FROM = 32
CHANNEL_TILE = 32  # channels per block of the channels-last kernels
_TILE = 32  # kernels/layout.cu

_SUFFIX = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


@functools.cache
def _kernels():
    import cupy  # only here: importing cuproi never imports cupy

    @cupy.memoize(for_each_device=True)
    def module(name):
        return cupy.RawModule(code=_source.source(name), options=_OPTIONS)

    @cupy.memoize(for_each_device=True)
    def kernel(name, entry):
        return module(name).get_function(entry)

    return kernel


def grid(n, per_block=False):
    """Blocks of the launch of ``n`` items, and the stride of its grid-stride loop."""
    blocks = min(n if per_block else -(-n // _THREADS), _MAX_BLOCKS)
    return blocks, blocks if per_block else blocks * _THREADS


def launch(name, entry, n, args, per_block=False):
    """Run ``entry`` of kernels/<name>.cu over ``n`` elements on the current device and stream.

    With ``per_block`` the ``n`` items are blocks' work (one block each, in a block-stride
    loop) rather than threads'.
    """
    if n == 0:
        return
    _kernels()(name, entry)((grid(n, per_block)[0],), (_THREADS,), args)


class Index(int):
    """A scalar argument in the kernel's index type: int32, or int64 in the _i64 variants."""


def ints(*values):
    """``values`` as the kernels' ``int`` arguments."""
    return tuple(np.int32(v) for v in values)


def scalars(rois, spatial_scale, input_shape, output_size, *options):
    """The kernels' arguments after the boxes: scale, sizes and the op's integer options.

    The scale in the boxes' dtype, then ``N, C, H, W, PH, PW`` and ``options`` (sampling ratio,
    flags) as the kernels' ``int`` arguments.
    """
    return (rois.dtype.type(spatial_scale), *ints(*input_shape, *output_size, *options))


def takes_channels_last(x):
    """Whether the features ``x`` go to the channels-last kernels (see CHANNELS_LAST_FROM)."""
    return x.shape[1] >= CHANNELS_LAST_FROM or not x.flags.c_contiguous


def tiles(channels):
    """Tiles of CHANNEL_TILE channels: the channels-last kernels take one block per box and tile."""
    return -(-channels // CHANNEL_TILE)


class Device:
    """Where the kernels run: ``xp`` allocates the arrays, ``launch`` runs the entry points.

    ``launch(name, entry, n, args, per_block)`` has the signature of :func:`launch`.
    """

    def __init__(self, xp, launch):
        self.xp = xp
        self.launch = launch

    def run(self, op, direction, dtype, items, *args, per_block=False):
        """Launch ``items`` work items of ``op``'s ``direction`` entry point for ``dtype`` features.

        Every kernel takes the item count first, in its index type, as are the ``Index`` among
        ``args``: int32, or int64 in the _i64 variant. The _i64 variant is taken once any array
        among the arguments reaches LARGE elements, whichever it is (an offset into a buffer of
        box terms, 4 per output element, or of deformable offsets, twice the output with one
        channel, overflows int32 before the features or the output do), or once the grid-stride
        loop's last step, ``items - 1 + stride``, would pass int32's largest value: the loop
        index would wrap to a negative value below ``items`` and the loop would go on writing
        out of bounds.
        """
        stride = grid(items, per_block)[1]
        large = items + stride > 2**31 or any(
            getattr(a, "ndim", 0) and a.size >= LARGE for a in args
        )
        index = np.int64 if large else np.int32
        entry = f"cuproi_{op}_{direction}_{_SUFFIX[np.dtype(dtype)]}" + ("_i64" if large else "")
        args = [index(a) if isinstance(a, Index) else a for a in args]
        self.launch(op, entry, items, (index(items), *args), per_block=per_block)

    def null(self, dtype):
        """An empty array (a null pointer) of ``dtype``, for an array the kernel is told is absent.

        The kernel's pointer type is honoured, and nothing is allocated.
        """
        return self.xp.empty(0, dtype)

    def transpose(self, a, rows, cols):
        """The C-contiguous ``a``, read as (batch, rows, cols), as a (batch, cols, rows) array."""
        batch = a.size // (rows * cols)
        out = self.xp.empty((batch, cols, rows), a.dtype)
        blocks = batch * -(-rows // _TILE) * -(-cols // _TILE)
        args = (a, *ints(batch, rows, cols), out)
        self.run("layout", "transpose", a.dtype, blocks, *args, per_block=True)
        return out

    def nhwc(self, x):
        """The features ``x`` as the channels-last kernels read them: C-contiguous (N, H, W, C)."""
        n, c, h, w = x.shape
        if _layout.channels_last(x):
            return x.transpose(0, 2, 3, 1)  # a view: no copy
        return self.transpose(x, c, h * w)

    def nchw(self, x):
        """The features ``x`` as the NCHW kernels read them: C-contiguous (N, C, H, W)."""
        return self.xp.ascontiguousarray(x)

    def input_gradient(self, grad, shape, channels_last):
        """A channels-last input gradient (N, H, W, C) as (N, C, H, W): a view, or transposed."""
        n, c, h, w = shape
        if channels_last:
            return grad.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return self.transpose(grad, h * w, c).reshape(shape)


class GradSum:
    """The zeroed input-gradient buffers of a backward, and how the kernel sums into them.

    By default the kernel adds with atomicAdd into ``value``. ``deterministic`` sums in 128-bit
    fixed point (kernels/common/grad_sum.cuh) with a scale, 2**exponent, chosen on the device
    from ``grad_output`` so that no host synchronisation is needed: every input-gradient element
    is a sum of at most ``grad_output.size`` terms of magnitude at most ``max|grad_output|`` (the
    bilinear weights of a bin sum to at most 1), and that bound times 2**exponent stays below
    2**125. The bound uses the finite values only; inf and NaN go around the fixed point.
    ``dtype`` is the compute dtype (float16 sums in float32).
    """

    def __init__(self, device, shape, dtype, grad_output, deterministic):
        xp = device.xp
        self.device = device
        self.value = _results.zeros(xp, shape, dtype)
        self.deterministic = bool(deterministic) and grad_output.size > 0
        if not self.deterministic:  # the kernel never touches these two
            self.fixed, self.exponent = device.null(np.uint64), device.null(np.int32)
            return
        self.fixed = xp.zeros((*shape, 2), np.uint64)
        g = grad_output.astype(dtype, copy=False)
        largest = xp.where(xp.isfinite(g), xp.abs(g), 0).max().astype(np.float64)
        _, e = xp.frexp(largest * grad_output.size)  # bound < 2**e
        self.exponent = xp.asarray(125 - e, dtype=np.int32)

    def args(self):
        """Kernel arguments: (C* value, u64* fixed, const int* exponent, int deterministic)."""
        return self.value, self.fixed, self.exponent, np.int32(self.deterministic)

    def result(self, dtype):
        """The gradient in ``dtype`` (the fixed-point sums converted first)."""
        if self.deterministic:
            args = (self.fixed, self.exponent, self.value)
            self.device.run("fixed_point", "finalize", self.value.dtype, self.value.size, *args)
        return self.value.astype(dtype, copy=False)


class BoxGrad:
    """The zeroed box gradient of a box backward (kernels/common/bilinear.cuh, BoxGrad).

    By default a (K, 5) array into which every output element adds with atomicAdd; when
    ``deterministic``, an (n, 4) array of per-element terms, summed per box afterwards in a
    fixed order (``n = K * C * PH * PW``, so ``16 * n`` bytes in float32).
    """

    def __init__(self, device, grad_output, dtype, deterministic):
        self.k = grad_output.shape[0]
        self.deterministic = bool(deterministic) and grad_output.size > 0
        self.xp = device.xp
        shape = (grad_output.size, 4) if self.deterministic else (self.k, 5)
        self.value = self.xp.zeros(shape, dtype)

    def args(self):
        """Kernel arguments: (C* grad_rois, int deterministic)."""
        return self.value, np.int32(self.deterministic)

    def result(self):
        if not self.deterministic:
            return self.value
        terms = self.value.reshape(self.k, -1, 4).sum(axis=1)
        return self.xp.concatenate([self.xp.zeros((self.k, 1), terms.dtype), terms], axis=1)


def backward(device, op, grad_output, rois, input_shape, scalars, deterministic):
    """The NCHW input gradient of ``op``'s ``backward`` kernel, one thread per output element.

    Its arguments: ``grad_output``, the boxes, ``scalars`` (what the op's kernel takes after
    the boxes), the :class:`GradSum` it adds into (float16 sums in float32).
    """
    grad = GradSum(device, input_shape, rois.dtype, grad_output, deterministic)
    args = (grad_output, rois, *scalars, *grad.args())
    device.run(op, "backward", grad_output.dtype, grad_output.size, *args)
    return grad.result(grad_output.dtype)


def box_backward(
    device, op, grad_output, input, rois, scalars, deterministic, entry="box_backward"
):
    """The (K, 5) box gradient of ``op``'s ``entry`` kernel, which reads the NCHW features.

    Its arguments: ``grad_output`` (in the features' dtype), the features, the boxes,
    ``scalars`` (as the forward's after the boxes), the :class:`BoxGrad` it adds into.
    """
    box = BoxGrad(device, grad_output, rois.dtype, deterministic)
    args = (grad_output, device.nchw(input), rois, *scalars, *box.args())
    device.run(op, entry, input.dtype, grad_output.size, *args)
    return box.result()
