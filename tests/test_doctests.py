"""The Examples sections of cuproi's public functions run, and their shared blocks are filled.

Every module that defines a function of ``cuproi.__all__`` is run through doctest, so an op
added later has its examples run without a line here. (The torch and JAX adapters run theirs in
their own test files, where their optional imports are skipped when absent.)
"""

import doctest
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cuproi
from cuproi import _docstrings

PUBLIC = [getattr(cuproi, name) for name in cuproi.__all__ if callable(getattr(cuproi, name))]
MODULES = sorted({inspect.getmodule(inspect.unwrap(f)).__name__ for f in PUBLIC})


def test_every_op_module_is_found():
    assert {"cuproi.roi_align", "cuproi.roi_pool", "cuproi.deform_roi_pool"} <= set(MODULES)
    assert {"cuproi.multi_scale_roi_align", "cuproi._validate"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_examples_run(module, doctest_namespace):
    result = doctest.testmod(
        importlib.import_module(module),
        extraglobs=doctest_namespace,
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__name__)
def test_docstrings_are_filled(function):
    """No ``{name}`` line is left, every section is there, and ``help`` shows the text."""
    doc = function.__doc__
    assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.MULTILINE)
    for section in ("Parameters", "Returns", "Examples"):
        # cleaned: Python 3.13 strips the docstrings' indentation as it compiles them
        assert f"\n{section}\n{'-' * len(section)}\n" in inspect.cleandoc(doc)
    assert inspect.getdoc(function) == inspect.cleandoc(doc)


def test_shared_blocks_are_indented_where_they_stand():
    @_docstrings.fill(
        extra="""
        First line.
            Indented line.
        """
    )
    def example():
        """Summary.

        Parameters
        ----------
        {spatial_scale}

        Notes
        -----
        Before.
        {extra}
        After {not a block}.
        """

    doc = inspect.cleandoc(example.__doc__)  # as indented before Python 3.13 or not
    assert "\nspatial_scale : float, optional\n    Factor from box" in doc
    assert "\nBefore.\nFirst line.\n    Indented line.\n" in doc
    assert "After {not a block}." in doc


def test_an_unknown_block_raises_at_import():
    with pytest.raises(KeyError, match="no docstring block named 'nothing'"):

        @_docstrings.fill()
        def example():
            """Summary.

            {nothing}
            """


def test_imports_without_docstrings():
    """``python -OO`` strips docstrings: filling them must not fail the import."""
    root = str(Path(cuproi.__file__).resolve().parents[1])  # this checkout's cuproi
    run = subprocess.run(
        [sys.executable, "-OO", "-c", "import cuproi; assert cuproi.roi_align.__doc__ is None"],
        env=dict(os.environ, PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
