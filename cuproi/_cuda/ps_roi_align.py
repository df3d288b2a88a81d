"""Position-sensitive RoI Align's launches (kernels/ps_roi_align.cu)."""

from cuproi import _results
from cuproi._cuda import _launch


def ps_roi_align(device, input, rois, output_size, spatial_scale, sampling_ratio):
    """(K, C / (PH * PW), PH, PW) output, one thread each."""
    ph, pw = output_size
    out = _results.empty(device.xp, (len(rois), input.shape[1] // (ph * pw), ph, pw), input.dtype)
    scalars = _launch.scalars(rois, spatial_scale, input.shape, output_size, sampling_ratio)
    device.run("ps_roi_align", "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def ps_roi_align_backward(
    device, grad_output, rois, input_shape, spatial_scale, sampling_ratio, *, deterministic=False
):
    scalars = _launch.scalars(
        rois, spatial_scale, input_shape, grad_output.shape[2:], sampling_ratio
    )
    return _launch.backward(
        device, "ps_roi_align", grad_output, rois, input_shape, scalars, deterministic
    )
