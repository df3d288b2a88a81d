"""JAX adapter: cuproi's ops as differentiable JAX functions.

Importing this module imports JAX (an optional dependency, ``pip install jax``;
``import cuproi`` alone does not). :func:`roi_align`, :func:`roi_pool` and
:func:`deform_roi_pool` keep the positional signatures of cuproi's array functions, take JAX
arrays (or anything ``jax.numpy.asarray`` takes) and return JAX arrays of the input's dtype.

- **Differentiation.** Each op is a ``jax.custom_vjp`` whose backward calls cuproi's backward
  function (:func:`cuproi.roi_align_backward`, :func:`cuproi.roi_pool_backward` with the argmax
  of the forward, :func:`cuproi.deform_roi_pool_backward`), so ``jax.grad``, ``jax.vjp`` and
  ``jax.value_and_grad`` give the gradients for the features and the offsets. No gradient flows
  to the boxes: their cotangent is zero. ``output_size``, ``spatial_scale``, ``sampling_ratio``,
  ``aligned`` and ``gamma`` are static Python values, not differentiated. Forward mode
  (``jax.jvp``, ``jax.jacfwd``) is not available, as for every ``custom_vjp``.
- **jit and vmap.** The computation runs in ``jax.pure_callback`` with the result shapes and
  dtypes declared up front (``K`` is ``boxes.shape[0]``), so the ops work under ``jax.jit`` with
  the static arguments above passed as Python values (``static_argnums`` when they are arguments
  of the jitted function). Under ``jax.vmap`` the host function is called once per batch element
  (``vmap_method="sequential"``).
- **dtypes.** float16, float32 and float64 features as in cuproi; float64 needs
  ``jax.config.update("jax_enable_x64", True)`` (without it JAX makes every array float32).
  bfloat16 features, offsets and boxes, which NumPy cannot hold, are computed in float32; the
  result (and the gradients) are then bfloat16 again.

**What happens on a GPU.** JAX hands a ``pure_callback`` host arrays: JAX arrays on a GPU are
copied to the host, computed by cuproi's NumPy backend, and the results copied back to the GPU.
That is correct and differentiable, also under ``jax.jit``, but it runs at CPU speed plus two
transfers per call, not at the speed of cuproi's CUDA kernels. The CUDA kernels are reached from
JAX GPU arrays by calling the plain array functions (``cuproi.roi_align`` and the others, not
this module's) on them outside ``jax.jit``: they take the arrays through DLPack without copying,
run on the arrays' GPU, and return JAX arrays there, but JAX can neither trace nor differentiate
those calls (call the backward functions yourself for gradients).

**Errors.** Bad arguments raise cuproi's ``TypeError``, ``ValueError`` or ``IndexError`` when
the function is called, also while ``jax.jit`` traces it: ranks, shapes and dtypes of the
arrays, the static arguments, and the box values whenever the boxes are concrete arrays (one
small copy of the boxes to the host). Box values that are traced (boxes that are an argument of a
jitted function) are checked only when the computation runs; JAX then raises its own runtime
error (``jax.errors.JaxRuntimeError``) whose message contains cuproi's error type and message.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

import cuproi
import cuproi._cpu  # noqa: F401  (what the callbacks run, imported up front: see _OnHost)
from cuproi import _validate

__all__ = ["deform_roi_pool", "roi_align", "roi_pool"]

# How jax.vmap runs the host functions: one call per batch element.
_VMAP_METHOD = "sequential"


class _ShapesOnly:
    """The array module given to cuproi's checks of (possibly traced) JAX arrays.

    The checks of features and offsets read ``ndim``, ``shape`` and ``dtype`` and end with
    ``xp.ascontiguousarray``, which here returns the array untouched: nothing is computed.
    """

    @staticmethod
    def ascontiguousarray(array, dtype=None):
        return array


@dataclasses.dataclass(frozen=True)
class _OnHost:
    """The body of a callback: a cuproi function applied to host NumPy arrays.

    Frozen, so hashable and equal for equal arguments: JAX then reuses the callback it compiled
    for an earlier eager call instead of compiling a new one on every call.

    The NumPy backend it calls is imported with this module, not on the first call as cuproi
    does: JAX dispatches asynchronously, so a callback may run while the interpreter shuts
    down (a computation still pending when the script ends), when that import would fail
    (its thread pool registers an exit hook: "can't register atexit after shutdown"). The
    backend needs NumPy and SciPy, never CuPy.
    """

    function: str
    keywords: tuple  # ((name, value), ...), hashable

    def __call__(self, *arrays):
        arrays = [None if a is None else np.asarray(a) for a in arrays]
        return getattr(cuproi, self.function)(*arrays, **dict(self.keywords))


def _host(function, result, *arrays, **keywords):
    """``cuproi.<function>(*arrays, **keywords)`` on the host, as a JAX computation."""
    callback = _OnHost(function, tuple(sorted(keywords.items())))
    return jax.pure_callback(callback, result, *arrays, vmap_method=_VMAP_METHOD)


def _features(x, name="input"):
    """(N, C, H, W) floating JAX array, checked as cuproi checks it (shape and dtype only)."""
    return _validate.features(_ShapesOnly, x, name)


def _concrete(array):
    """The array as NumPy when its values are known; zeros of its shape and dtype when traced."""
    try:
        return np.asarray(array)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return np.zeros(array.shape, array.dtype)


def _boxes(boxes, x, scale):
    """(K, 5) JAX boxes in the compute dtype of ``x``, from an array or a list of (L, 4) arrays.

    cuproi's own check runs on a host copy of the boxes: all of it (batch indices, finite and
    bounded coordinates) when their values are known, shapes and dtypes when they are traced.
    """
    per_image = isinstance(boxes, (list, tuple))
    arrays = [jnp.asarray(b) for b in boxes] if per_image else jnp.asarray(boxes)
    host = [_concrete(b) for b in arrays] if per_image else _concrete(arrays)
    _validate.boxes(np, host, x.shape[0], scale, x.dtype)
    ct = _validate.compute_dtype(x.dtype)
    if not per_image:
        return arrays.astype(ct)
    parts = [
        jnp.concatenate([jnp.full((b.shape[0], 1), i, ct), b.astype(ct)], axis=1)
        for i, b in enumerate(arrays)
    ]
    return jnp.concatenate(parts) if parts else jnp.zeros((0, 5), ct)


def _float32(value):
    """``value`` with its bfloat16 arrays (also inside lists and tuples) cast to float32."""
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(item) for item in value)
    if getattr(value, "dtype", None) == jnp.bfloat16:
        return jnp.asarray(value, jnp.float32)
    return value


def _bfloat16_in_float32(function):
    """Compute ``function``'s bfloat16 arrays in float32; bfloat16 features give bfloat16.

    The casts are JAX operations: ``jax.grad`` and ``jax.jit`` see through them, and the
    gradients of bfloat16 arrays come back in bfloat16.
    """

    @functools.wraps(function)
    def wrapper(input, *args, **kwargs):
        kwargs = {name: _float32(value) for name, value in kwargs.items()}
        result = function(_float32(input), *_float32(args), **kwargs)
        if getattr(input, "dtype", None) == jnp.bfloat16:
            return result.astype(jnp.bfloat16)
        return result

    return wrapper


def _pooled_shape(x, rois, pooled):
    return jax.ShapeDtypeStruct((rois.shape[0], x.shape[1], *pooled), x.dtype)


# ---- roi_align -------------------------------------------------------------------------------


def _roi_align_forward(static, x, rois):
    pooled, scale, ratio, aligned, _ = static
    return _host(
        "roi_align",
        _pooled_shape(x, rois, pooled),
        x,
        rois,
        output_size=pooled,
        spatial_scale=scale,
        sampling_ratio=ratio,
        aligned=aligned,
    )


_roi_align = jax.custom_vjp(_roi_align_forward, nondiff_argnums=(0,))


def _roi_align_fwd(static, x, rois):
    return _roi_align_forward(static, x, rois), rois


def _roi_align_bwd(static, rois, grad):
    pooled, scale, ratio, aligned, shape = static
    grad_input = _host(
        "roi_align_backward",
        jax.ShapeDtypeStruct(shape, grad.dtype),
        grad,
        rois,
        input_shape=shape,
        output_size=pooled,
        spatial_scale=scale,
        sampling_ratio=ratio,
        aligned=aligned,
    )
    return grad_input, jnp.zeros_like(rois)


_roi_align.defvjp(_roi_align_fwd, _roi_align_bwd)


@_bfloat16_in_float32
def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Differentiable :func:`cuproi.roi_align` on JAX arrays (RoI Align).

    Parameters
    ----------
    input : (N, C, H, W) jax.Array
        Features, float16, float32 or float64 (float64 needs ``jax_enable_x64``); bfloat16
        is computed in float32 and returned as bfloat16.
    boxes : (K, 5) jax.Array or list of (L_i, 4) jax.Array
        ``[batch_index, x1, y1, x2, y2]`` per box in input-image coordinates, or one
        ``[x1, y1, x2, y2]`` array per image (torchvision's convention). Read in float32 (float64
        for float64 features).
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; static.
    spatial_scale : float, optional
        Factor from box coordinates to feature coordinates, e.g. 1/16 for stride 16; static.
    sampling_ratio : int, optional
        Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)``; static.
    aligned : bool, optional
        Shift boxes by -0.5 cell (half-pixel convention); static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input`` through
        :func:`cuproi.roi_align_backward`. The gradient with respect to ``boxes`` is zero.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.roi_align`. Under ``jax.jit`` with traced boxes, bad box values are
        found when the computation runs and reported by JAX as a ``JaxRuntimeError`` that
        contains cuproi's message (see the module's documentation).

    Notes
    -----
    The values are those of :func:`cuproi.roi_align` (torchvision's semantics), computed by the
    NumPy backend in a ``jax.pure_callback``. On a GPU the arrays are copied to the host and
    back: correct and differentiable, but not GPU speed. For the CUDA kernels, call
    :func:`cuproi.roi_align` itself on the GPU arrays outside ``jax.jit`` (DLPack, no copy, not
    differentiable).

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import cuproi.jax
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> cuproi.jax.roi_align(x, boxes, 1, sampling_ratio=2, aligned=True)
    Array([[[[2.5]]]], dtype=float32)
    >>> loss = lambda x: cuproi.jax.roi_align(x, boxes, 1, sampling_ratio=2, aligned=True).sum()
    >>> jax.jit(jax.grad(loss))(x)[0, 0]
    Array([[0.25, 0.25, 0.  , 0.  ],
           [0.25, 0.25, 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    """
    x = jnp.asarray(input)  # cuproi's order of checks: scalars, then features, then boxes
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    x = _features(x)
    rois = _boxes(boxes, x, scale)
    _validate.pooled_result(rois.shape[0], x.shape[1], pooled)  # here, not in the callback
    aligned = _validate.flag(aligned, "aligned")
    return _roi_align((pooled, scale, ratio, aligned, tuple(x.shape)), x, rois)


# ---- roi_pool --------------------------------------------------------------------------------


def _roi_pool_with_argmax(static, x, rois):
    pooled, scale, _ = static
    out = _pooled_shape(x, rois, pooled)
    result = (out, jax.ShapeDtypeStruct(out.shape, np.int32))
    return _host(
        "roi_pool", result, x, rois, output_size=pooled, spatial_scale=scale, return_argmax=True
    )


def _roi_pool_forward(static, x, rois):
    # The primal alone (no gradient taken): no argmax, which the CPU finds twice as fast.
    pooled, scale, _ = static
    out = _pooled_shape(x, rois, pooled)
    return _host("roi_pool", out, x, rois, output_size=pooled, spatial_scale=scale)


_roi_pool = jax.custom_vjp(_roi_pool_forward, nondiff_argnums=(0,))


def _roi_pool_fwd(static, x, rois):
    out, argmax = _roi_pool_with_argmax(static, x, rois)
    return out, (rois, argmax)


def _roi_pool_bwd(static, residuals, grad):
    _, _, shape = static
    rois, argmax = residuals
    grad_input = _host(
        "roi_pool_backward",
        jax.ShapeDtypeStruct(shape, grad.dtype),
        grad,
        rois,
        argmax,
        input_shape=shape,
    )
    return grad_input, jnp.zeros_like(rois)


_roi_pool.defvjp(_roi_pool_fwd, _roi_pool_bwd)


@_bfloat16_in_float32
def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Differentiable :func:`cuproi.roi_pool` on JAX arrays (RoI Pool, max over bins).

    Parameters
    ----------
    input : (N, C, H, W) jax.Array
        Features, float16, float32 or float64 (float64 needs ``jax_enable_x64``); bfloat16
        is computed in float32 and returned as bfloat16.
    boxes : (K, 5) jax.Array or list of (L_i, 4) jax.Array
        ``[batch_index, x1, y1, x2, y2]`` per box, or one ``[x1, y1, x2, y2]`` array per image.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; static.
    spatial_scale : float, optional
        Factor from box coordinates to feature coordinates; static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input``: the backward sends
        every output gradient to the cell its bin took the maximum from
        (:func:`cuproi.roi_pool_backward` with the argmax of the forward). The gradient with
        respect to ``boxes`` is zero.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.roi_pool`; see :func:`roi_align` for errors under ``jax.jit``.

    Notes
    -----
    The values are those of :func:`cuproi.roi_pool` (torchvision's semantics), computed by the
    NumPy backend in a ``jax.pure_callback``; on a GPU the arrays are copied to the host and
    back (see the module's documentation).

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import cuproi.jax
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0, 0, 3, 3]])
    >>> cuproi.jax.roi_pool(x, boxes, 2)[0, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    >>> jax.grad(lambda x: cuproi.jax.roi_pool(x, boxes, 2).sum())(x)[0, 0]
    Array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]], dtype=float32)
    """
    x = jnp.asarray(input)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    x = _features(x)
    rois = _boxes(boxes, x, scale)
    _validate.pooled_result(rois.shape[0], x.shape[1], pooled)  # here, not in the callback
    return _roi_pool((pooled, scale, tuple(x.shape)), x, rois)


# ---- deform_roi_pool -------------------------------------------------------------------------


def _deform_roi_pool_forward(static, x, rois, offset):
    pooled, scale, ratio, gamma = static
    return _host(
        "deform_roi_pool",
        _pooled_shape(x, rois, pooled),
        x,
        rois,
        offset,
        output_size=pooled,
        spatial_scale=scale,
        sampling_ratio=ratio,
        gamma=gamma,
    )


_deform_roi_pool = jax.custom_vjp(_deform_roi_pool_forward, nondiff_argnums=(0,))


def _deform_roi_pool_fwd(static, x, rois, offset):
    return _deform_roi_pool_forward(static, x, rois, offset), (x, rois, offset)


def _deform_roi_pool_bwd(static, residuals, grad):
    pooled, scale, ratio, gamma = static
    x, rois, offset = residuals
    result = (
        jax.ShapeDtypeStruct(x.shape, grad.dtype),
        None if offset is None else jax.ShapeDtypeStruct(offset.shape, offset.dtype),
        None,  # grad_mask: no mask here
    )
    grad_input, grad_offset, _ = _host(
        "deform_roi_pool_backward",
        result,
        grad,
        x,
        rois,
        offset,
        output_size=pooled,
        spatial_scale=scale,
        sampling_ratio=ratio,
        gamma=gamma,
    )
    return grad_input, jnp.zeros_like(rois), grad_offset


_deform_roi_pool.defvjp(_deform_roi_pool_fwd, _deform_roi_pool_bwd)


@_bfloat16_in_float32
def deform_roi_pool(
    input, boxes, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1
):
    """Differentiable :func:`cuproi.deform_roi_pool` on JAX arrays (Deformable RoI Pooling).

    Parameters
    ----------
    input : (N, C, H, W) jax.Array
        Features, float16, float32 or float64 (float64 needs ``jax_enable_x64``); bfloat16
        is computed in float32 and returned as bfloat16.
    boxes : (K, 5) jax.Array or list of (L_i, 4) jax.Array
        ``[batch_index, x1, y1, x2, y2]`` per box, or one ``[x1, y1, x2, y2]`` array per image.
    offset : (K, 2, PH, PW) jax.Array or None
        Per-bin shift, channel 0 along x and channel 1 along y, in units of the box width and
        height, multiplied by ``gamma``; floating. None pools without shifts.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; static.
    spatial_scale : float, optional
        Factor from box coordinates to feature coordinates; static.
    sampling_ratio : int, optional
        Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)``; static.
    gamma : float, optional
        Scale of the offsets (0.1 in the paper and in mmcv); static.

    Returns
    -------
    (K, C, PH, PW) jax.Array
        Same dtype as ``input``; differentiable with respect to ``input`` and ``offset`` through
        :func:`cuproi.deform_roi_pool_backward` (the offset's gradient has the offset's dtype).
        The gradient with respect to ``boxes`` is zero.

    Raises
    ------
    TypeError, ValueError, IndexError
        As :func:`cuproi.deform_roi_pool`; see :func:`roi_align` for errors under ``jax.jit``.

    Notes
    -----
    mmcv's semantics, as :func:`cuproi.deform_roi_pool`, computed by the NumPy backend in a
    ``jax.pure_callback``; on a GPU the arrays are copied to the host and back (see the module's
    documentation). The offset gradient is the true derivative of the forward, taken from the
    right at the kinks of bilinear interpolation (integer sample positions).

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import cuproi.jax
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> boxes = jnp.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> offset = jnp.zeros((1, 2, 1, 1)).at[0, 0].set(5.0)  # right by 0.1 * 2 * 5 = 1 cell
    >>> cuproi.jax.deform_roi_pool(x, boxes, offset, 1, sampling_ratio=2)
    Array([[[[3.5]]]], dtype=float32)
    >>> loss = lambda o: cuproi.jax.deform_roi_pool(x, boxes, o, 1, sampling_ratio=2).sum()
    >>> jax.grad(loss)(jnp.zeros((1, 2, 1, 1))).ravel()  # 0.1 * 2 cells * slopes 1 and 4
    Array([0.2, 0.8], dtype=float32)
    """
    x = jnp.asarray(input)
    pooled = _validate.output_size(output_size)
    scale = _validate.spatial_scale(spatial_scale)
    ratio = _validate.sampling_ratio(sampling_ratio)
    shift = _validate.gamma(gamma)
    x = _features(x)
    rois = _boxes(boxes, x, scale)
    _validate.pooled_result(rois.shape[0], x.shape[1], pooled)  # here, not in the callback
    if offset is not None:
        offset = _validate.offset(_ShapesOnly, jnp.asarray(offset), rois.shape[0], pooled, x.dtype)
    return _deform_roi_pool((pooled, scale, ratio, shift), x, rois, offset)
