"""Every test that needs a GPU carries the gpu mark, which asv_bench/gpu-run selects with -m gpu:
one skipped without CUDA but unmarked would never run on a GPU machine either."""

import ast
from pathlib import Path

import pytest

TESTS = sorted(Path(__file__).parent.glob("test_*.py"))


def _marks_gpu(decorators):
    return any("mark.gpu" in ast.unparse(d) for d in decorators)


def _needs_cuda(decorators):
    """A skipif decorator whose reason speaks of CUDA."""
    return any("skipif" in ast.unparse(d) and "CUDA" in ast.unparse(d) for d in decorators)


@pytest.mark.parametrize("path", TESTS, ids=[p.name for p in TESTS])
def test_cuda_tests_are_marked_gpu(path):
    tree = ast.parse(path.read_text())
    module_marked = any(
        isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "pytestmark" for t in node.targets)
        and "mark.gpu" in ast.unparse(node.value)
        for node in tree.body
    )
    unmarked = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test")
        and _needs_cuda(node.decorator_list)
        and not (module_marked or _marks_gpu(node.decorator_list))
    ]
    assert unmarked == []
