"""RoI Pool's launches (kernels/roi_pool.cu)."""

import numpy as np

from cuproi import _results
from cuproi._cuda import _launch
from cuproi._cuda._launch import ints


def roi_pool(device, input, rois, output_size, spatial_scale, return_argmax=False):
    # The kernel finds the argmax while it takes the maximum, asked for or not.
    input = device.nchw(input)
    out = _results.empty(device.xp, (len(rois), input.shape[1], *output_size), input.dtype)
    argmax = _results.empty(device.xp, out.shape, np.int32)
    scalars = _launch.scalars(rois, spatial_scale, input.shape, output_size)
    args = (input, rois, *scalars, out, argmax)
    device.run("roi_pool", "forward", input.dtype, out.size, *args)
    return (out, argmax) if return_argmax else out


def roi_pool_backward(device, grad_output, rois, argmax, input_shape, *, deterministic=False):
    # The kernel takes the argmax right after the boxes, then the sizes.
    scalars = (argmax, *ints(*input_shape, *grad_output.shape[2:]))
    return _launch.backward(
        device, "roi_pool", grad_output, rois, input_shape, scalars, deterministic
    )
