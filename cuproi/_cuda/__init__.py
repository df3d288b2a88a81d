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

from cuproi import _dispatch


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


__all__ = [name for names in _dispatch.OPS.values() for name in names]

# Every entry point, from the module of its op, on the GPU (the names of the op modules are
# rebound here to their ops' functions).
globals().update(_dispatch.entry_points("cuproi._cuda", _on_device))


def __getattr__(name):
    if name == "xp":  # the array module of this backend, imported on first use
        import cupy

        return cupy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
