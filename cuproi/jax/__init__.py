"""JAX adapter: cuproi's ops as differentiable JAX functions, on XLA's own buffers.

Importing this package imports JAX (an optional dependency, ``pip install jax``; ``import
cuproi`` alone does not). Every op of cuproi is here with the positional signature of its
array function: :func:`roi_align` (avg and max mode), :func:`roi_pool`,
:func:`deform_roi_pool` (offset and mask), :func:`ps_roi_align`, :func:`ps_roi_pool`,
:func:`roi_align_rotated`, :func:`prroi_pool` and :func:`multi_scale_roi_align` (a list of
levels). They take JAX arrays (or anything ``jax.numpy.asarray`` takes) and return JAX arrays
of the features' dtype.

- **Differentiation.** Each op is a ``jax.custom_vjp`` whose backward calls cuproi's backward
  functions, so ``jax.grad``, ``jax.vjp`` and ``jax.value_and_grad`` give the gradients of the
  features (every level), offsets and masks, and of the boxes where cuproi has a box backward
  (``roi_align``, ``deform_roi_pool``, ``prroi_pool``; the others give the boxes a zero
  cotangent). A gradient is computed only for the arrays being differentiated. Sizes, scales
  and flags are static Python values, not differentiated. Forward mode (``jax.jvp``,
  ``jax.jacfwd``, and so ``jax.hessian``, forward over reverse) is not available, as for every
  ``custom_vjp``: JAX raises a TypeError, or for ``hessian`` a ValueError naming the buffer
  callbacks of the backward.
- **Where it runs.** Each computation is a ``jax.experimental.buffer_callback`` (JAX >= 0.7):
  XLA hands it its own buffers, which cuproi reads in place through DLPack. On the CPU the
  NumPy backend writes the results into XLA's result buffers (float16 results, computed in
  float32, are copied in); on a GPU cuproi's CUDA kernels run on the device buffers, on XLA's
  CUDA stream, with no copy to the host and no synchronisation, also under ``jax.jit``. They
  need CuPy, and memory beside XLA's: JAX preallocates 75% of the GPU, so leave room with
  ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (or ``XLA_PYTHON_CLIENT_PREALLOCATE=false``). With an
  older JAX the ops run in a ``jax.pure_callback`` on host arrays instead (on a GPU, copied to
  the host and back). With ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` the gradients on a
  GPU repeat their bits (``deterministic=True``).
- **Transformations.** ``jax.jit`` with the static arguments above as Python values
  (``static_argnums`` when they are arguments of the jitted function). ``jax.vmap``: one call
  for the whole batch, its images and boxes stacked (not one call per element). ``jax.pmap``
  and ``jax.shard_map`` (with ``jax.grad``, under the default ``check_vma=True``): each device
  computes its shard. ``jax.jit`` of arrays sharded with a ``NamedSharding``: correct, but XLA
  cannot split a callback, so it gathers the arrays and every device computes the whole op;
  for data parallelism, call the op inside ``shard_map``.
- **dtypes.** float16, float32 and float64 features as in cuproi; float64 needs
  ``jax.config.update("jax_enable_x64", True)``. bfloat16 features, offsets, masks and boxes
  are computed in float32; the result (and the gradients) are then bfloat16 again.

**Errors.** Bad arguments raise cuproi's ``TypeError``, ``ValueError`` or ``IndexError`` when
the function is called, also while ``jax.jit`` traces it: ranks, shapes and dtypes of the
arrays, the static arguments, and the box values whenever the boxes are concrete arrays (one
small copy of the boxes to the host). Box values that are traced (boxes that are an argument of
a jitted function) are checked when the computation runs, by cuproi: on the CPU, JAX then
raises its own runtime error (``jax.errors.JaxRuntimeError``) whose message holds cuproi's
error type and message (under ``jax.vmap`` it names the row of all elements' boxes stacked);
on a GPU a bad box gives zeros, as cuproi's CUDA path does without ``set_eager_checks``.

The examples in the docstrings assume ``import jax``, ``import jax.numpy as jnp`` and ``import
cuproi.jax``.
"""

from cuproi.jax.deform_roi_pool import deform_roi_pool
from cuproi.jax.multi_scale_roi_align import multi_scale_roi_align
from cuproi.jax.prroi_pool import prroi_pool
from cuproi.jax.ps_roi_align import ps_roi_align
from cuproi.jax.ps_roi_pool import ps_roi_pool
from cuproi.jax.roi_align import roi_align
from cuproi.jax.roi_align_rotated import roi_align_rotated
from cuproi.jax.roi_pool import roi_pool

__all__ = [
    "deform_roi_pool",
    "multi_scale_roi_align",
    "prroi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_align_rotated",
    "roi_pool",
]
