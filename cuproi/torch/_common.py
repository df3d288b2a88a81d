"""What every op of the adapter shares: torch's stream for CuPy, the box tensors, bfloat16."""

import contextlib
import functools

import torch


@contextlib.contextmanager
def _stream(tensor):
    """Context in which CuPy runs on ``tensor``'s device and torch's current stream there.

    The device is entered first: CuPy allocates on the current device, and refuses to enter a
    stream of another device (CuPy 13's ``ExternalStream(ptr, index)``), while CuPy 14's
    ``Stream.from_external`` knows no device and would run on whichever is current.
    """
    if not tensor.is_cuda:
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(tensor.device)
    with cupy.cuda.Device(tensor.device.index):
        if hasattr(stream, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
            external = cupy.cuda.Stream.from_external(stream)
        else:  # CuPy < 14, or a torch stream without the CUDA stream protocol
            external = cupy.cuda.ExternalStream(stream.cuda_stream, tensor.device.index)
        with external:
            yield


def _channels_last(tensor):
    """Whether 4-D features are stored channels last only: their gradient is then stored so too."""
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def _empty_gradient(shape, like, channels_last):
    """An uninitialised input gradient, in the layout the backward op returns it in."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def _rois(boxes, like, columns="[x1, y1, x2, y2]"):
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


def _bfloat16_in_float32(function):
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

    return wrapper
