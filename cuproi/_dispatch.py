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


def prepare(**arrays):
    """Pick the backend for the named arrays of one call.

    Parameters
    ----------
    **arrays
        Arrays by argument name; a value may also be None (an absent optional array) or a list
        or tuple of arrays (per-image boxes).

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
        For a value that is not a NumPy or CuPy array.
    ValueError
        When the arrays live on different devices; nothing is copied between them.
    """
    seen = {}  # device -> first argument found there
    for name, value in arrays.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if item is not None:
                label = f"{name}[{i}]" if items is value else name
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
