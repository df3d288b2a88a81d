"""What the ops of the adapter share: torch's stream, the boxes, the checked arguments, bfloat16.

CuPy runs on torch's current stream (:func:`stream`, :func:`run_backward`); boxes come as a
tensor or torchvision's per-image list (:func:`rois`), checked with the output size and the
scale (:func:`first_arguments`); bfloat16 is computed in float32.
"""

import contextlib
import functools
from typing import cast

import torch

from cuproi import _validate
from cuproi._types import F


@contextlib.contextmanager
def stream(tensor):
    """Context in which CuPy runs on ``tensor``'s device and torch's current stream there.

    The device is entered first: CuPy allocates on the current device, and refuses to enter a
    stream of another device (CuPy 13's ``ExternalStream(ptr, index)``), while CuPy 14's
    ``Stream.from_external`` knows no device and would run on whichever is current.
    """
    if not tensor.is_cuda:
        yield
        return
    import cupy

    current = torch.cuda.current_stream(tensor.device)
    with cupy.cuda.Device(tensor.device.index):
        if hasattr(current, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
            external = cupy.cuda.Stream.from_external(current)
        else:  # CuPy < 14, or a torch stream without the CUDA stream protocol
            external = cupy.cuda.ExternalStream(current.cuda_stream, tensor.device.index)
        with external:
            yield


def run_backward(function, grad, leading, *options, **keywords):
    """``function(grad, *leading, output_size, *options, **keywords)`` on ``grad``'s stream.

    cuproi's backward functions take the output size after their arrays (and the input's
    shape); a backward op passes the last two sizes of the gradient it is given.

    Parameters
    ----------
    function : callable
        One of cuproi's backward functions.
    grad : (K, C, PH, PW) Tensor
        The gradient of the op's output.
    leading : tuple
        What ``function`` takes between ``grad`` and the output size: the boxes and the
        input's shape, or the features, the boxes and the op's further tensors.
    *options, **keywords
        What it takes after the output size.
    """
    with stream(grad):
        return function(grad, *leading, tuple(grad.shape[2:]), *options, **keywords)


def stored_channels_last(tensor):
    """Whether 4-D features are stored channels last only: their gradient is then stored so too."""
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def empty_gradient(shape, like, channels_last):
    """An uninitialised input gradient, in the layout the backward op returns it in."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def rois(boxes, like, columns="[x1, y1, x2, y2]"):
    """(K, 1 + width) box tensor from a tensor or torchvision's list of per-image (L, width).

    Each per-image tensor is checked before its batch column is added, so that an error names
    the shape it was given.
    """
    width = columns.count(",") + 1
    if not isinstance(boxes, (list, tuple)):
        if not isinstance(boxes, torch.Tensor):
            raise TypeError(
                f"boxes must be a (K, {width + 1}) tensor [batch_index, {columns[1:]} or a list "
                f"of (L, {width}) tensors {columns}; got {type(boxes).__name__}"
            )
        return boxes
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor):
            raise TypeError(
                f"boxes[{i}] must be an (L, {width}) tensor {columns}; got {type(b).__name__}"
            )
        if b.ndim != 2 or b.shape[1] != width:
            raise ValueError(
                f"boxes[{i}] must be an (L, {width}) tensor {columns}; got shape {tuple(b.shape)}"
            )
    parts = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(parts) if parts else like.new_zeros((0, width + 1))


def first_arguments(input, boxes, output_size, spatial_scale, columns="[x1, y1, x2, y2]"):
    """An op's first arguments, checked: ``(input, rois, pooled_h, pooled_w, spatial_scale)``.

    ``output_size`` is checked first, then the boxes (see :func:`rois`), then the scale.
    """
    pooled_h, pooled_w = _validate.output_size(output_size)
    box_tensor = rois(boxes, input, columns)
    return input, box_tensor, pooled_h, pooled_w, _validate.spatial_scale(spatial_scale)


def _tensor_input(input):
    """TypeError unless ``input`` is a tensor, or a list of them (multi-scale levels).

    torch's dispatcher would say "Expected a value of type 'Tensor'" in a RuntimeError.
    """
    many = isinstance(input, (list, tuple))
    bad = [v for v in (input if many else [input]) if not isinstance(v, torch.Tensor)]
    if bad:
        holding = f" holding a {type(bad[0]).__name__}" if many else ""
        raise TypeError(
            "input must be a torch.Tensor (multi_scale_roi_align: a list of them); got a "
            f"{type(input).__name__}{holding}"
        )


def _float32(value):
    """``value`` with its bfloat16 tensors (also inside lists and tuples) cast to float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(item) for item in value)
    return value


def bfloat16_in_float32(function: F) -> F:
    """Compute ``function``'s bfloat16 tensors in float32, and return bfloat16 for bfloat16 input.

    cuproi's backends hold float16, float32 and float64 only (NumPy has no bfloat16), while
    ``torch.autocast`` on the CPU, or with ``dtype=torch.bfloat16``, makes bfloat16 features,
    offsets and masks. They are cast to float32, and the result back to the dtype of the
    features (the first argument, or its first level): what torchvision's ops do under autocast.
    The casts are torch operations, so autograd and ``torch.compile`` see through them, and the
    gradients come back in bfloat16.
    """

    @functools.wraps(function)
    def wrapper(input, *args, **kwargs):
        _tensor_input(input)
        kwargs = {name: _float32(value) for name, value in kwargs.items()}
        result = function(_float32(input), *_float32(args), **kwargs)
        first = input[0] if isinstance(input, (list, tuple)) and input else input
        if getattr(first, "dtype", None) == torch.bfloat16:
            return result.to(torch.bfloat16)
        return result

    return cast(F, wrapper)


def score_maps(input, pooled):
    """Check that 4-D ``input`` holds a group of ``PH * PW`` score maps per output channel.

    Before the boxes are read, as the position-sensitive ops do; another rank is left to the
    op, which names the rank it expects.
    """
    if getattr(input, "ndim", None) == 4:
        _validate.position_sensitive_channels(input.shape[1], pooled)
