"""What makes an op of cuproi.jax differentiable: a ``jax.custom_vjp`` around its callbacks.

An op is ``op(options, *arrays)``: static options (hashable, not differentiated) and the
arrays (features, boxes, offset, mask, levels; None where absent). Its backward calls cuproi's
backward functions for the arrays that need a gradient only: JAX says which ones are being
differentiated (``symbolic_zeros=True``), as torch's ``needs_input_grad`` does, so the box
gradient (which reads the features) is computed only when the boxes get one.
"""

import os
from typing import NamedTuple

import jax
from jax.custom_derivatives import SymbolicZero

from cuproi.jax import _callback


def deterministic():
    """Whether the GPU's gradients must repeat their bits: XLA's own switch for that.

    ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` asks XLA for deterministic GPU ops; the
    backwards then sum in fixed point (``deterministic=True``). The CPU always repeats them.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    return "--xla_gpu_deterministic_ops=true" in flags or "--xla_gpu_deterministic_ops" in flags


class Options(NamedTuple):
    """The static options of an op that takes none but the output size and the scale."""

    output_size: tuple
    spatial_scale: float


def _is_primal(value):
    return isinstance(value, jax.custom_derivatives.CustomVJPPrimal)


def _value(primal):
    return primal.value


def _perturbed(primal):
    return primal.perturbed


def op(primal, backward, forward=None):
    """A differentiable op from its callbacks.

    Parameters
    ----------
    primal : callable
        ``primal(options, *arrays) -> result``: the forward, when no gradient is taken.
    backward : callable
        ``backward(options, arrays, saved, wanted, grad) -> cotangents``: one per array (None
        for a zero gradient), for those of ``wanted`` (one bool per array, a list of bools for
        a list of levels) that are True; ``grad`` is the result's cotangent, never zero.
    forward : callable, optional
        ``forward(options, *arrays) -> (result, saved)``: the forward when a gradient will be
        taken, with what it saves for the backward. By default ``primal``, saving None.

    Returns
    -------
    callable
        ``op(options, *arrays)``. Its arrays are first made to vary along the same manual mesh
        axes (inside ``shard_map``), so that their gradients are summed over the devices where
        an argument is shared by them.
    """
    function = jax.custom_vjp(primal, nondiff_argnums=(0,))

    def fwd(options, *primals):
        arrays = jax.tree.map(_value, primals, is_leaf=_is_primal)
        wanted = jax.tree.map(_perturbed, primals, is_leaf=_is_primal)
        result, saved = forward(options, *arrays) if forward else (primal(options, *arrays), None)
        return result, (arrays, saved, wanted)

    def bwd(options, residuals, grad):
        arrays, saved, wanted = residuals
        if all(isinstance(g, SymbolicZero) for g in jax.tree.leaves(grad)):
            return (None,) * len(arrays)
        return tuple(backward(options, arrays, saved, wanted, grad))

    function.defvjp(fwd, bwd, symbolic_zeros=True)

    def call(options, *arrays):
        return function(options, *_callback.varying(arrays, _callback.vma(arrays)))

    return call


def pooling(name, box_gradient=False, channels=None, reads_input=None):
    """The op of ``cuproi.<name>(input, boxes, output_size, **options)`` of one pattern.

    Its input gradient ``cuproi.<name>_backward(grad_output, boxes, input_shape, ...)`` reads
    the boxes and the input's shape (and the features ``input=`` where
    ``reads_input(options)``, as RoI Align's max mode); the boxes' gradient is
    ``<name>_box_backward`` with ``box_gradient``, else zero. ``channels(C, (PH, PW))`` gives
    the output's channels (the position-sensitive ops'); by default the input's.

    Returns
    -------
    callable
        ``op(options, x, rois)``, where ``options`` is a NamedTuple of the other arguments by
        their names (``output_size`` among them).
    """

    def primal(options, x, rois):
        out = None if channels is None else channels(x.shape[1], options.output_size)
        result = _callback.pooled(x, rois, options.output_size, out)
        return _callback.run(name, result, {"input": x, "boxes": rois}, **options._asdict())

    def backward(options, arrays, saved, wanted, grad):
        x, rois = arrays
        static = dict(options._asdict(), deterministic=deterministic())
        grad_x = grad_rois = None
        if wanted[0]:
            inputs = {"grad_output": grad, "boxes": rois}
            if reads_input is not None and reads_input(options):
                inputs["input"] = x
            shape = tuple(x.shape)
            grad_x = _callback.run(
                f"{name}_backward", _callback.like(x), inputs, input_shape=shape, **static
            )
        if wanted[1] and box_gradient:
            inputs = {"grad_output": grad, "input": x, "boxes": rois}
            grad_rois = _callback.run(
                f"{name}_box_backward", _callback.like(rois), inputs, **static
            )
        return grad_x, grad_rois

    return op(primal, backward)
