"""CuPy backend: the functions of cuproi._cpu on device arrays, through kernels/*.cu.

Same names and signatures as cuproi._cpu. Importing this module does not import cupy; the first
call does. Each call runs on the device of its first array and on CuPy's current stream.
"""

from cuproi._cuda import _ops


def _on_device(op):
    def run(first, *args, **kwargs):
        import cupy

        from cuproi._cuda._launch import launch

        with first.device:
            return op(cupy, launch, first, *args, **kwargs)

    run.__name__ = run.__qualname__ = op.__name__
    return run


roi_align_forward = _on_device(_ops.roi_align_forward)
roi_align_backward = _on_device(_ops.roi_align_backward)
roi_pool_forward = _on_device(_ops.roi_pool_forward)
roi_pool_backward = _on_device(_ops.roi_pool_backward)
deform_roi_pool_forward = _on_device(_ops.deform_roi_pool_forward)
deform_roi_pool_backward = _on_device(_ops.deform_roi_pool_backward)
ps_roi_align_forward = _on_device(_ops.ps_roi_align_forward)
ps_roi_align_backward = _on_device(_ops.ps_roi_align_backward)
ps_roi_pool_forward = _on_device(_ops.ps_roi_pool_forward)
ps_roi_pool_backward = _on_device(_ops.ps_roi_pool_backward)
multi_scale_roi_align_backward = _on_device(_ops.multi_scale_roi_align_backward)
roi_align_max_forward = _on_device(_ops.roi_align_max_forward)
roi_align_max_backward = _on_device(_ops.roi_align_max_backward)
roi_align_rotated_forward = _on_device(_ops.roi_align_rotated_forward)
roi_align_rotated_backward = _on_device(_ops.roi_align_rotated_backward)
prroi_pool_forward = _on_device(_ops.prroi_pool_forward)
prroi_pool_backward = _on_device(_ops.prroi_pool_backward)


def multi_scale_roi_align_forward(features, *args, **kwargs):
    """The fused multi-level forward, on the device of the first level's features."""
    import cupy

    from cuproi._cuda._launch import launch

    with features[0].device:
        return _ops.multi_scale_roi_align_forward(cupy, launch, features, *args, **kwargs)


__all__ = [
    "deform_roi_pool_backward",
    "deform_roi_pool_forward",
    "multi_scale_roi_align_backward",
    "multi_scale_roi_align_forward",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "ps_roi_align_backward",
    "ps_roi_align_forward",
    "ps_roi_pool_backward",
    "ps_roi_pool_forward",
    "roi_align_backward",
    "roi_align_forward",
    "roi_align_max_backward",
    "roi_align_max_forward",
    "roi_align_rotated_backward",
    "roi_align_rotated_forward",
    "roi_pool_backward",
    "roi_pool_forward",
]


def __getattr__(name):
    if name == "xp":  # the array module of this backend, imported on first use
        import cupy

        return cupy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
