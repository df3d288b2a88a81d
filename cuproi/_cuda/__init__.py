"""CuPy backend: the functions of cuproi._cpu on device arrays, through kernels/*.cu.

Same names and signatures as cuproi._cpu (see there for how they follow the public API).
Importing this module does not import cupy; the first call does. Each call runs on the device
of its first array (the first level's features for multi_scale_roi_align) and on CuPy's
current stream.

Every function here is ``cuproi._cuda.<op module>.<name>`` with its first argument, the
``_launch.Device`` it launches on, bound to CuPy and the CUDA launcher; the unbound function is
its ``__wrapped__`` (the tests bind it to NumPy and the kernels compiled for the host).
"""

import functools
import inspect

from cuproi._cuda import (
    deform_roi_pool,
    multi_scale_roi_align,
    prroi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_align_rotated,
    roi_pool,
)


def _gpu():
    """CuPy and the CUDA launcher (cupy looked up on every call, as an import would)."""
    import cupy

    from cuproi._cuda import _launch

    return _launch.Device(cupy, _launch.launch)


def _on_device(op):
    @functools.wraps(op)
    def run(first, *args, **kwargs):
        arrays = first if isinstance(first, list) else [first]
        with arrays[0].device:
            return op(_gpu(), first, *args, **kwargs)

    # The signature callers see: without the device.
    signature = inspect.signature(op)
    run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return run


__all__ = [
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "deform_roi_pool_box_backward",
    "multi_scale_roi_align",
    "multi_scale_roi_align_backward",
    "prroi_pool",
    "prroi_pool_backward",
    "prroi_pool_box_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "roi_align_box_backward",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "roi_pool",
    "roi_pool_backward",
]

_MODULES = (
    deform_roi_pool,
    multi_scale_roi_align,
    prroi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_align_rotated,
    roi_pool,
)
# Every entry point, from the module of its op, on the GPU (the module names are rebound here).
globals().update(
    {name: _on_device(getattr(m, name)) for m in _MODULES for name in __all__ if hasattr(m, name)}
)


def __getattr__(name):
    if name == "xp":  # the array module of this backend, imported on first use
        import cupy

        return cupy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
