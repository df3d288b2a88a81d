"""Every public function is fully annotated, and the package ships its ``py.typed`` marker."""

import importlib.resources
import inspect
import typing

import pytest

import cuproi
from cuproi._types import ArrayT

PUBLIC = [getattr(cuproi, name) for name in cuproi.__all__ if callable(getattr(cuproi, name))]


def _unannotated(function, names=None):
    """The parameters of ``function`` (and "return") without an annotation, all resolved."""
    hints = typing.get_type_hints(function, localns=names)
    signature = inspect.signature(function)
    wanted = [p for p in signature.parameters if p != "self"] + ["return"]
    return [p for p in wanted if p not in hints]


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__name__)
def test_every_parameter_and_the_return_are_annotated(function):
    missing = _unannotated(function)
    assert not missing, f"{function.__name__}: no annotation for {missing}"


@pytest.mark.parametrize(
    "function",
    [f for f in PUBLIC if f.__name__ not in ("quantization_error", "set_eager_checks")],
    ids=lambda f: f.__name__,
)
def test_the_result_has_the_array_type_of_the_arguments(function):
    """torch in, torch out: the first array argument and the result share one type variable."""
    hints = typing.get_type_hints(function)
    first = hints[next(iter(inspect.signature(function).parameters))]
    assert ArrayT in (first, *typing.get_args(first))
    assert ArrayT in _type_variables(hints["return"])


def _type_variables(hint):
    args = typing.get_args(hint)
    return {hint} if not args else set().union(*(_type_variables(a) for a in args))


@pytest.mark.parametrize("module", ["cuproi.torch", "cuproi.jax", "cuproi.viz"])
def test_the_adapters_and_pictures_are_annotated(module):
    """Their functions, and the torch modules' constructors and forwards: py.typed covers the
    whole package (what type checkers infer through the decorators is tests/types_of_the_api.py's
    check, in CI). viz names matplotlib's types for type checkers only."""
    names = None
    if module == "cuproi.viz":
        pytest.importorskip("matplotlib")
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure

        names = {"Axes": Axes, "Figure": Figure}
    namespace = pytest.importorskip(module)
    missing = {}
    for name in namespace.__all__:
        value = getattr(namespace, name)
        methods = [value.__init__, value.forward] if inspect.isclass(value) else [value]
        for method in methods:
            if unannotated := _unannotated(method, names):
                missing[f"{name}.{method.__name__}"] = unannotated
    assert not missing, f"{module}: {missing}"


def test_py_typed_ships():
    assert importlib.resources.files("cuproi").joinpath("py.typed").is_file()


def test_torch_functions_show_the_type_of_output_size():
    """``help()`` shows the signatures TorchScript compiles, whose ``BroadcastingList2[int]`` is
    None at run time: ``output_size`` is shown as an int or a pair instead."""
    ct = pytest.importorskip("cuproi.torch")
    functions = [f for f in map(ct.__dict__.get, ct.__all__) if inspect.isfunction(f)]
    assert len(functions) == 8
    for function in functions:
        parameters = inspect.signature(function).parameters
        assert parameters["output_size"].annotation == int | tuple[int, int], function.__name__
        assert parameters["boxes"].annotation is not inspect.Parameter.empty
