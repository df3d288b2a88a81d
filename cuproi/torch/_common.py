"""What every op of the adapter shares: torch's stream for CuPy, and the box tensors."""

import contextlib

import torch


def _stream(tensor):
    """Context in which CuPy launches on torch's current stream of ``tensor``'s device."""
    if not tensor.is_cuda:
        return contextlib.nullcontext()
    import cupy

    stream = torch.cuda.current_stream(tensor.device)
    if hasattr(stream, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
        external = cupy.cuda.Stream.from_external(stream)
    else:  # CuPy < 14, or a torch stream without the CUDA stream protocol
        external = cupy.cuda.ExternalStream(stream.cuda_stream, tensor.device.index)
    return external


def _channels_last(tensor):
    """Whether 4-D features are stored channels last only: their gradient is then stored so too."""
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def _empty_gradient(shape, like, channels_last):
    """An uninitialised input gradient, in the layout the backward op returns it in."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def _rois(boxes, like):
    """(K, 5) box tensor from a tensor or torchvision's list of per-image (L, 4) tensors."""
    if isinstance(boxes, (list, tuple)):
        parts = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        return torch.cat(parts) if parts else like.new_zeros((0, 5))
    return boxes
