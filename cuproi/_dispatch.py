"""The seam between CPU and GPU: the only code that looks at array types.

``prepare`` maps the arrays of a call to a backend module (``cuproi._cpu`` for NumPy,
``cuproi._cuda`` for CuPy) that exposes the same functions under the same names, plus its array
module as ``xp``; nothing else in cuproi asks which kind of array it holds.
"""

import sys

import numpy as np


def _device(array, name):
    """'cpu' or 'cuda:<id>' for a supported array; TypeError for anything else."""
    if isinstance(array, np.ndarray):
        return "cpu"
    cupy = sys.modules.get("cupy")  # a CuPy array implies cupy is imported: no import here
    if cupy is not None and isinstance(array, cupy.ndarray):
        return f"cuda:{array.device.id}"
    kind = type(array)
    raise TypeError(
        f"{name} must be a numpy.ndarray or a cupy.ndarray; got {kind.__module__}.{kind.__name__}"
    )


def _identity(result):
    return result


# Arguments that may be None (absent), and those that may be a list of per-image arrays.
_OPTIONAL = {"offset"}
_SEQUENCES = {"boxes"}


def prepare(**arrays):
    """Pick the backend for the named arrays of one call.

    Parameters
    ----------
    **arrays
        Arrays by argument name. ``offset`` may be None (absent); ``boxes`` may be a list or
        tuple of arrays (one per image).

    Returns
    -------
    backend : module
        ``cuproi._cpu`` or ``cuproi._cuda``.
    arrays : tuple
        The values in the order given.
    restore : callable
        Turns a result of the backend into the caller's array type.

    Raises
    ------
    TypeError
        For a value that is not a NumPy or CuPy array (None where an array is required).
    ValueError
        When the arrays live on different devices; nothing is copied between them.
    """
    seen = {}  # device -> first argument found there
    for name, value in arrays.items():
        if value is None and name in _OPTIONAL:
            continue
        if isinstance(value, (list, tuple)) and name in _SEQUENCES:
            items = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
        else:
            items = [(name, value)]
        for label, item in items:
            seen.setdefault(_device(item, label), label)
    if len(seen) > 1:
        where = ", ".join(f"{label} on {device}" for device, label in seen.items())
        raise ValueError(
            f"all arrays must be on one device; got {where}. Move them to the same device first."
        )
    if next(iter(seen), "cpu") == "cpu":
        from cuproi import _cpu as backend
    else:
        from cuproi import _cuda as backend
    return backend, tuple(arrays.values()), _identity
