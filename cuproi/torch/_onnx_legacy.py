"""ONNX export by torch's legacy exporter: ``torch.onnx.export(model, args, dynamo=False)``.

:func:`register` gives every ``cuproi::`` op a symbolic function (opset 18) when ``torch.onnx``
is imported (:func:`cuproi.torch._onnx.install`; importing it takes a tenth of a second, which
``import cuproi.torch`` does not spend). A symbolic function runs the dynamo exporter's
translation of its op (:data:`cuproi.torch._onnx_compose.TRANSLATIONS`) with every node emitted
into the exporter's TorchScript graph (:class:`GraphOps`): both exporters give the same graphs
of standard ONNX operators. Building them imports onnxscript, at the first export only.
"""

import inspect

import numpy as np
import torch

from cuproi import _dispatch

OPSET = 18  # the translations' operators (ReduceMax's axes as an input: opset 18)


class GraphOps:
    """ONNX operators as attributes, as onnxscript's opsets, that add nodes to graph ``g``.

    Inputs may be graph values or Python numbers and lists (constants: int64 or float32, as
    onnxscript takes them); attributes are Python values, typed by their kind as ``g.op`` wants, and
    tensors (``onnx_ir`` tensors or numpy arrays).
    """

    def __init__(self, g):
        self.g = g

    def __getattr__(self, name):
        def emit(*inputs, **attributes):
            values = [self.constant(v) for v in inputs]
            typed = dict(typed_attribute(key, v) for key, v in attributes.items())
            return self.g.op(name, *values, **typed)

        return emit

    def constant(self, value):
        """``value`` as a graph value: itself if it is one, else a constant."""
        if isinstance(value, torch._C.Value):
            return value
        return self.g.op("Constant", value_t=torch.tensor(value))  # int64 or float32


def typed_attribute(key, value):
    """``(key_<kind>, value)`` of an attribute, the kind ``g.op`` reads from the name."""
    if isinstance(value, np.ndarray) or hasattr(value, "numpy"):  # a tensor
        array = value if isinstance(value, np.ndarray) else value.numpy()
        return f"{key}_t", torch.from_numpy(np.array(array))
    if isinstance(value, (list, tuple)):
        kind = "f" if any(isinstance(v, float) for v in value) else "i"
        return f"{key}_{kind}", list(value)
    if isinstance(value, str):
        return f"{key}_s", value
    if isinstance(value, float):
        return f"{key}_f", value
    return f"{key}_i", int(value)  # ints, bools and enums (a Cast's ``to``)


# parse_args's descriptors of the schemas' types of Python values (the others: graph values).
_DESCRIPTORS = {
    "int": "i",
    "SymInt": "i",
    "float": "f",
    "bool": "b",
    "str": "s",
    "List[float]": "fs",
}


def _descriptor(argument):
    """``parse_args``'s descriptor of a schema argument: its Python value, or the graph value."""
    return _DESCRIPTORS.get(str(argument.type), "v")


def _argument(value, argument):
    """The translation's argument of a parsed one: None, a list of graph values, or itself."""
    kind = str(argument.type)
    if kind == "Optional[Tensor]" and value.node().mustBeNone():
        return None
    if kind == "List[Tensor]":  # a prim::ListConstruct of the levels
        return list(value.node().inputs())
    return value


def symbolic(name):
    """The symbolic function of ``cuproi::<name>``: its translation, emitted into the graph."""

    def run(g, *values):
        from torch.onnx import symbolic_helper

        from cuproi.torch import _onnx_compose

        arguments = getattr(torch.ops.cuproi, name).default._schema.arguments

        def translate(g, *parsed):
            args = [_argument(v, a) for v, a in zip(parsed, arguments, strict=True)]
            with _onnx_compose.emitting(GraphOps(g)):
                return _onnx_compose.TRANSLATIONS[name](*args)

        # parse_args names the arguments (in its messages too) by the signature.
        parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
        translate.__signature__ = inspect.Signature(
            [inspect.Parameter(a, parameter) for a in ["g", *(a.name for a in arguments)]]
        )
        parse = symbolic_helper.parse_args(*map(_descriptor, arguments))
        return parse(translate)(g, *values)

    return run


# The ops, as _onnx_compose.TRANSLATIONS names them (that module imports onnxscript): cuproi's,
# and roi_pool's inference form (no argmax).
OPS = (*_dispatch.OPS, "roi_pool_inference")


def register(onnx):
    """Register the symbolic function of every op with ``onnx`` (torch.onnx), if it has them."""
    if not hasattr(onnx, "register_custom_op_symbolic"):  # a torch without the legacy exporter
        return
    for name in OPS:
        onnx.register_custom_op_symbolic(f"cuproi::{name}", symbolic(name), OPSET)
