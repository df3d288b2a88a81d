"""Precise RoI Pooling's launches (kernels/prroi_pool.cu): input and box gradients."""

from cuproi import _results
from cuproi._cuda._launch import BoxGrad, GradSum, ints


def _scalars(rois, input_shape, output_size, spatial_scale):
    return (rois.dtype.type(spatial_scale), *ints(*input_shape, *output_size))


def prroi_pool(device, input, rois, output_size, spatial_scale):
    input = device.nchw(input)
    out = _results.empty(device.xp, (len(rois), input.shape[1], *output_size), input.dtype)
    args = (input, rois, *_scalars(rois, input.shape, output_size, spatial_scale), out)
    device.run("prroi_pool", "forward", input.dtype, out.size, *args)
    return out


def prroi_pool_backward(
    device, grad_output, rois, input_shape, spatial_scale, *, deterministic=False
):
    grad = GradSum(device, input_shape, rois.dtype, grad_output, deterministic)  # f16 sums in f32
    scalars = _scalars(rois, input_shape, grad_output.shape[2:], spatial_scale)
    args = (grad_output, rois, *scalars, *grad.args())
    device.run("prroi_pool", "backward", grad_output.dtype, grad_output.size, *args)
    return grad.result(grad_output.dtype)


def prroi_pool_box_backward(
    device, grad_output, input, rois, spatial_scale, *, deterministic=False
):
    """The (K, 5) gradient with respect to the boxes, which reads the features ``input``."""
    box = BoxGrad(device, grad_output, rois.dtype, deterministic)
    scalars = _scalars(rois, input.shape, grad_output.shape[2:], spatial_scale)
    args = (grad_output, device.nchw(input), rois, *scalars, *box.args())
    device.run("prroi_pool", "box_backward", grad_output.dtype, grad_output.size, *args)
    return box.result()
