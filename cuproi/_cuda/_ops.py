"""Kernel launches of every op, written against an array module and a launcher.

Each function allocates its outputs with ``xp``, picks the entry point for the dtype and the
index width, casts every scalar to its exact C type (CuPy passes a Python float as a double
whatever the kernel expects) and calls ``launch(source, entry, n, args)``. The GPU backend binds
``xp`` to CuPy and ``launch`` to a CUDA launch; the tests bind them to NumPy and to the same
sources compiled for the host, so this marshalling is checked on machines without a GPU.

Arrays arrive validated and C-contiguous: features in their dtype, boxes and offsets in the
compute dtype (float32 for float16 and float32 features, float64 for float64).
"""

import numpy as np

# Arrays of this many elements or more take the _i64 entry points (int32 flat indices overflow).
LARGE = 2**31

_SUFFIX = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _entry(op, direction, dtype, *arrays):
    """Entry point name and index type: the _i64 variant once an array reaches 2**31 elements."""
    large = any(a.size >= LARGE for a in arrays)
    name = f"cuproi_{op}_{direction}_{_SUFFIX[np.dtype(dtype)]}" + ("_i64" if large else "")
    return name, np.int64 if large else np.int32


def _ints(*values):
    return tuple(np.int32(v) for v in values)


def roi_align_forward(
    xp, launch, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
):
    n, c, h, w = input.shape
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    entry, index = _entry("roi_align", "forward", input.dtype, input, out)
    launch(
        "roi_align",
        entry,
        out.size,
        (
            index(out.size),
            input,
            rois,
            rois.dtype.type(spatial_scale),
            *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned),
            out,
        ),
    )
    return out


def roi_align_backward(
    xp, launch, grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned
):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    grad = xp.zeros(input_shape, rois.dtype)  # float16 accumulates in float32
    entry, index = _entry("roi_align", "backward", grad_output.dtype, grad_output, grad)
    launch(
        "roi_align",
        entry,
        grad_output.size,
        (
            index(grad_output.size),
            grad_output,
            rois,
            rois.dtype.type(spatial_scale),
            *_ints(n, c, h, w, pooled_h, pooled_w, sampling_ratio, aligned),
            grad,
        ),
    )
    return grad.astype(grad_output.dtype, copy=False)


def roi_pool_forward(xp, launch, input, rois, spatial_scale, pooled_h, pooled_w):
    n, c, h, w = input.shape
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    argmax = xp.empty(out.shape, np.int32)
    entry, index = _entry("roi_pool", "forward", input.dtype, input, out)
    launch(
        "roi_pool",
        entry,
        out.size,
        (
            index(out.size),
            input,
            rois,
            rois.dtype.type(spatial_scale),
            *_ints(n, c, h, w, pooled_h, pooled_w),
            out,
            argmax,
        ),
    )
    return out, argmax


def roi_pool_backward(xp, launch, grad_output, rois, argmax, input_shape):
    n, c, h, w = input_shape
    _, _, pooled_h, pooled_w = grad_output.shape
    grad = xp.zeros(input_shape, rois.dtype)
    entry, index = _entry("roi_pool", "backward", grad_output.dtype, grad_output, grad)
    launch(
        "roi_pool",
        entry,
        grad_output.size,
        (
            index(grad_output.size),
            grad_output,
            rois,
            argmax,
            *_ints(n, c, h, w, pooled_h, pooled_w),
            grad,
        ),
    )
    return grad.astype(grad_output.dtype, copy=False)


def deform_roi_pool_forward(
    xp, launch, input, rois, offset, spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma
):
    n, c, h, w = input.shape
    ct = rois.dtype.type
    out = xp.empty((len(rois), c, pooled_h, pooled_w), input.dtype)
    entry, index = _entry("deform_roi_pool", "forward", input.dtype, input, out)
    launch(
        "deform_roi_pool",
        entry,
        out.size,
        (
            index(out.size),
            input,
            rois,
            rois if offset is None else offset,
            np.int32(offset is not None),
            ct(spatial_scale),
            np.int32(sampling_ratio),
            ct(gamma),
            *_ints(n, c, h, w, pooled_h, pooled_w),
            out,
        ),
    )
    return out


def deform_roi_pool_backward(
    xp, launch, grad_output, input, rois, offset, spatial_scale, sampling_ratio, gamma
):
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    ct = rois.dtype.type
    grad = xp.zeros(input.shape, rois.dtype)
    grad_offset = None if offset is None else xp.zeros((k, 2, pooled_h, pooled_w), rois.dtype)
    entry, index = _entry("deform_roi_pool", "backward", input.dtype, input, grad_output)
    # Without offsets the kernel never touches the offset pointers; any device array will do.
    launch(
        "deform_roi_pool",
        entry,
        grad_output.size,
        (
            index(grad_output.size),
            grad_output,
            input,
            rois,
            rois if offset is None else offset,
            np.int32(offset is not None),
            ct(spatial_scale),
            np.int32(sampling_ratio),
            ct(gamma),
            *_ints(n, c, h, w, pooled_h, pooled_w),
            grad,
            rois if grad_offset is None else grad_offset,
        ),
    )
    return grad.astype(grad_output.dtype, copy=False), grad_offset
