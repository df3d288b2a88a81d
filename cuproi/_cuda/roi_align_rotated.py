"""Rotated RoI Align's launches (kernels/roi_align_rotated.cu).

Boxes are (K, 6): [batch_index, cx, cy, w, h, angle in degrees].
"""

from cuproi import _results
from cuproi._cuda import _launch


def roi_align_rotated(
    device, input, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise
):
    input = device.nchw(input)
    out = _results.empty(device.xp, (len(rois), input.shape[1], *output_size), input.dtype)
    scalars = _launch.scalars(
        rois, spatial_scale, input.shape, output_size, sampling_ratio, aligned, clockwise
    )
    device.run("roi_align_rotated", "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def roi_align_rotated_backward(
    device,
    grad_output,
    rois,
    input_shape,
    spatial_scale,
    sampling_ratio,
    aligned,
    clockwise,
    *,
    deterministic=False,
):
    output_size = grad_output.shape[2:]
    scalars = _launch.scalars(
        rois, spatial_scale, input_shape, output_size, sampling_ratio, aligned, clockwise
    )
    return _launch.backward(
        device, "roi_align_rotated", grad_output, rois, input_shape, scalars, deterministic
    )
