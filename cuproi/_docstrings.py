"""Docstring blocks that several public functions share, written once.

A docstring names a block by a line that holds only ``{name}``, indented where the block goes;
:func:`fill` replaces that line, at import, with the block indented as the line is. The
functions' ``__doc__`` is then plain numpydoc text (``help()``, Sphinx and doctest see the full
text); other braces in a docstring are left as they are.
"""

import re
import textwrap
from collections.abc import Callable

from cuproi._types import F

# Parameters. ``{op}`` in a block stands for the op that :func:`fill` is given.

GRAD_OUTPUT = """\
grad_output : (K, C, PH, PW) array
    Gradient of a loss with respect to the output of :func:`{op}`."""

INPUT = """\
input : (N, C, H, W) array
    Feature maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU)."""

BOXES = """\
boxes : (K, 5) array or list of (L_i, 4) arrays
    ``[batch_index, x1, y1, x2, y2]`` per box, or one ``[x1, y1, x2, y2]`` array per image
    (torchvision's convention), on the same device as ``input``."""

FORWARD_BOXES = """\
boxes : (K, 5) array or list of (L_i, 4) arrays
    The boxes of the forward call."""

OUTPUT_SIZE = """\
output_size : int or (int, int)
    Pooled size ``(PH, PW)``."""

SPATIAL_SCALE = """\
spatial_scale : float, optional
    Factor from box coordinates to feature coordinates, e.g. 1/16 for stride 16."""

SAMPLING_RATIO = """\
sampling_ratio : int, optional
    Samples per bin along each axis; ``<= 0`` picks ``ceil(box_size / output_size)``."""

INPUT_SHAPE = """\
input_shape : tuple of 4 ints
    ``(N, C, H, W)`` of the forward input."""

DETERMINISTIC = """\
deterministic : bool, optional
    Sum overlapping contributions in a fixed-point format whose total does not depend on
    the order of the additions, so that the GPU gives bit-identical gradients from run to
    run (default: floating-point atomic adds, faster). See Notes."""

BOX_DETERMINISTIC = """\
deterministic : bool, optional
    Sum the terms of every box in a fixed order (GPU; default: atomic adds). It then holds
    ``4 * K * C * PH * PW`` per-element terms in the compute dtype before summing them."""

CHANNELS_LAST = """\
channels_last : bool, optional
    Return the gradient stored channels last (an (N, C, H, W) view of (N, H, W, C) memory,
    torch's ``channels_last`` format), the layout of channels-last features; on the GPU
    that saves a transpose. Default: C-contiguous."""

# The position-sensitive ops (R-FCN), whose C input channels are score maps for C / (PH * PW)
# output channels.

SCORE_MAPS = """\
input : (N, C, H, W) array
    Position-sensitive score maps, float16, float32 or float64; NumPy (CPU) or CuPy (GPU).
    ``C`` must be a multiple of ``PH * PW``."""

SCORE_MAPS_POOLED = """\
(K, C / (PH * PW), PH, PW) array
    Same array type, device and dtype as ``input``."""

_SCORE_MAPS_VALUE_ERROR = """\
ValueError
    ``C`` not a multiple of ``PH * PW``; wrong ranks or shapes (a (K, 4) box array),
    non-positive sizes or scale, non-finite or fractional box values, arrays on different
    devices."""

SCORE_MAPS_GRAD_OUTPUT = """\
grad_output : (K, C / (PH * PW), PH, PW) array
    Gradient of a loss with respect to the output of :func:`{op}`."""

SCORE_MAPS_INPUT_SHAPE = """\
input_shape : tuple of 4 ints
    ``(N, C, H, W)`` of the forward input; ``C`` a multiple of ``PH * PW``."""

SCORE_MAPS_BACKWARD_ERRORS = """\
TypeError, ValueError, IndexError
    As :func:`{op}`; also when ``grad_output`` does not match the boxes, the
    channels ``C / (PH * PW)`` of ``input_shape`` or ``output_size``."""

RFCN = """\
J. Dai, Y. Li, K. He, J. Sun, "R-FCN: Object Detection via Region-based Fully
Convolutional Networks", NeurIPS 2016."""

# Returns.

POOLED = """\
(K, C, PH, PW) array
    Same array type, device and dtype as ``input``."""

GRAD_INPUT = """\
(N, C, H, W) array
    Gradient with respect to the features, same array type and dtype as ``grad_output``."""

BOX_GRADIENT = """\
(K, 5) array
    ``d loss / d [batch_index, x1, y1, x2, y2]``, in the compute dtype (float32 for
    float16 and float32 features, float64 for float64) and the array type of
    ``grad_output``. Column 0 (the batch index) is always 0. Boxes given as a list of
    per-image ``(L_i, 4)`` arrays get the rows of their concatenation, in order: the
    gradient of list entry ``i`` is ``rows[sum(L[:i]) : sum(L[:i + 1]), 1:]``."""

# Raises.

BACKWARD_ERRORS = """\
TypeError, ValueError, IndexError
    As :func:`{op}`; also when ``grad_output`` does not match the boxes,
    the channels of ``input_shape`` or ``output_size``."""

TYPE_ERROR = """\
TypeError
    Arrays of an unsupported type or dtype (integer, bool, complex features), non-integer
    sizes."""

INDEX_ERROR = """\
IndexError
    A batch index outside ``[0, N)``."""

# Notes.

ATOMIC_ADDS = """\
On the GPU it accumulates with atomic adds by default, so the order of the sums, and the last
bits of the result, may differ between runs; float16 accumulates in float32."""

FIXED_POINT = """\
With ``deterministic=True`` the GPU sums in 128-bit fixed point, at a resolution of
``2**-124 * max|grad_output| * grad_output.size`` or finer, with 16 bytes of scratch per input
element: the sum is exact and rounded once at the end, so it is also more accurate than the
default. inf and NaN in ``grad_output`` propagate as in the default. The CPU backend is always
deterministic."""

# What the forwards of both position-sensitive ops list alike: their first four parameters and
# their errors.

SCORE_MAPS_PARAMETERS = "\n".join([SCORE_MAPS, BOXES, OUTPUT_SIZE, SPATIAL_SCALE])

SCORE_MAPS_ERRORS = "\n".join([TYPE_ERROR, _SCORE_MAPS_VALUE_ERROR, INDEX_ERROR])

SHARED = {
    "grad_output": GRAD_OUTPUT,
    "backward_errors": BACKWARD_ERRORS,
    "input": INPUT,
    "boxes": BOXES,
    "forward_boxes": FORWARD_BOXES,
    "output_size": OUTPUT_SIZE,
    "spatial_scale": SPATIAL_SCALE,
    "sampling_ratio": SAMPLING_RATIO,
    "input_shape": INPUT_SHAPE,
    "deterministic": DETERMINISTIC,
    "box_deterministic": BOX_DETERMINISTIC,
    "channels_last": CHANNELS_LAST,
    "pooled": POOLED,
    "grad_input": GRAD_INPUT,
    "box_gradient": BOX_GRADIENT,
    "score_maps": SCORE_MAPS,
    "score_maps_pooled": SCORE_MAPS_POOLED,
    "score_maps_parameters": SCORE_MAPS_PARAMETERS,
    "score_maps_errors": SCORE_MAPS_ERRORS,
    "score_maps_grad_output": SCORE_MAPS_GRAD_OUTPUT,
    "score_maps_input_shape": SCORE_MAPS_INPUT_SHAPE,
    "score_maps_backward_errors": SCORE_MAPS_BACKWARD_ERRORS,
    "rfcn": RFCN,
    "type_error": TYPE_ERROR,
    "index_error": INDEX_ERROR,
    "atomic_adds": ATOMIC_ADDS,
    "fixed_point": FIXED_POINT,
}

# A line that holds only "{name}" (and its indentation).
_PLACE = re.compile(r"^( *)\{(\w+)\}$", re.MULTILINE)


def fill(op: str | None = None, **blocks: str) -> Callable[[F], F]:
    """Decorator: put the shared blocks, and ``blocks`` of the module, into a docstring.

    Parameters
    ----------
    op : str, optional
        The forward op the function belongs to, for the blocks that name it (``{op}``).
    **blocks : str
        Further blocks by name (an op's conventions), as the shared ones: dedented text.
        Surrounding blank lines and a common indentation are removed.

    Returns
    -------
    callable
        Sets ``function.__doc__`` and returns ``function`` itself. A ``{name}`` line naming
        no block, or a block naming ``{op}`` without ``op``, raises KeyError at import.
    """
    named = {**SHARED, **{name: textwrap.dedent(text).strip("\n") for name, text in blocks.items()}}

    def place(match: re.Match) -> str:
        indent, name = match.groups()
        if name not in named:
            raise KeyError(f"no docstring block named {name!r}; known: {sorted(named)}")
        text = named[name]
        if "{op}" in text:
            if op is None:
                raise KeyError(f"docstring block {name!r} names the op: give fill(op=...)")
            text = text.replace("{op}", op)
        return textwrap.indent(text, indent)

    def decorate(function: F) -> F:
        if function.__doc__:  # None under python -OO
            function.__doc__ = _PLACE.sub(place, function.__doc__)
        return function

    return decorate
