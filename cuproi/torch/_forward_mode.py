"""Forward-mode derivatives of the ops: ``torch.func.jvp`` and ``jacfwd``, ``forward_ad``.

torch's custom ops have no forward-mode formula, and torch drops the tangents of their inputs
without a word: ``torch.func.jvp`` through an op would give a zero tangent (torchvision's ops do
the same). Every op of the adapter, forward or backward, is linear in its first tensor for the
others fixed: the features of a forward (average modes; RoI Pool and max mode are linear once
their winners are chosen), the output's gradient of a backward. So :func:`call` runs the op on
the primals and gives the result the op of the first tensor's tangent as its tangent. A tangent
of any other tensor (the boxes, offsets, masks, or the features a backward reads) raises
NotImplementedError rather than be dropped.
"""

import torch
import torch.autograd.forward_ad as fwAD


def active():
    """Whether forward-mode AD is on (a dual level entered, as ``torch.func.jvp`` does)."""
    return fwAD._current_level >= 0


def call(op, first, *rest, tangent=None):
    """``op(first, *rest)`` with the forward-mode tangent of ``first``'s tangent.

    Parameters
    ----------
    op : callable
        A custom op of the adapter, or a function of the same arguments.
    first : Tensor or list of Tensors
        Its first argument, in which it is linear (a list: the levels of the multi-level op).
    *rest
        Its other arguments; none of their tensors may carry a tangent.
    tangent : callable, optional
        ``tangent(result, t, first, *rest)``: the result's tangent for ``first``'s tangent
        ``t``, where it is not ``op(t, *rest)`` (RoI Pool: the tangent at the argmax).

    Returns
    -------
    ``op``'s result; outside forward-mode AD exactly ``op(first, *rest)``, else each tensor of it
    dual with its tangent.
    """
    if not active():  # nothing to unpack, nor for torch.compile to trace
        return op(first, *rest)
    if _nested():
        raise NotImplementedError(
            "nested forward-mode derivatives (torch.func.jacfwd of jacfwd, jvp within jvp) are "
            "not implemented for cuproi's ops: an outer level's tangents cannot be seen from an "
            "inner one"
        )
    first, t = _unpack(first)
    rest = [_unpack(value) for value in rest]
    if any(rest_tangent is not None for _, rest_tangent in rest):
        raise NotImplementedError(
            f"forward-mode derivatives of {getattr(op, '_qualname', op)} are implemented with "
            "respect to its first tensor only (the features of a forward, the output's gradient "
            "of a backward), in which it is linear; another of its tensors has a tangent (the "
            "boxes, offsets or masks, or the features a backward reads, as max mode's). Take "
            "those derivatives in reverse mode (torch.autograd.grad)."
        )
    rest = [primal for primal, _ in rest]
    result = op(first, *rest)
    if t is None:
        return result
    return _dual(result, op(t, *rest) if tangent is None else tangent(result, t, first, *rest))


def _nested():
    """Whether ``torch.func.jvp`` calls are nested: the outer ones' tangents are hidden here.

    (forward_ad's own dual levels cannot be nested.)
    """
    from torch._functorch import eager_transforms  # torch's count of nested torch.func.jvp

    return getattr(eager_transforms, "JVP_NESTING", 0) > 1


def at_argmax(t, rois, argmax):
    """RoI Pool's tangent: ``t`` (N, C, H, W) read at the argmax (K, C, PH, PW), 0 where -1."""
    n, c, h, w = t.shape
    planes = t.reshape(n, c, h * w)[rois[:, 0].long()]
    index = argmax.clamp(min=0).long().reshape(len(argmax), c, -1)
    picked = planes.gather(2, index).reshape(argmax.shape)
    return torch.where(argmax >= 0, picked, torch.zeros_like(picked))


def _unpack(value):
    """``(primal, tangent)`` of a tensor or a list of tensors; the tangent None where none has one.

    A list's missing tangents are zeros (a level of the multi-level op without one).
    """
    if isinstance(value, torch.Tensor):
        return tuple(fwAD.unpack_dual(value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        parts = [fwAD.unpack_dual(v) for v in value]
        primals = [p for p, _ in parts]
        if all(t is None for _, t in parts):
            return primals, None
        return primals, [torch.zeros_like(p) if t is None else t for p, t in parts]
    return value, None


def _dual(result, tangent):
    """``result`` (a tensor, None, or a tuple or list of them) dual with ``tangent``'s tensors.

    Integer tensors (RoI Pool's argmax) and results without a tangent stay as they are.
    """
    if isinstance(result, (list, tuple)):
        return type(result)(_dual(r, t) for r, t in zip(result, tangent, strict=True))
    if result is None or tangent is None or not result.is_floating_point():
        return result
    return fwAD.make_dual(result, tangent)
