"""Position-sensitive RoI Pool's launches (kernels/ps_roi_pool.cu)."""

from cuproi import _results
from cuproi._cuda import _launch


def ps_roi_pool(device, input, rois, output_size, spatial_scale):
    """(K, C / (PH * PW), PH, PW) output, one thread each."""
    ph, pw = output_size
    out = _results.empty(device.xp, (len(rois), input.shape[1] // (ph * pw), ph, pw), input.dtype)
    scalars = _launch.scalars(rois, spatial_scale, input.shape, output_size)
    device.run("ps_roi_pool", "forward", input.dtype, out.size, input, rois, *scalars, out)
    return out


def ps_roi_pool_backward(
    device, grad_output, rois, input_shape, spatial_scale, *, deterministic=False
):
    scalars = _launch.scalars(rois, spatial_scale, input_shape, grad_output.shape[2:])
    return _launch.backward(
        device, "ps_roi_pool", grad_output, rois, input_shape, scalars, deterministic
    )
