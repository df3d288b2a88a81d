"""RoI Align's launches (kernels/roi_align.cu): average and max mode, input and box gradients.

The average mode has channels-last kernels (see ``_launch.CHANNELS_LAST_FROM``); the max mode
reads NCHW features only.
"""

from cuproi import _layout, _results
from cuproi._cuda import _launch
from cuproi._cuda._launch import GradSum


def roi_align(
    device, input, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode="avg"
):
    c = input.shape[1]
    out = _results.empty(device.xp, (len(rois), c, *output_size), input.dtype)
    scalars = _launch.scalars(
        rois, spatial_scale, input.shape, output_size, sampling_ratio, aligned
    )
    if pool_mode == "avg" and _launch.takes_channels_last(input):
        # One block per box and tile of channels.
        items = len(rois) * _launch.tiles(c)
        args = (device.nhwc(input), rois, *scalars, out)
        device.run("roi_align", "forward_nhwc", input.dtype, items, *args, per_block=True)
        return out
    direction = "forward" if pool_mode == "avg" else "forward_max"
    args = (device.nchw(input), rois, *scalars, out)
    device.run("roi_align", direction, input.dtype, out.size, *args)
    return out


def roi_align_backward(
    device,
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    input=None,
    deterministic=False,
    channels_last=False,
):
    """The input gradient, NCHW or with ``channels_last`` stored channels last.

    The max mode reads the features ``input``.
    """
    n, c, h, w = input_shape
    scalars = _launch.scalars(
        rois, spatial_scale, input_shape, grad_output.shape[2:], sampling_ratio, aligned
    )
    dtype = grad_output.dtype
    if pool_mode == "max":
        grad = GradSum(device, input_shape, rois.dtype, grad_output, deterministic)
        args = (grad_output, device.nchw(input), rois, *scalars, *grad.args())
        device.run("roi_align", "backward_max", dtype, grad_output.size, *args)
        result = grad.result(dtype)
        return _layout.as_channels_last(device.xp, result) if channels_last else result
    if channels_last or c >= _launch.CHANNELS_LAST_FROM:
        # A channels-last gradient (coalesced atomic adds), transposed back at the end for NCHW.
        grad = GradSum(device, (n, h, w, c), rois.dtype, grad_output, deterministic)
        items = len(rois) * _launch.tiles(c)
        args = (grad_output, rois, *scalars, *grad.args())
        device.run("roi_align", "backward_nhwc", dtype, items, *args, per_block=True)
        return device.input_gradient(grad.result(dtype), input_shape, channels_last)
    return _launch.backward(
        device, "roi_align", grad_output, rois, input_shape, scalars, deterministic
    )


def roi_align_box_backward(
    device,
    grad_output,
    input,
    rois,
    spatial_scale,
    sampling_ratio,
    aligned,
    *,
    pool_mode="avg",
    deterministic=False,
):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    scalars = _launch.scalars(
        rois, spatial_scale, input.shape, grad_output.shape[2:], sampling_ratio, aligned
    )
    entry = "box_backward" if pool_mode == "avg" else "box_backward_max"
    return _launch.box_backward(
        device, "roi_align", grad_output, input, rois, scalars, deterministic, entry
    )
