"""ONNX export of the ops: ``torch.onnx.export(model, args, dynamo=True)`` with no other argument.

The dynamo exporter translates an op by the function its registry holds for it, and builds
that registry on every export from onnxscript's ``torch_lib`` (where torchvision's ops are).
:func:`install` adds cuproi's translations there: at once if onnxscript is imported, or else
when it is (importing onnxscript takes seconds, which ``import cuproi.torch`` does not spend).

Translations use only operators of the standard ONNX domain:

- ``cuproi::roi_align`` in avg mode to ``RoiAlign``, whose reference (onnxruntime's) is
  torchvision's kernel: ``half_pixel`` for ``aligned=True``, ``output_half_pixel`` otherwise;
  ``sampling_ratio <= 0`` is ONNX's adaptive 0 (max mode is a composition);
- ``cuproi::roi_pool`` to ``MaxRoiPool``, whose bins (rounded box corners, floor and ceil of
  the bin edges) are torchvision's and cuproi's;
- the ops no ONNX operator computes to compositions (:mod:`cuproi.torch._onnx_compose`).
"""

import importlib.abc
import importlib.util
import sys

_REGISTRY = "onnxscript.function_libs.torch_lib.registration"


def _register(registration):
    """Add cuproi's translations to onnxscript's registry (module ``registration``)."""
    from onnxscript.onnx_opset import opset18 as op

    from cuproi.torch import _onnx_compose

    @registration.torch_op("cuproi::roi_align", trace_only=True)
    def cuproi_roi_align(
        input,
        rois,
        pooled_h: int,
        pooled_w: int,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
        pool_mode: str = "avg",
    ):
        options = pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
        if pool_mode == "max":  # ONNX's max mode takes the largest weighted corner: a composition
            return _onnx_compose.roi_align_max(input, rois, *options)
        return _onnx_compose.roi_align(input, rois, *options)

    def roi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
        return op.MaxRoiPool(
            input, rois, pooled_shape=(pooled_h, pooled_w), spatial_scale=spatial_scale
        )

    registration.torch_op("cuproi::roi_pool_inference", trace_only=True)(roi_pool)

    @registration.torch_op("cuproi::roi_pool", trace_only=True)
    def cuproi_roi_pool(input, rois, pooled_h: int, pooled_w: int, spatial_scale: float):
        # The argmax (a second output) feeds the backward only; an exported graph has none.
        pooled = roi_pool(input, rois, pooled_h, pooled_w, spatial_scale)
        return pooled, op.Cast(op.Mul(pooled, op.CastLike(0, pooled)), to=6)  # INT32

    _onnx_compose.register(registration)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finder that runs :func:`_register` once onnxscript's registry module is imported."""

    def find_spec(self, name, path, target=None):
        if name != _REGISTRY:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register(module)

        spec.loader.exec_module = exec_and_register
        return spec


def install():
    """Register cuproi's ONNX translations now, or when onnxscript is imported."""
    if _REGISTRY in sys.modules:
        _register(sys.modules[_REGISTRY])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
