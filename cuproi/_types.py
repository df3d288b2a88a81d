"""Type aliases of the public signatures.

An op returns arrays of the type it is given (NumPy in, NumPy out; torch in, torch out), so its
arrays are typed by one type variable, :data:`ArrayT`, and its result follows it.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

ArrayT = TypeVar("ArrayT")
"""An array: NumPy, CuPy, or any array with ``__dlpack__`` (torch, JAX, ...)."""

Boxes: TypeAlias = ArrayT | Sequence[ArrayT]
"""A (K, 5) array ``[batch_index, x1, y1, x2, y2]`` or a list of per-image (L_i, 4) arrays.

Rotated boxes are (K, 6) or per-image (L_i, 5). Generic in the array type: ``Boxes[ArrayT]``.
"""

OutputSize: TypeAlias = int | Sequence[int]
"""``output_size``: an int or a pair ``(PH, PW)``."""

Shape: TypeAlias = Sequence[int]
"""``input_shape``: ``(N, C, H, W)``."""

PoolMode: TypeAlias = Literal["avg", "max"]
"""RoI Align's pooling of the samples of a bin."""

F = TypeVar("F", bound=Callable[..., Any])
"""A function that a decorator returns with its signature unchanged (for type checkers)."""
