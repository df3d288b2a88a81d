"""Precise RoI Pooling's launches (kernels/prroi_pool.cu): input and box gradients."""

from cuproi import _results
from cuproi._cuda import _launch


def prroi_pool(device, input, rois, output_size, spatial_scale):
    input = device.nchw(input)
    out = _results.empty(device.xp, (len(rois), input.shape[1], *output_size), input.dtype)
    args = (input, rois, *_launch.scalars(rois, spatial_scale, input.shape, output_size), out)
    device.run("prroi_pool", "forward", input.dtype, out.size, *args)
    return out


def prroi_pool_backward(
    device, grad_output, rois, input_shape, spatial_scale, *, deterministic=False
):
    scalars = _launch.scalars(rois, spatial_scale, input_shape, grad_output.shape[2:])
    return _launch.backward(
        device, "prroi_pool", grad_output, rois, input_shape, scalars, deterministic
    )


def prroi_pool_box_backward(
    device, grad_output, input, rois, spatial_scale, *, deterministic=False
):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    scalars = _launch.scalars(rois, spatial_scale, input.shape, grad_output.shape[2:])
    return _launch.box_backward(
        device, "prroi_pool", grad_output, input, rois, scalars, deterministic
    )
