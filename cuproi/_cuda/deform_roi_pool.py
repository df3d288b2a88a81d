"""Deformable RoI Pooling's launches (kernels/deform_roi_pool.cu), NCHW and channels last."""

import numpy as np

from cuproi import _results
from cuproi._cuda import _launch
from cuproi._cuda._launch import GradSum, ints


def _args(input_shape, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask):
    """The arguments after the boxes of every kernel: offsets, mask and scalars.

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
        *ints(*input_shape, *output_size),
    )


def deform_roi_pool(
    device, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask=None
):
    c = input.shape[1]
    out = _results.empty(device.xp, (len(rois), c, *output_size), input.dtype)
    scalars = _args(
        input.shape, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask
    )
    if _launch.takes_channels_last(input):  # one block per box and tile of channels
        items = len(rois) * _launch.tiles(c)
        args = (device.nhwc(input), rois, *scalars, out)
        device.run("deform_roi_pool", "forward_nhwc", input.dtype, items, *args, per_block=True)
    else:
        args = (input, rois, *scalars, out)
        device.run("deform_roi_pool", "forward", input.dtype, out.size, *args)
    return out


def deform_roi_pool_backward(
    device,
    grad_output,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    mask=None,
    *,
    deterministic=False,
    channels_last=False,
):
    """``(grad_input, grad_offset, grad_mask)``, None for an absent offset or mask.

    ``grad_input`` is NCHW, or with ``channels_last`` stored channels last.
    """
    n, c, h, w = input.shape
    k, _, pooled_h, pooled_w = grad_output.shape
    xp, ct = device.xp, rois.dtype
    scalars = _args(
        input.shape, rois, offset, (pooled_h, pooled_w), spatial_scale, sampling_ratio, gamma, mask
    )
    nhwc = channels_last or _launch.takes_channels_last(input)
    grad = GradSum(device, (n, h, w, c) if nhwc else input.shape, ct, grad_output, deterministic)
    # Deterministic: per-channel (per tile of channels, channels last) terms, summed over the
    # channels (tiles) below in a fixed order.
    tiles = _launch.tiles(c) if nhwc else c
    per_channel = (k, tiles) if grad.deterministic else (k,)
    grad_offset = (
        None if offset is None else _results.zeros(xp, (*per_channel, 2, pooled_h, pooled_w), ct)
    )
    grad_mask = (
        None if mask is None else _results.zeros(xp, (*per_channel, 1, pooled_h, pooled_w), ct)
    )
    # The features are read only for the offset and mask gradients; without offsets (mask)
    # the kernel never touches their gradients.
    unread = offset is None and mask is None
    if unread:
        features = device.null(input.dtype)
    else:
        features = device.nhwc(input) if nhwc else device.nchw(input)
    args = (
        grad_output,
        features,
        rois,
        *scalars,
        *grad.args(),
        device.null(ct) if grad_offset is None else grad_offset,
        device.null(ct) if grad_mask is None else grad_mask,
    )
    if nhwc:
        items = k * tiles
        device.run("deform_roi_pool", "backward_nhwc", input.dtype, items, *args, per_block=True)
    else:
        device.run("deform_roi_pool", "backward", input.dtype, grad_output.size, *args)
    if grad.deterministic:
        grad_offset = None if grad_offset is None else grad_offset.sum(axis=1)
        grad_mask = None if grad_mask is None else grad_mask.sum(axis=1)
    result = grad.result(grad_output.dtype)
    if nhwc:
        result = device.input_gradient(result, input.shape, channels_last)
    return result, grad_offset, grad_mask


def deform_roi_pool_box_backward(
    device,
    grad_output,
    input,
    rois,
    offset,
    spatial_scale,
    sampling_ratio,
    gamma,
    mask=None,
    *,
    deterministic=False,
):
    """The (K, 5) gradient with respect to the boxes."""
    scalars = _args(
        input.shape, rois, offset, grad_output.shape[2:], spatial_scale, sampling_ratio, gamma, mask
    )
    return _launch.box_backward(
        device, "deform_roi_pool", grad_output, input, rois, scalars, deterministic
    )
