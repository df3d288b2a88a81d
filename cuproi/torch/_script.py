"""The functions of the adapter as TorchScript compiles them: the ops, called as torchvision does.

Each public function of :mod:`cuproi.torch` is marked (:func:`compiles_as`) so that
``torch.jit.script`` compiles the function of the same name here instead: the eager functions
check their arguments in Python (:mod:`cuproi._validate`), which TorchScript cannot compile,
while the ops check them again when they run. These functions take what the eager ones take
(torchvision's signatures) and call the same ``torch.ops.cuproi`` ops, bfloat16 in float32 too.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from cuproi._types import F


def compiles_as(scripted: Callable[..., Any]) -> Callable[[F], F]:
    """Have ``torch.jit.script`` compile ``scripted`` for the decorated function.

    ``torch.jit.script`` reads the source of what ``__wrapped__`` names and resolves its names
    in the globals of the function it is given: the decorated function is wrapped in one of
    this module, whose ``__wrapped__`` is ``scripted`` (the same name and parameters), and whose
    signature, for ``help()``, is ``scripted``'s. Eager calls, ``torch.compile`` and
    ``torch.export`` run the decorated function.
    """

    def mark(function: F) -> F:
        @functools.wraps(function)
        def eager(*args, **kwargs):
            return function(*args, **kwargs)

        eager.__wrapped__ = scripted
        eager.__signature__ = _readable(inspect.signature(scripted))
        return cast(F, eager)

    return mark


def _readable(signature):
    """``signature`` with ``output_size`` an int or a pair, for ``help()``.

    ``BroadcastingList2[int]``, which TorchScript reads in the source, is None at run time.
    """
    parameters = [
        p.replace(annotation=int | tuple[int, int]) if p.name == "output_size" else p
        for p in signature.parameters.values()
    ]
    return signature.replace(parameters=parameters)


def _rois(boxes: Tensor | list[Tensor], like: Tensor, width: int = 4) -> Tensor:
    """(K, 1 + width) box tensor from a tensor or a per-image list, in float32 for bfloat16."""
    if isinstance(boxes, Tensor):
        return _float32(boxes)
    parts: list[Tensor] = []
    for i, b in enumerate(boxes):
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if len(parts) == 0:
        return like.new_zeros((0, width + 1))
    return _float32(torch.cat(parts))


def _float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype == torch.bfloat16 else tensor


def _as_input(result: Tensor, input: Tensor) -> Tensor:
    """``result`` in bfloat16 for bfloat16 features, as the eager functions return it."""
    return result.to(torch.bfloat16) if input.dtype == torch.bfloat16 else result


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    ph, pw = output_size[0], output_size[1]
    options = (spatial_scale, sampling_ratio, aligned)
    result = torch.ops.cuproi.roi_align(x, rois, ph, pw, *options, pool_mode)
    return _as_input(result, input)


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    ph, pw = output_size[0], output_size[1]
    if torch.is_grad_enabled() and x.requires_grad:
        result = torch.ops.cuproi.roi_pool(x, rois, ph, pw, spatial_scale)[0]
    else:
        result = torch.ops.cuproi.roi_pool_inference(x, rois, ph, pw, spatial_scale)
    return _as_input(result, input)


def ps_roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    ph, pw = output_size[0], output_size[1]
    result = torch.ops.cuproi.ps_roi_align(x, rois, ph, pw, spatial_scale, sampling_ratio)
    return _as_input(result, input)


def ps_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    result = torch.ops.cuproi.ps_roi_pool(x, rois, output_size[0], output_size[1], spatial_scale)
    return _as_input(result, input)


def prroi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    result = torch.ops.cuproi.prroi_pool(x, rois, output_size[0], output_size[1], spatial_scale)
    return _as_input(result, input)


def roi_align_rotated(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input, 5)
    ph, pw = output_size[0], output_size[1]
    options = (spatial_scale, sampling_ratio, aligned, clockwise)
    result = torch.ops.cuproi.roi_align_rotated(x, rois, ph, pw, *options)
    return _as_input(result, input)


def deform_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    x, rois = _float32(input), _rois(boxes, input)
    if offset is not None:
        offset = _float32(offset)
    if mask is not None:
        mask = _float32(mask)
    ph, pw = output_size[0], output_size[1]
    options = (spatial_scale, sampling_ratio, gamma)
    result = torch.ops.cuproi.deform_roi_pool(x, rois, offset, ph, pw, *options, mask)
    return _as_input(result, input)


def multi_scale_roi_align(
    features: list[Tensor],
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scales: list[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    levels: list[Tensor] = []
    for f in features:
        levels.append(_float32(f))
    rois = _rois(boxes, features[0])
    ph, pw = output_size[0], output_size[1]
    options = (sampling_ratio, aligned, canonical_scale, canonical_level)
    result = torch.ops.cuproi.multi_scale_roi_align(levels, rois, ph, pw, spatial_scales, *options)
    return _as_input(result, features[0])
