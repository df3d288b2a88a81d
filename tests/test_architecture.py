"""The import rules of docs/architecture.md: no private name of another module, no cycle.

Read from the source with ``ast``, not by importing: a module of cuproi may use a module of
cuproi and its public names, never a ``_name`` defined inside another module (move what two
modules share to a module both import); and the module-level imports among cuproi's modules
form no cycle (each module can be read after the ones it imports).
"""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cuproi"
TESTS = Path(__file__).resolve().parent


def _modules(package=PACKAGE):
    """{dotted name: parsed source} of every module of the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), str(path))
    return modules


def _imports(tree):
    """``(node, module, name)`` of every ``from cuproi... import name`` in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cuproi"):
            for alias in node.names:
                yield node, node.module, alias


def private_uses(modules):
    """``(module, what)`` for every private name of another module that a module uses."""
    found = []
    for name, tree in modules.items():
        imported = {}  # local name -> the cuproi module it is
        for _, module, alias in _imports(tree):
            full = f"{module}.{alias.name}"
            if full in modules:
                imported[alias.asname or alias.name] = full
            elif alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append((name, f"from {module} import {alias.name}"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{imported[node.value.id]}.{node.attr}" not in modules
            ):
                found.append((name, f"{node.value.id}.{node.attr}"))
    return found


def import_graph(modules):
    """{module: the cuproi modules it imports at module level}."""
    graph = {}
    for name, tree in modules.items():
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cuproi"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("cuproi"))
        graph[name] = deps - {name}
    return graph


def test_no_module_uses_a_private_name_of_another():
    assert private_uses(_modules()) == []


def test_module_level_imports_form_no_cycle():
    graphlib.TopologicalSorter(import_graph(_modules())).prepare()  # CycleError on a cycle


def imports_of_test_files(tests=TESTS):
    """``(file, module)`` where a test file imports another one rather than a helper module."""
    names = {path.stem for path in tests.glob("test_*.py")}
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            found += [(path.name, m) for m in modules if m.split(".")[0] in names]
    return found


def test_no_test_file_imports_another():
    """What several test files share lives in a helper module (conftest, calls, pyramids, the
    testers, host, oracles), where the next reader looks for it."""
    assert imports_of_test_files() == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """A private name used across modules and a cycle of two, in a package made for it; test
    files that import each other."""
    package = tmp_path / "cuproi"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cuproi import b\n\n\ndef _helper():\n    return b\n")
    (package / "b.py").write_text(
        "from cuproi import a\nfrom cuproi.a import _helper\n\n\ndef f():\n    return a._helper\n"
    )
    modules = _modules(package)
    assert private_uses(modules) == [
        ("cuproi.b", "from cuproi.a import _helper"),
        ("cuproi.b", "a._helper"),
    ]
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(import_graph(modules)).prepare()
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("import helpers\nfrom test_b import f\n")
    (tests / "test_b.py").write_text("import test_a\n\n\ndef f():\n    return test_a\n")
    (tests / "helpers.py").write_text("")
    assert imports_of_test_files(tests) == [("test_a.py", "test_b"), ("test_b.py", "test_a")]
