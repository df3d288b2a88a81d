"""Argument checks shared by the public functions.

Every check raises TypeError (wrong kind or dtype), ValueError (wrong shape or value) or
IndexError (a batch index outside the batch) with a message that says what was received and
what is expected. Array checks take the array module ``xp`` of the backend. Checks of array
values (boxes, argmax) raise at once on the CPU; on a GPU that would need a device-to-host copy,
which stalls the host until the device has caught up (and breaks CUDA graph capture), so there
the bad rows are disabled on the device instead, giving zeros, unless ``set_eager_checks(True)``.
"""

import math
import numbers
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cuproi import _layout

# Box coordinates times spatial_scale must stay within this many feature cells: it keeps every
# index computation of the kernels exact in int32 and float32 (and a box of 2**20 cells is far
# beyond any image).
MAX_COORDINATE = 2**20
# Upper bound on an explicit sampling_ratio (samples per bin and axis); typical values are 0-4.
MAX_SAMPLING_RATIO = 1024

MAX_OUTPUT_SIZE = 2**14
"""Most bins along either side of ``output_size`` (each of PH and PW): 16384.

Detectors pool 7 x 7 (box heads) to 28 x 28 (mask heads), 56 or 112 for fine masks; a crop
resized to a whole image stays far below it too. Checked before anything is allocated, so a
stray huge value (2**31 once asked ``roi_pool`` for 8 GB) gets a ValueError naming
``output_size``, as does ``quantization_error``'s, whose work grows with it.
"""

MAX_OUTPUT_ELEMENTS = 2**32
"""Most elements of an array an op allocates for its result: 4294967296 (16 GiB of float32).

A forward's output has ``K * C * PH * PW`` elements (``output_size`` times the boxes and the
channels), a backward's gradient ``N * C * H * W`` (``input_shape``; the sum over the levels of
``multi_scale_roi_align_backward``). The largest a detector makes is about 10**8 (512 boxes for
each of 16 images, 256 channels, 7 x 7 bins), and the kernels index arrays of 2**31 elements
and more; beyond this limit a call is taken for a mistake and raises ValueError, from the
shapes alone (no device synchronisation), before anything is allocated.
"""

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

_eager_on_device = os.environ.get("CUPROI_EAGER_CHECKS", "0") not in ("", "0")


def set_eager_checks(enabled: bool) -> bool:
    """Check box values and argmax on the GPU too, at the cost of a host synchronisation.

    By default a CUDA call reads nothing back from the device: a box with a batch index outside
    the batch or not whole, non-finite coordinates, or coordinates beyond 2**20 feature cells
    gives zeros in the output (and no gradient), as an argmax value outside the plane gives no
    gradient, where the CPU raises. With ``enabled`` the GPU raises the CPU's errors instead,
    after one small reduction read back per call (a synchronisation: it stalls the host until
    the device has finished its queued work, and cannot be captured in a CUDA graph). The
    environment variable CUPROI_EAGER_CHECKS=1 sets it at import.

    Parameters
    ----------
    enabled : bool
        Raise on bad values on the GPU as on the CPU (a bool: the string ``"False"`` is
        refused, not taken as true).

    Returns
    -------
    bool
        The setting before the call.

    Examples
    --------
    >>> before = cuproi.set_eager_checks(True)
    >>> cuproi.set_eager_checks(before)
    True
    """
    global _eager_on_device
    before, _eager_on_device = _eager_on_device, flag(enabled, "enabled")
    return before


def _eager(xp):
    """Whether checks of array values may read them back: always in host memory (NumPy)."""
    return xp is np or _eager_on_device


def _disable_bad_rows(xp, rois, ok):
    """``rois`` with batch index -1 and zero coordinates in the rows that are not ``ok``.

    Every kernel writes zeros for such a row and takes no gradient from it. A new array,
    computed on the device from scalars (no host-to-device copy): the caller's boxes are never
    written.
    """
    rois = xp.where(ok[:, None], rois, 0)
    rois[:, 0] = xp.where(ok, rois[:, 0], -1)
    return rois


def shown(value):
    """``repr(value)`` for an error message, an int past 2**64 by its magnitude.

    As ``2**1328 (or more)``: printing 10**5000 would fail, and 400 digits say no more.
    """
    if isinstance(value, numbers.Integral) and abs(int(value)) >= 2**64:
        return f"{'-' if value < 0 else ''}2**{abs(int(value)).bit_length() - 1} (or more)"
    return repr(value)


def integer(value, name):
    """An int (a bool is refused: ``True`` is no size)."""
    if type(value) is int:  # the common case, without the ABC's check (a bool is no int here)
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}")
    return int(value)


def positive_integer(value, name):
    """A positive int: a count such as a number of channels."""
    value = integer(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive; got {value}")
    return value


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number; got {value!r} of type {type(value).__name__}"
        )
    try:
        value = float(value)
    except OverflowError:  # an int beyond float64's range, as 10**400
        raise ValueError(f"{name} must be finite; got {shown(value)}") from None
    if not math.isfinite(value):  # math, not NumPy: torch.compile traces the torch adapter
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def flag(value, name):
    """A yes/no option as a bool.

    A bool or NumPy bool; any other value raises TypeError (the string ``"False"`` is truthy).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r} of type {type(value).__name__}")
    return bool(value)


def output_size(value):
    """``(PH, PW)`` from an int or a pair of positive ints."""
    pair = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"output_size must be an int or a pair (h, w); got {value!r}")
    ph, pw = (integer(v, "output_size") for v in pair)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive; got {value!r}")
    if max(ph, pw) > MAX_OUTPUT_SIZE:
        raise ValueError(
            f"output_size must be at most {MAX_OUTPUT_SIZE} (MAX_OUTPUT_SIZE) along each side; "
            f"got ({shown(ph)}, {shown(pw)})"
        )
    return ph, pw


def result_shape(shape, cause):
    """``shape`` of a result about to be allocated, unless it exceeds MAX_OUTPUT_ELEMENTS.

    ``cause`` names the arguments it comes from, for the error. Host integers only: no device
    array is read.
    """
    count = math.prod(shape)
    if count > MAX_OUTPUT_ELEMENTS:
        raise ValueError(
            f"{cause} gives a result of shape {tuple(shape)}, {count} elements; at most "
            f"{MAX_OUTPUT_ELEMENTS} (MAX_OUTPUT_ELEMENTS = 2**32) are supported"
        )
    return shape


def pooled_result(k, channels, pooled):
    """The (K, C, PH, PW) shape of a forward's output, within MAX_OUTPUT_ELEMENTS."""
    cause = f"output_size {tuple(pooled)} with {k} boxes and {channels} channels"
    return result_shape((k, channels, *pooled), cause)


def spatial_scale(value, name="spatial_scale"):
    """A positive float of at most MAX_COORDINATE.

    Beyond it one input pixel spans more feature cells than a whole box may.
    """
    limit = f"{MAX_COORDINATE} (one input pixel would span more feature cells than a box may, "
    return positive(value, name, MAX_COORDINATE, limit + "MAX_COORDINATE)")


def positive(value, name, most, limit):
    """A real in (0, ``most``]; ``limit`` says ``most`` in the error beyond it."""
    number = _real(value, name)
    if number <= 0:
        raise ValueError(f"{name} must be positive; got {number}")
    if number > most:
        raise ValueError(f"{name} must be at most {limit}; got {number}")
    return number


def pool_mode(value):
    """RoI Align's ``"avg"`` or ``"max"``."""
    if value not in ("avg", "max"):
        raise ValueError(f"pool_mode must be 'avg' or 'max'; got {value!r}")
    return value


def sampling_ratio(value):
    ratio = integer(value, "sampling_ratio")
    if ratio > MAX_SAMPLING_RATIO:
        raise ValueError(
            f"sampling_ratio must be at most {MAX_SAMPLING_RATIO} (<= 0 means "
            f"adaptive); got {ratio}"
        )
    return ratio


def gamma(value):
    """Deformable RoI Pooling's offset scale: finite, and at most MAX_COORDINATE in size.

    Beyond it ``gamma * box size`` overflows float32, and the offset gradients are 0 * inf.
    """
    shift = _real(value, "gamma")
    if abs(shift) > MAX_COORDINATE:
        raise ValueError(f"gamma must be within +-{MAX_COORDINATE} (MAX_COORDINATE); got {shift}")
    return shift


def compute_dtype(dtype):
    """Coordinates and accumulation: float64 for float64 features, float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def cast(array, dtype):
    """``array`` as ``dtype`` (itself if it has it), rounded as the kernels round.

    A value past a narrower dtype's range becomes its infinity, an IEEE result like any
    other here, so NumPy's overflow warning is kept from the caller.
    """
    with np.errstate(over="ignore"):
        return array.astype(dtype, copy=False)


def _float_array(xp, array, name, ndim, layout, keep=False):
    """The checked array, C-contiguous (as it is when ``keep`` says its layout will do)."""
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array {layout}; got shape {array.shape}")
    if array.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, float32 or float64; got {array.dtype}")
    return array if keep and keep(array) else xp.ascontiguousarray(array)


def features(xp, x, name="input", channels_last=False):
    """(N, C, H, W) floating features, C-contiguous.

    With ``channels_last`` (for the ops whose backends read either layout) features stored
    channels last are kept as they are.
    """
    keep = _layout.channels_last if channels_last else False
    x = _float_array(xp, x, name, 4, "(N, C, H, W)", keep)
    _shape(x.shape, name)  # no size limit: these features exist already
    return x


def forward_features(xp, x, shape, name="input"):
    """The forward's features given to a backward: as :func:`features`, either layout kept.

    Unless ``shape`` is None they must have that shape (the backward's ``input_shape``).
    """
    x = features(xp, x, name, channels_last=True)
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but input_shape is {tuple(shape)}")
    return x


def described(value):
    """``value`` for an error message: an array by its shape and dtype, not its values."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = tuple(value.shape)
        hint = " (give its .shape instead)" if len(shape) == 4 else ""
        return f"an array of shape {shape} and dtype {value.dtype}{hint}"
    return repr(value)


def input_shape(shape, name="input_shape"):
    """``(N, C, H, W)`` of a gradient to allocate, as :func:`_shape` within MAX_OUTPUT_ELEMENTS."""
    return result_shape(_shape(shape, name), name)


def _shape(shape, name):
    """``(N, C, H, W)`` as ints, with a non-empty plane that int32 can index."""
    given = shape
    try:
        shape = tuple(integer(v, name) for v in shape)
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of 4 ints (N, C, H, W); got {described(given)}"
        ) from None
    if len(shape) != 4 or min(shape) < 0:
        got = described(given) if len(shape) != 4 else shape  # 1000 ints: not all of them
        raise ValueError(f"{name} must be 4 non-negative ints (N, C, H, W); got {got}")
    n, c, h, w = shape
    if h < 1 or w < 1:
        raise ValueError(f"{name} must have height and width >= 1; got {shape}")
    if h * w >= 2**31:
        raise ValueError(f"{name} has a plane of {h * w} cells; at most 2**31 - 1 are supported")
    return shape


def grad_output(xp, g, k, channels, pooled, name="grad_output", dtype=None):
    """(K, C, PH, PW) floating gradient matching the boxes, channels and output size.

    With ``dtype`` (the features' dtype, for a backward that also reads the features) it is
    cast to that dtype: the kernels read both arrays as one type.
    """
    g = _float_array(xp, g, name, 4, "(K, C, PH, PW)")
    expected = (k, channels, *pooled)
    if g.shape != expected:
        raise ValueError(
            f"{name} must have shape {expected} (boxes, channels, output_size); got {g.shape}"
        )
    return g if dtype is None else cast(g, dtype)


def _real_array(array, name):
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or int); got {array.dtype}")


def _compute_dtype_for(scale, dtype):
    """The compute dtype of ``dtype`` features, in which ``scale`` (if not None) is positive."""
    ct = compute_dtype(dtype)
    if scale is not None and not 0 < ct.type(scale) < np.inf:
        raise ValueError(
            f"spatial_scale {scale} is not a positive {ct} (the compute dtype of "
            f"{np.dtype(dtype)} features)"
        )
    return ct


def _exact_indices(ct, batch, name):
    """Refuse a batch whose indices the compute dtype cannot hold exactly.

    float32 holds the whole numbers up to 2**24 only, and the kernels read the index from the
    box row.
    """
    if ct == np.float32 and batch > 2**24:
        raise ValueError(
            f"{name}: a batch of {batch} images has indices beyond 2**24, which float32 boxes "
            "cannot hold exactly; use float64 features (and boxes)"
        )


def _per_image(xp, value, batch, ct, name, width, columns):
    """(K, 1 + width) rows ``[batch_index, ...]`` in ``ct`` from per-image (L, width) arrays.

    ``columns`` names what a row of them holds, for the errors: ``"[x1, y1, x2, y2]"``.
    """
    if len(value) > batch:
        raise ValueError(
            f"{name} is a list of {len(value)} per-image arrays but the input holds {batch} images"
        )
    parts = []
    for i, b in enumerate(value):
        if b.ndim != 2 or b.shape[1] != width:
            raise ValueError(
                f"{name}[{i}] must be an (L, {width}) array {columns}; got shape {b.shape}"
            )
        _real_array(b, f"{name}[{i}]")
        parts.append(xp.concatenate([xp.full((len(b), 1), i, ct), b.astype(ct)], axis=1))
    return xp.concatenate(parts) if parts else xp.zeros((0, width + 1), ct)


class _BoxKind(NamedTuple):
    """What tells one kind of box row from another, for :func:`_box_rows`."""

    width: int  # values per row after the batch index
    columns: str  # what the per-image arrays hold, for their errors
    expected: str  # the (K, 1 + width) array, for its error
    hint: str  # added to that error for a (K, width) array: the batch index is missing
    within: Callable  # (xp, rois, scale) -> whether each row's values are finite and in range
    values: str  # a row's values, for the error of a non-finite one
    bounded: str  # its first four values, bounded once scaled, for the error of a large one


def _box_rows(xp, value, batch, scale, dtype, name, kind):
    """Box rows of ``kind`` as a C-contiguous array in the compute dtype of ``dtype`` features.

    ``value`` is a (K, 1 + width) array or a list of per-image (L, width) arrays. Checks, in
    one reduction: batch indices integral and in [0, batch), and the row's values as ``kind``
    says.
    """
    ct = _compute_dtype_for(scale, dtype)
    if isinstance(value, (list, tuple)):
        rois = _per_image(xp, value, batch, ct, name, kind.width, kind.columns)
    else:
        if value.ndim != 2 or value.shape[1] != kind.width + 1:
            hint = kind.hint if value.ndim == 2 and value.shape[1] == kind.width else ""
            raise ValueError(f"{name} must be {kind.expected}; got shape {value.shape}{hint}")
        _real_array(value, name)
        rois = xp.ascontiguousarray(value, dtype=ct)
    _exact_indices(ct, batch, name)
    if len(rois):
        # Checked as given, before the cast (float64 index 2**24 + 1 becomes float32 2**24;
        # 1 + 1e-9 becomes 1).
        index = rois[:, 0] if isinstance(value, (list, tuple)) else value[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):
            ok = (index >= 0) & (index < batch) & (index == xp.floor(index))
            ok &= kind.within(xp, rois, scale)
        if not _eager(xp):
            return _disable_bad_rows(xp, rois, ok)
        if not bool(ok.all()):
            k = int(xp.argmin(ok))
            b = float(index[k])
            if not np.isfinite(b) or b != np.floor(b):
                raise ValueError(
                    f"{name}[{k}] has batch index {b}; batch indices must be whole numbers"
                )
            if not 0 <= b < batch:
                valid = f"valid: 0 to {batch - 1}" if batch else "there is none"
                raise IndexError(
                    f"{name}[{k}] has batch index {b:.0f} but the input holds {batch} images "
                    f"({valid})"
                )
            _out_of_range(kind, rois[k, 1:].tolist(), k, scale, name)
    return rois


def _out_of_range(kind, values, k, scale, name):
    """Raise the ValueError of row ``k`` of the boxes, whose ``values`` ``kind.within`` refused."""
    if not all(np.isfinite(values)):
        raise ValueError(f"{name}[{k}] has non-finite {kind.values} {values}")
    raise ValueError(
        f"{name}[{k}] has {kind.bounded} {values[:4]}, which exceed +-{MAX_COORDINATE} feature "
        f"cells at spatial_scale {scale}"
    )


def _coordinates_within(xp, rois, scale):
    """Finite coordinates, within MAX_COORDINATE cells once scaled (unless ``scale`` is None)."""
    if scale is None:
        return xp.isfinite(rois[:, 1:]).all(axis=1)
    return (xp.abs(rois[:, 1:]) * scale <= MAX_COORDINATE).all(axis=1)


_AXIS_ALIGNED = _BoxKind(
    4,
    "[x1, y1, x2, y2]",
    "a (K, 5) array [batch_index, x1, y1, x2, y2] or a list of (L, 4) arrays",
    " (a (K, 4) array has no batch index: add it as the first column, or pass a list with "
    "one (L, 4) array per image)",
    _coordinates_within,
    "coordinates",
    "coordinates",
)


def boxes(xp, value, batch, scale, dtype, name="boxes"):
    """Boxes as a (K, 5) C-contiguous array in the compute dtype of ``dtype`` features.

    ``value`` is a (K, 5) array [batch_index, x1, y1, x2, y2] or a list of per-image (L, 4)
    arrays [x1, y1, x2, y2]. Checks, in one reduction: batch indices integral and in
    [0, batch), coordinates finite and, unless ``scale`` is None (a backward that reads only
    the batch indices), within MAX_COORDINATE cells once scaled.
    """
    return _box_rows(xp, value, batch, scale, dtype, name, _AXIS_ALIGNED)


def _centre_and_size_within(xp, rois, scale):
    """Centre and size within MAX_COORDINATE cells once scaled, a finite angle."""
    return (xp.abs(rois[:, 1:5]) * scale <= MAX_COORDINATE).all(axis=1) & xp.isfinite(rois[:, 5])


_ROTATED = _BoxKind(
    5,
    "[cx, cy, w, h, angle] of rotated boxes",
    "a (K, 6) array [batch_index, cx, cy, w, h, angle] or a list of (L, 5) arrays "
    "[cx, cy, w, h, angle]",
    " (a (K, 5) array is either axis-aligned boxes [batch_index, x1, y1, x2, y2] or rotated "
    "boxes without a batch index: add it as the first column, or pass a list with one "
    "(L, 5) array per image)",
    _centre_and_size_within,
    "values [cx, cy, w, h, angle] =",
    "centre and size [cx, cy, w, h] =",
)


def rotated_boxes(xp, value, batch, scale, dtype, name="boxes"):
    """Rotated boxes as a (K, 6) C-contiguous array in the compute dtype of ``dtype`` features.

    ``value`` is a (K, 6) array [batch_index, cx, cy, w, h, angle] or a list of per-image (L, 5)
    arrays [cx, cy, w, h, angle]. Checks, in one reduction: batch indices integral and in
    [0, batch), every value finite, and the centre and size within MAX_COORDINATE feature cells
    once scaled (the angle, in degrees, may be any finite value).
    """
    return _box_rows(xp, value, batch, scale, dtype, name, _ROTATED)


def host_boxes(boxes, scale):
    """Boxes as a (K, 4) or (K, 5) real host array; a single box becomes (1, n).

    The boxes of :func:`cuproi.quantization_error`. Their coordinates must be finite and, times
    ``scale``, within MAX_COORDINATE cells, as :func:`cuproi.roi_pool` requires: beyond, the
    cell indices would pass int64's range.
    """
    try:
        rois = np.asarray(boxes)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"boxes must be a NumPy array or array_like of numbers; got "
            f"{type(boxes).__module__}.{type(boxes).__name__} ({error})"
        ) from None
    if rois.dtype.kind not in "fiu":
        raise TypeError(f"boxes must hold real numbers (float or int); got {rois.dtype}")
    if rois.ndim == 1 and rois.shape[0] in (4, 5):
        rois = rois[None]
    if rois.ndim != 2 or rois.shape[1] not in (4, 5):
        raise ValueError(
            "boxes must be a (K, 5) array [batch_index, x1, y1, x2, y2] or a (K, 4) array "
            f"[x1, y1, x2, y2]; got shape {rois.shape}"
        )
    finite = np.isfinite(rois[:, -4:]).all(1)
    if not finite.all():
        k = int(np.argmin(finite))
        raise ValueError(f"boxes[{k}] has non-finite coordinates {rois[k, -4:].tolist()}")
    rois = rois if rois.dtype == np.float64 else rois.astype(np.float32)
    with np.errstate(over="ignore"):  # as the op computes it; an overflow to inf is beyond too
        within = (np.abs(rois[:, -4:]) * scale <= MAX_COORDINATE).all(1)
    if not within.all():
        k = int(np.argmin(within))
        raise ValueError(
            f"boxes[{k}] has coordinates {rois[k, -4:].tolist()}, which exceed "
            f"+-{MAX_COORDINATE} feature cells at spatial_scale {scale}"
        )
    return rois


def _per_bin(xp, value, k, pooled, dtype, name, planes, meaning):
    """None, or a (K, planes, PH, PW) floating array in the compute dtype of ``dtype`` features.

    ``meaning`` says what the planes hold, in the error of a wrong shape.
    """
    if value is None:
        return None
    value = _float_array(xp, value, name, 4, f"(K, {planes}, PH, PW)")
    expected = (k, planes, *pooled)
    if value.shape != expected:
        raise ValueError(
            f"{name} must have shape {expected} (boxes, {meaning}, output_size); got {value.shape}"
        )
    return xp.ascontiguousarray(value, dtype=compute_dtype(dtype))


def offset(xp, value, k, pooled, dtype, name="offset"):
    """None, or a (K, 2, PH, PW) floating array in the compute dtype of ``dtype`` features."""
    return _per_bin(xp, value, k, pooled, dtype, name, 2, "(dx, dy)")


def mask(xp, value, k, pooled, dtype, name="mask"):
    """None, or a (K, 1, PH, PW) floating array in the compute dtype of ``dtype`` features."""
    return _per_bin(xp, value, k, pooled, dtype, name, 1, "1")


def argmax(xp, value, shape, plane, name="argmax"):
    """The argmax of roi_pool, shaped like the gradient, as C-contiguous int32.

    Its values must be -1 (empty bin) or a cell of the (H, W) plane, ``0 <= a < plane``:
    checked by its minimum and maximum before the cast, so no value wraps or lands in another
    plane.
    """
    if value.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (from roi_pool); got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have the shape of grad_output {shape}; got {value.shape}")
    if not _eager(xp):  # a value outside [-1, plane) gives no gradient, as -1 does
        return xp.where((value >= -1) & (value < plane), value, -1).astype(np.int32)
    if value.size:
        low, high = int(value.min()), int(value.max())
        if low < -1 or high >= plane:
            raise ValueError(
                f"{name} holds values outside [-1, {plane}) (-1 for an empty bin, "
                f"else h * W + w): min {low}, max {high}"
            )
    return xp.ascontiguousarray(value, dtype=np.int32)


def position_sensitive_channels(channels, pooled, name="input"):
    """Output channels ``C / (PH * PW)`` of a position-sensitive op (R-FCN score maps).

    ValueError unless ``channels`` is a multiple of ``PH * PW``: one group of ``PH * PW`` score
    maps per output channel.
    """
    bins = pooled[0] * pooled[1]
    if channels % bins:
        raise ValueError(
            f"{name} has {channels} channels, which is not a multiple of output_size "
            f"{pooled[0]} x {pooled[1]} = {bins}: position-sensitive pooling needs "
            f"C = C_out * PH * PW channels (C_out groups of PH * PW score maps)"
        )
    return channels // bins
