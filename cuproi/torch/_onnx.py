"""ONNX export of the ops by ``torch.onnx.export``, with no other argument, by either exporter.

The dynamo exporter translates an op by the function its registry holds for it, and builds
that registry on every export from onnxscript's ``torch_lib`` (where torchvision's ops are).
:func:`install` adds cuproi's translations there: at once if onnxscript is imported, or else
when it is (importing onnxscript takes seconds, which ``import cuproi.torch`` does not spend).
It registers the legacy exporter's (``dynamo=False``) symbolic functions, which emit the same
translations (:mod:`cuproi.torch._onnx_legacy`), when ``torch.onnx`` is imported.

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
    from cuproi.torch import _onnx_compose

    _onnx_compose.register(registration)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finder that runs ``then(module)`` once the module ``name`` is imported."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            self.then(module)

        spec.loader.exec_module = exec_and_register
        return spec


def _register_symbolics(onnx):
    """Register the legacy exporter's symbolic functions (module ``onnx``, torch.onnx)."""
    from cuproi.torch import _onnx_legacy

    _onnx_legacy.register(onnx)


def _after_import(name, then):
    """``then(module)`` now if the module ``name`` is imported, else once it is."""
    if name in sys.modules:
        then(sys.modules[name])
    elif not any(
        isinstance(finder, _AfterImport) and finder.name == name for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _AfterImport(name, then))


def install():
    """Register cuproi's ONNX translations now, or when their exporter is imported.

    The dynamo exporter's, once onnxscript's registry is imported; the legacy exporter's
    symbolic functions, once ``torch.onnx`` is.
    """
    _after_import(_REGISTRY, _register)
    _after_import("torch.onnx", _register_symbolics)
