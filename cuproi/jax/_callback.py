"""cuproi's array functions inside a JAX program, on XLA's own buffers.

:func:`run` puts a call ``cuproi.<function>(**arrays, **options)`` into the program as a
``jax.experimental.buffer_callback``. When the program runs, XLA calls it with its buffers (the
arguments' and the results') and, on a GPU, its CUDA stream. The callback views the buffers
through DLPack, without copying them: NumPy arrays on the CPU, CuPy arrays on a GPU, where
cuproi's CUDA kernels then run on XLA's stream (nothing is copied to the host, nothing waits
for the device). XLA's result buffers are lent to cuproi's backend (:mod:`cuproi._results`),
which writes its results into them; a result it computes elsewhere (float16 computed in
float32, say) is copied in (:func:`_write`).

JAX without ``buffer_callback`` (before 0.7) gets a ``jax.pure_callback`` instead: host NumPy
arrays in, results copied into XLA's memory, and on a GPU both ways through the host.

Under ``jax.vmap`` the callback is called once for the whole batch, with the batch axes in
front of every array (``vmap_method="expand_dims"``), and folds them into one call (_batch).
Inside ``shard_map`` the results get the varying manual axes of the arguments, which JAX's
callbacks leave out (:func:`varying`).
"""

import dataclasses

import jax
import numpy as np

import cuproi
import cuproi._cpu  # noqa: F401  (what a callback runs, imported up front: see _Call)
from cuproi import _results
from cuproi.jax import _batch

try:
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # JAX < 0.7: jax.pure_callback, through host arrays
    _buffer_callback = None

_DLPACK_CUDA = 2  # DLDeviceType kDLCUDA
_VMAP_METHOD = "expand_dims"  # the batch axes reach the callback, which folds them (_batch)


@dataclasses.dataclass(frozen=True)
class _Call:
    """The body of a callback: ``cuproi.<function>(**arrays, **options)``.

    Frozen, so hashable and equal for equal arguments: JAX reuses the callback it compiled for
    an earlier eager call instead of compiling a new one on every call.

    cuproi's NumPy backend is imported with this module, not on the first call as cuproi does:
    JAX dispatches asynchronously, so a callback may run while the interpreter shuts down (a
    computation still pending when the script ends), when that import would fail (its thread
    pool registers an exit hook: "can't register atexit after shutdown").
    """

    function: str
    options: tuple  # ((name, value), ...)

    def __call__(self, context, outputs, **arrays):
        """``buffer_callback``'s body: XLA's buffers, and its context (the CUDA stream)."""
        kind, device = jax.tree.leaves(outputs)[0].__dlpack_device__()
        if kind != _DLPACK_CUDA:
            self._into(np, np.from_dlpack, outputs, arrays)
            return
        try:
            import cupy
        except ImportError:
            raise ImportError(
                "cuproi.jax runs JAX's GPU arrays on cuproi's CUDA kernels, through CuPy: pip "
                "install cupy-cuda12x or cupy-cuda13x, for your CUDA version"
            ) from None
        # Entering XLA's stream makes CuPy launch on it and hand it to every DLPack export.
        with cupy.cuda.Device(device), cupy.cuda.ExternalStream(context.stream, device):
            self._into(cupy, cupy.from_dlpack, outputs, arrays)

    def on_host(self, **arrays):
        """``pure_callback``'s body: host arrays in, the results returned."""
        arrays, options, batch = _batch.fold(np, self.function, arrays, dict(self.options))
        results = getattr(cuproi, self.function)(**arrays, **options)
        return jax.tree.map(lambda r: _batch.unfold(r, batch), results)

    def _into(self, xp, view, outputs, arrays):
        """The call on ``view``s of the buffers, its results in (or copied into) ``outputs``."""
        arrays = jax.tree.map(view, arrays)
        arrays, options, batch = _batch.fold(xp, self.function, arrays, dict(self.options))
        targets = [_batch.fold_result(view(b), batch) for b in jax.tree.leaves(outputs)]
        with _results.lend(targets):
            results = getattr(cuproi, self.function)(**arrays, **options)
        _write(xp, targets, jax.tree.leaves(results))


def _address(array):
    return array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr


def _same(a, b):
    """Whether ``a`` and ``b`` are the same elements of the same memory."""
    layout = (a.shape, a.strides, a.dtype) == (b.shape, b.strides, b.dtype)
    return layout and (a.size == 0 or _address(a) == _address(b))


def copy(target, result):
    """``target[...] = result``: a result the backend did not write into XLA's buffer."""
    target[...] = result


def _write(xp, targets, results):
    """Put every result in its target; those the backend wrote there already stay.

    A result may lie in another target's memory (a lent buffer that an allocation of the same
    size took, :mod:`cuproi._results`): such results are copied aside before any is written.
    """
    pending = [(t, r) for t, r in zip(targets, results, strict=True) if not _same(t, r)]
    pending = [
        (t, r.copy() if any(xp.may_share_memory(r, other) for other in targets) else r)
        for t, r in pending
    ]
    for target, result in pending:
        copy(target, result)


def _vma(array):
    """The manual mesh axes along which ``array`` varies (inside ``shard_map``), or none."""
    typeof = getattr(jax, "typeof", None)  # JAX >= 0.4.36
    if typeof is None:
        return frozenset()
    aval = typeof(array)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; ``vma`` before it
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def vma(tree):
    """The manual axes along which any array of ``tree`` varies."""
    return frozenset().union(*(_vma(a) for a in jax.tree.leaves(tree)))


def varying(tree, axes):
    """``tree``'s arrays typed as varying along ``axes`` (no data moves).

    JAX's callbacks type their results as varying along no manual axis. Inside ``shard_map``
    (with its default ``check_vma=True``) a result computed from varying arguments must say so,
    or JAX refuses the custom VJP's gradients ("manual axis types do not match").
    """
    cast = getattr(jax.lax, "pcast", None)  # JAX >= 0.8.2; pvary before it

    def one(array):
        missing = tuple(sorted(axes - _vma(array)))
        if not missing:
            return array
        if cast is not None:
            return cast(array, missing, to="varying")
        return jax.lax.pvary(array, missing)

    return jax.tree.map(one, tree)


def run(function, results, arrays, **options):
    """``cuproi.<function>(**arrays, **options)`` as a computation of the JAX program.

    Parameters
    ----------
    function : str
        The name of one of cuproi's array functions.
    results : pytree of jax.ShapeDtypeStruct
        The shapes and dtypes of what it returns, in its structure (None for a None result).
    arrays : dict
        Its array arguments by name: JAX arrays, lists of them, or None.
    **options
        Its other arguments, hashable (tuples, not lists).

    Returns
    -------
    pytree of jax.Array
        The results, varying along the manual axes of ``arrays`` (see :func:`varying`).
    """
    call = _Call(function, tuple(sorted(options.items())))
    if _buffer_callback is None:
        out = jax.pure_callback(call.on_host, results, vmap_method=_VMAP_METHOD, **arrays)
    else:
        out = _buffer_callback(call, results, vmap_method=_VMAP_METHOD)(**arrays)
    return varying(out, vma(arrays))


def pooled(x, rois, output_size, channels=None):
    """The (K, C, PH, PW) result of a forward, in the dtype of the features ``x``."""
    shape = (rois.shape[0], x.shape[1] if channels is None else channels, *output_size)
    return jax.ShapeDtypeStruct(shape, x.dtype)


def like(array):
    """A result of the shape and dtype of ``array`` (a gradient of it)."""
    return jax.ShapeDtypeStruct(array.shape, array.dtype)
