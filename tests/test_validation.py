"""Argument validation of the six public ops, and the contract details around it.

Every bad input must raise TypeError (wrong kind or dtype), ValueError (wrong shape or value) or
IndexError (a batch index outside the batch) with a message that names what was received and
what is expected; ``match=`` checks a meaningful part of each message. The second half checks
contract details that are not errors: empty boxes, the per-image list form, integer and strided
inputs, dtypes, that inputs are never written to, and that ``import cuproi`` leaves CuPy alone.

All of this runs on NumPy arrays (the CPU backend).
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cuproi
from cuproi import _validate

ROOT = Path(__file__).resolve().parents[1]
MAX = _validate.MAX_COORDINATE
MAX_RATIO = _validate.MAX_SAMPLING_RATIO

N, C, H, W = 2, 3, 5, 6
OUT = (2, 3)
FLOATS = (np.float16, np.float32, np.float64)

FORWARD = ("roi_align", "roi_pool", "deform_roi_pool")
BACKWARD = ("roi_align_backward", "roi_pool_backward", "deform_roi_pool_backward")
OPS = FORWARD + BACKWARD
# Ops with these parameters (roi_pool_backward has no output_size and no spatial_scale).
WITH_OUTPUT_SIZE = (
    "roi_align",
    "roi_align_backward",
    "roi_pool",
    "deform_roi_pool",
    "deform_roi_pool_backward",
)
WITH_SCALE = WITH_OUTPUT_SIZE
WITH_SAMPLING = ("roi_align", "roi_align_backward", "deform_roi_pool", "deform_roi_pool_backward")
WITH_GAMMA = ("deform_roi_pool", "deform_roi_pool_backward")
WITH_INPUT = ("roi_align", "roi_pool", "deform_roi_pool", "deform_roi_pool_backward")
WITH_INPUT_SHAPE = ("roi_align_backward", "roi_pool_backward")


def features(dtype=np.float32, shape=(N, C, H, W), seed=0):
    """Distinct values, so that roi_pool has no ties."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) / size - 0.5).astype(dtype)


def boxes(dtype=np.float32):
    """(K, 5) boxes sorted by image, so that they equal their per-image list form."""
    return np.array(
        [
            [0, 0.5, 1.0, 4.0, 3.5],
            [0, 2.0, 2.0, 3.0, 3.0],
            [1, 1.0, 0.0, 5.5, 4.5],
            [1, -2.0, -1.0, 2.5, 7.0],
        ],
        dtype=dtype,
    )


def _count(b):
    """Number of boxes of a (possibly malformed) boxes argument."""
    if isinstance(b, (list, tuple)):
        return sum(len(p) for p in b if isinstance(p, np.ndarray) and p.ndim >= 1)
    if isinstance(b, np.ndarray) and b.ndim >= 1:
        return len(b)
    return 1


def _float_dtype(x):
    dtype = getattr(x, "dtype", None)
    return dtype if dtype in {np.dtype(t) for t in FLOATS} else np.dtype(np.float32)


def default_offset(k, dtype=np.float32, pooled=OUT):
    return (
        (0.3 * np.sin(np.arange(k * 2 * pooled[0] * pooled[1])))
        .reshape(k, 2, *pooled)
        .astype(dtype)
    )


def default_grad(k, channels=C, dtype=np.float32, pooled=OUT):
    return (
        np.cos(np.arange(k * channels * pooled[0] * pooled[1]))
        .reshape(k, channels, *pooled)
        .astype(dtype)
    )


def default_argmax(shape, plane=H * W):
    """A valid argmax: every entry a cell of the plane, or -1 (an empty bin)."""
    i = np.arange(int(np.prod(shape)))
    return np.where(i % 5 == 4, -1, (i * 7) % max(plane, 1)).reshape(shape).astype(np.int32)


_DEFAULT = object()


def call(
    op,
    x=_DEFAULT,
    b=_DEFAULT,
    output_size=OUT,
    *,
    offset=_DEFAULT,
    grad=_DEFAULT,
    argmax=_DEFAULT,
    input_shape=_DEFAULT,
    **kw,
):
    """Call public op ``op`` with consistent defaults for every argument not given.

    ``x`` and ``b`` are the features and boxes (the backward ops get ``input_shape=x.shape``
    unless it is given); grad_output, offset and argmax default to valid arrays for the number
    of boxes, so that a test changes exactly one argument.
    """
    x = features() if x is _DEFAULT else x
    b = boxes() if b is _DEFAULT else b
    k = _count(b)
    dtype = _float_dtype(x)
    shape = getattr(x, "shape", (N, C, H, W)) if input_shape is _DEFAULT else input_shape
    try:
        channels = int(shape[1])
    except (TypeError, IndexError, ValueError):
        channels = C
    try:
        plane = int(shape[2]) * int(shape[3])
    except (TypeError, IndexError, ValueError):
        plane = H * W
    if grad is _DEFAULT:
        grad = default_grad(k, channels, dtype)
    if offset is _DEFAULT:
        offset = default_offset(k, dtype)
    if argmax is _DEFAULT:
        argmax = default_argmax((k, channels, *OUT), plane)
    if op == "roi_align":
        return cuproi.roi_align(x, b, output_size, **kw)
    if op == "roi_pool":
        return cuproi.roi_pool(x, b, output_size, **kw)
    if op == "deform_roi_pool":
        return cuproi.deform_roi_pool(x, b, offset, output_size, **kw)
    if op == "roi_align_backward":
        return cuproi.roi_align_backward(grad, b, shape, output_size, **kw)
    if op == "roi_pool_backward":
        return cuproi.roi_pool_backward(grad, b, argmax, shape, **kw)
    if op == "deform_roi_pool_backward":
        return cuproi.deform_roi_pool_backward(grad, x, b, offset, output_size, **kw)[:2]
    raise AssertionError(op)


def _results(result):
    """A result as a tuple of arrays (None kept)."""
    return result if isinstance(result, tuple) else (result,)


def _assert_same(actual, expected, exact=True):
    actual, expected = _results(actual), _results(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
            continue
        assert a.dtype == e.dtype and a.shape == e.shape
        if exact:
            np.testing.assert_array_equal(a, e)
        else:
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


def _with(b, row, col, value):
    b = b.copy()
    b[row, col] = value
    return b


# ---- boxes: batch index ------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("index", [2, 3, 1000])
def test_batch_index_out_of_range(op, index):
    b = _with(boxes(), 2, 0, index)
    with pytest.raises(
        IndexError,
        match=rf"boxes\[2\] has batch index {index} but the input "
        rf"holds {N} images \(valid: 0 to {N - 1}\)",
    ):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
def test_batch_index_negative(op):
    b = _with(boxes(), 1, 0, -1)
    with pytest.raises(IndexError, match=r"boxes\[1\] has batch index -1 but the input holds 2"):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("index", [0.5, 1.25, -0.5])
def test_batch_index_fractional(op, index):
    b = _with(boxes(), 3, 0, index)
    with pytest.raises(
        ValueError,
        match=rf"boxes\[3\] has batch index {index}; batch indices "
        r"must be whole numbers",
    ):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("index", [np.nan, np.inf])
def test_batch_index_non_finite(op, index):
    b = _with(boxes(), 0, 0, index)
    with pytest.raises(
        ValueError,
        match=r"boxes\[0\] has batch index (nan|inf); batch indices "
        r"must be whole numbers",
    ):
        call(op, b=b)


def test_batch_index_error_names_the_first_bad_box():
    b = _with(_with(boxes(), 1, 0, 7), 3, 0, 0.5)
    with pytest.raises(IndexError, match=r"boxes\[1\] has batch index 7"):
        cuproi.roi_align(features(), b, OUT)


# ---- boxes: coordinates ------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("col", [1, 2, 3, 4])
def test_non_finite_coordinates(op, value, col):
    b = _with(boxes(), 2, col, value)
    with pytest.raises(
        ValueError,
        match=r"boxes\[2\] has non-finite coordinates \[.*"
        r"(nan|inf).*\]",
    ):
        call(op, b=b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 16])
@pytest.mark.parametrize("op", WITH_SCALE)
def test_coordinates_beyond_bound(op, scale, dtype):
    limit = MAX / scale
    for col, value in [(3, limit + 1 / scale), (1, -limit - 1 / scale), (4, 4 * limit)]:
        b = _with(boxes(dtype), 1, col, value)
        with pytest.raises(
            ValueError,
            match=rf"boxes\[1\] has coordinates .* which exceed "
            rf"\+-{MAX} feature cells at spatial_scale "
            rf"{scale}",
        ):
            call(op, features(dtype), b, spatial_scale=scale)


def _box_at_the_bound(scale, dtype):
    limit = MAX / scale
    b = boxes(dtype)
    b[1, 1:] = [-limit, -limit, limit, limit]  # the largest box there is, adaptive sampling
    b[2, 1:] = [limit, limit, limit, limit]  # a point at the corner
    b[3, 1:] = [-limit, 1.0, 2.0, limit]
    return b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 16])
@pytest.mark.parametrize(
    "op, sampling_ratio",
    [("roi_pool", None)] + [(op, ratio) for op in WITH_SAMPLING for ratio in (-1, 2)],
)
def test_box_just_inside_bound_works(op, sampling_ratio, scale, dtype):
    b = _box_at_the_bound(scale, dtype)
    kw = {"spatial_scale": scale}
    if sampling_ratio is not None:
        kw["sampling_ratio"] = sampling_ratio
    for result in _results(call(op, features(dtype), b, **kw)):
        assert result is not None and np.isfinite(result).all()
        assert result.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_just_inside_bound_roi_pool_backward(dtype):
    b = _box_at_the_bound(1.0, dtype)
    x = features(dtype)
    out, argmax = cuproi.roi_pool(x, b, OUT, return_argmax=True)
    grad = cuproi.roi_pool_backward(np.ones_like(out), b, argmax, x.shape)
    assert np.isfinite(grad).all() and grad.dtype == dtype
    assert grad.sum() == pytest.approx(float((argmax >= 0).sum()))


def test_roi_pool_backward_accepts_the_boxes_of_its_forward():
    x = features()
    b = _box_at_the_bound(1 / 16, np.float32)  # coordinates up to 16 * 2**20 image pixels
    out, argmax = cuproi.roi_pool(x, b, OUT, spatial_scale=1 / 16, return_argmax=True)
    grad = cuproi.roi_pool_backward(np.ones_like(out), b, argmax, x.shape)
    assert grad.sum() == pytest.approx(float((argmax >= 0).sum()))


# ---- boxes: shape, kind, dtype -----------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_boxes_k4_array(op):
    with pytest.raises(
        ValueError,
        match=r"must be a \(K, 5\) array \[batch_index, x1, y1, x2, "
        r"y2\].*got shape \(4, 4\).*no batch index.*list with "
        r"one \(L, 4\) array per image",
    ):
        call(op, b=boxes()[:, 1:])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(5,), (1, 4, 5), (4, 6), (4, 3), ()])
def test_boxes_wrong_rank_or_width(op, shape):
    b = np.zeros(shape, np.float32)
    with pytest.raises(
        ValueError,
        match=rf"boxes must be a \(K, 5\) array .* got shape "
        rf"{re_shape(shape)}",
    ):
        call(op, b=b)


def re_shape(shape):
    """A shape as a regular expression."""
    return "\\(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + "\\)"


@pytest.mark.parametrize("op", OPS)
def test_box_list_longer_than_batch(op):
    b = [boxes()[:2, 1:]] * (N + 1)
    with pytest.raises(
        ValueError,
        match=rf"boxes is a list of {N + 1} per-image arrays but the "
        rf"input holds {N} images",
    ):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(2, 5), (4,), (2, 4, 1), (2, 3)])
def test_box_list_element_wrong_shape(op, shape):
    b = [boxes()[:2, 1:], np.ones(shape, np.float32)]
    with pytest.raises(
        ValueError,
        match=rf"boxes\[1\] must be an \(L, 4\) array \[x1, y1, x2, "
        rf"y2\]; got shape {re_shape(shape)}",
    ):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.complex128])
def test_boxes_bool_or_complex(op, dtype):
    name = np.dtype(dtype).name
    with pytest.raises(
        TypeError,
        match=rf"boxes must hold real numbers \(float or int\); got "
        rf"{name}",
    ):
        call(op, b=boxes().astype(dtype))
    b = [boxes()[:2, 1:], boxes()[2:, 1:].astype(dtype)]
    with pytest.raises(
        TypeError,
        match=rf"boxes\[1\] must hold real numbers \(float or int\); "
        rf"got {name}",
    ):
        call(op, b=b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "b, label, kind",
    [
        ([0, 1.0, 1.0, 3.0, 3.0], "boxes[0]", "int"),
        ([[0, 1.0, 1.0, 3.0, 3.0]], "boxes[0]", "list"),
        ((0.0, 1.0, 1.0, 3.0, 3.0), "boxes[0]", "float"),
        ("boxes", "boxes", "str"),
    ],
)
def test_boxes_not_an_array(op, b, label, kind):
    # A Python list is the per-image list form; its items must be arrays: a clear TypeError.
    with pytest.raises(
        TypeError,
        match=re.escape(label)
        + r" must be an array \(NumPy, CuPy, or any with __dlpack__ such as torch or JAX\); "
        rf"got builtins.{kind}",
    ):
        call(op, b=b)


@pytest.mark.parametrize(
    "op, argument",
    [(op, "b") for op in OPS]
    + [(op, "x") for op in WITH_INPUT]
    + [(op, "grad") for op in BACKWARD]
    + [("roi_pool_backward", "argmax")],
)
def test_none_for_a_required_array(op, argument):
    names = {"b": "boxes", "x": "input", "grad": "grad_output", "argmax": "argmax"}
    kw = {"input_shape": (N, C, H, W), "grad": default_grad(4), argument: None}
    with pytest.raises(
        TypeError,
        match=rf"{names[argument]} must be an array \(NumPy, CuPy, or any with __dlpack__ "
        rf"such as torch or JAX\); got builtins.NoneType",
    ):
        call(op, **kw)


def test_none_in_a_box_list():
    with pytest.raises(TypeError, match=r"boxes\[1\] must be an array \(NumPy"):
        cuproi.roi_align(features(), [boxes()[:2, 1:], None], OUT)


# ---- features ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", WITH_INPUT)
@pytest.mark.parametrize("shape", [(C, H, W), (N, C, H, W, 1), (H, W)])
def test_input_wrong_rank(op, shape):
    x = features(shape=shape)
    with pytest.raises(
        ValueError,
        match=rf"input must be a 4-D array \(N, C, H, W\); got shape "
        rf"{re_shape(shape)}",
    ):
        call(op, x, input_shape=(N, C, H, W))


@pytest.mark.parametrize("op", WITH_INPUT)
@pytest.mark.parametrize("shape", [(N, C, 0, W), (N, C, H, 0), (N, C, 0, 0)])
def test_input_empty_plane(op, shape):
    x = np.zeros(shape, np.float32)
    with pytest.raises(
        ValueError,
        match=rf"input must have height and width >= 1; got "
        rf"{re_shape(shape)}",
    ):
        call(op, x, input_shape=(N, C, H, W))


@pytest.mark.parametrize("op", WITH_INPUT)
@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]
)
def test_input_unsupported_dtype(op, dtype):
    x = features().astype(dtype)
    with pytest.raises(
        TypeError,
        match=rf"input must be float16, float32 or float64; got "
        rf"{np.dtype(dtype).name}",
    ):
        call(op, x, input_shape=(N, C, H, W))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_byte_swapped_arrays_are_read_as_native(op, dtype):
    """Big-endian NumPy data (from a file, say) gives the results, and dtypes, of native data:
    every array argument (features, boxes, offsets, gradients, argmax) is swapped on the way in."""
    x, b = features(dtype), boxes()
    k = len(b)
    arrays = {
        "grad": default_grad(k, dtype=dtype),
        "offset": default_offset(k, dtype),
        "argmax": default_argmax((k, C, *OUT)),
    }
    swapped = {name: a.astype(a.dtype.newbyteorder(">")) for name, a in arrays.items()}
    big = [a.astype(a.dtype.newbyteorder(">")) for a in (x, b)]
    assert not big[0].dtype.isnative
    _assert_same(call(op, *big, **swapped), call(op, x, b, **arrays))


@pytest.mark.parametrize("op", WITH_INPUT)
@pytest.mark.parametrize(
    "x, label, kind",
    [
        (features().tolist(), r"input", "builtins.list"),
        (1.0, "input", "builtins.float"),
    ],
)
def test_input_not_an_array(op, x, label, kind):
    with pytest.raises(
        TypeError,
        match=rf"{label} must be an array \(NumPy, CuPy, or any with __dlpack__ such as torch "
        rf"or JAX\); got {kind}",
    ):
        call(op, x, input_shape=(N, C, H, W), grad=default_grad(4))


@pytest.mark.parametrize("op", BACKWARD)
@pytest.mark.parametrize(
    "g, label, kind",
    [
        (default_grad(4).tolist(), r"grad_output", "builtins.list"),
        (1.0, "grad_output", "builtins.float"),
    ],
)
def test_grad_output_not_an_array(op, g, label, kind):
    with pytest.raises(
        TypeError,
        match=rf"{label} must be an array \(NumPy, CuPy, or any with __dlpack__ such as torch "
        rf"or JAX\); got {kind}",
    ):
        call(op, grad=g)


@pytest.mark.parametrize("op", BACKWARD)
@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_grad_output_unsupported_dtype(op, dtype):
    with pytest.raises(
        TypeError,
        match=rf"grad_output must be float16, float32 or float64; "
        rf"got {np.dtype(dtype).name}",
    ):
        call(op, grad=default_grad(4).astype(dtype))


# ---- output_size, spatial_scale, sampling_ratio, gamma -----------------------------------------


@pytest.mark.parametrize("op", WITH_OUTPUT_SIZE)
@pytest.mark.parametrize(
    "size, error, message",
    [
        (0, ValueError, r"output_size must be positive; got 0"),
        (-1, ValueError, r"output_size must be positive; got -1"),
        ((2, 0), ValueError, r"output_size must be positive; got \(2, 0\)"),
        ((-3, 2), ValueError, r"output_size must be positive; got \(-3, 2\)"),
        (2.5, TypeError, r"output_size must be an int; got 2.5 of type float"),
        ((2, 2.0), TypeError, r"output_size must be an int; got 2.0 of type float"),
        (True, TypeError, r"output_size must be an int; got True of type bool"),
        ((True, 2), TypeError, r"output_size must be an int; got True of type bool"),
        ("2", TypeError, r"output_size must be an int; got '2' of type str"),
        (None, TypeError, r"output_size must be an int; got None of type NoneType"),
        (
            (1, 2, 3),
            ValueError,
            r"output_size must be an int or a pair \(h, w\); got "
            r"\(1, 2, 3\)",
        ),
        ((4,), ValueError, r"output_size must be an int or a pair \(h, w\); got \(4,\)"),
    ],
)
def test_bad_output_size(op, size, error, message):
    with pytest.raises(error, match=message):
        call(op, output_size=size)


@pytest.mark.parametrize("op", WITH_SCALE)
@pytest.mark.parametrize(
    "scale, error, message",
    [
        (0, ValueError, r"spatial_scale must be positive; got 0.0"),
        (-0.5, ValueError, r"spatial_scale must be positive; got -0.5"),
        (float("nan"), ValueError, r"spatial_scale must be finite; got nan"),
        (float("inf"), ValueError, r"spatial_scale must be finite; got inf"),
        (-float("inf"), ValueError, r"spatial_scale must be finite; got -inf"),
        ("1", TypeError, r"spatial_scale must be a real number; got '1' of type str"),
        (None, TypeError, r"spatial_scale must be a real number; got None of type NoneType"),
        (True, TypeError, r"spatial_scale must be a real number; got True of type bool"),
        (1j, TypeError, r"spatial_scale must be a real number; got 1j of type complex"),
    ],
)
def test_bad_spatial_scale(op, scale, error, message):
    with pytest.raises(error, match=message):
        call(op, spatial_scale=scale)


@pytest.mark.parametrize("op", WITH_SCALE)
def test_numpy_scalars_are_accepted(op):
    expected = call(op, output_size=(2, 3), spatial_scale=0.5)
    actual = call(op, output_size=(np.int64(2), np.int32(3)), spatial_scale=np.float32(0.5))
    _assert_same(actual, expected)


@pytest.mark.parametrize("op", WITH_SAMPLING)
@pytest.mark.parametrize(
    "ratio, error, message",
    [
        (1.5, TypeError, r"sampling_ratio must be an int; got 1.5 of type float"),
        (2.0, TypeError, r"sampling_ratio must be an int; got 2.0 of type float"),
        (True, TypeError, r"sampling_ratio must be an int; got True of type bool"),
        ("2", TypeError, r"sampling_ratio must be an int; got '2' of type str"),
        (None, TypeError, r"sampling_ratio must be an int; got None of type NoneType"),
        (
            MAX_RATIO + 1,
            ValueError,
            rf"sampling_ratio must be at most {MAX_RATIO} \(<= 0 means "
            rf"adaptive\); got {MAX_RATIO + 1}",
        ),
        (2**40, ValueError, rf"sampling_ratio must be at most {MAX_RATIO}.*got {2**40}"),
    ],
)
def test_bad_sampling_ratio(op, ratio, error, message):
    with pytest.raises(error, match=message):
        call(op, sampling_ratio=ratio)


@pytest.mark.parametrize("op", WITH_SAMPLING)
@pytest.mark.parametrize("ratio", [MAX_RATIO, 0, -1, -1000])
def test_sampling_ratio_in_range_works(op, ratio):
    for result in _results(call(op, sampling_ratio=ratio)):
        assert np.isfinite(result).all()


@pytest.mark.parametrize("op", WITH_GAMMA)
@pytest.mark.parametrize(
    "gamma, error, message",
    [
        (float("nan"), ValueError, r"gamma must be finite; got nan"),
        (float("inf"), ValueError, r"gamma must be finite; got inf"),
        (-float("inf"), ValueError, r"gamma must be finite; got -inf"),
        (np.float32("nan"), ValueError, r"gamma must be finite; got nan"),
        ("0.1", TypeError, r"gamma must be a real number; got '0.1' of type str"),
        (None, TypeError, r"gamma must be a real number; got None of type NoneType"),
    ],
)
def test_bad_gamma(op, gamma, error, message):
    with pytest.raises(error, match=message):
        call(op, gamma=gamma)


# ---- offset ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", WITH_GAMMA)
@pytest.mark.parametrize(
    "shape", [(4, 2, 3, 3), (4, 1, 2, 3), (5, 2, 2, 3), (3, 2, 2, 3), (4, 2, 3, 2)]
)
def test_offset_wrong_shape(op, shape):
    with pytest.raises(
        ValueError,
        match=rf"offset must have shape \(4, 2, 2, 3\) \(boxes, "
        rf"\(dx, dy\), output_size\); got {re_shape(shape)}",
    ):
        call(op, offset=np.zeros(shape, np.float32))


@pytest.mark.parametrize("op", WITH_GAMMA)
@pytest.mark.parametrize("shape", [(4, 2, 6), (4, 2, 2, 3, 1), ()])
def test_offset_wrong_rank(op, shape):
    with pytest.raises(
        ValueError,
        match=rf"offset must be a 4-D array \(K, 2, PH, PW\); got "
        rf"shape {re_shape(shape)}",
    ):
        call(op, offset=np.zeros(shape, np.float32))


@pytest.mark.parametrize("op", WITH_GAMMA)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64])
def test_offset_unsupported_dtype(op, dtype):
    with pytest.raises(
        TypeError,
        match=rf"offset must be float16, float32 or float64; got "
        rf"{np.dtype(dtype).name}",
    ):
        call(op, offset=default_offset(4).astype(dtype))


@pytest.mark.parametrize("op", WITH_GAMMA)
def test_offset_not_an_array(op):
    with pytest.raises(
        TypeError,
        match=r"offset must be an array \(NumPy, CuPy, or any with __dlpack__ such as torch or "
        r"JAX\); got builtins.list",
    ):
        call(op, offset=default_offset(4).tolist())


# ---- backward: grad_output, input_shape, argmax ------------------------------------------------


@pytest.mark.parametrize("op", BACKWARD)
@pytest.mark.parametrize(
    "shape",
    [
        (3, C, *OUT),
        (5, C, *OUT),
        (4, C + 1, *OUT),
        (4, C - 1, *OUT),
        (4, C, 3, 3),
        (4, C, 2, 2),
        (4, C, *OUT[::-1]),
    ],
)
def test_grad_output_mismatch(op, shape):
    g = np.ones(shape, np.float32)
    argmax = np.zeros(shape, np.int32)
    if op == "roi_pool_backward" and shape[2:] != OUT:
        # roi_pool_backward has no output_size: any (PH, PW) goes, with a matching argmax.
        assert call(op, grad=g, argmax=argmax).shape == (N, C, H, W)
        return
    with pytest.raises(
        ValueError,
        match=rf"grad_output must have shape \(4, 3, 2, 3\) "
        rf"\(boxes, channels, output_size\); got "
        rf"{re_shape(shape)}",
    ):
        call(op, grad=g, argmax=argmax)


@pytest.mark.parametrize("op", BACKWARD)
@pytest.mark.parametrize("shape", [(4, C, 6), (4, C, 2, 3, 1), (4,)])
def test_grad_output_wrong_rank(op, shape):
    with pytest.raises(
        ValueError,
        match=rf"grad_output must be a 4-D array \(K, C, PH, PW\); "
        rf"got shape {re_shape(shape)}",
    ):
        call(op, grad=np.ones(shape, np.float32))


@pytest.mark.parametrize("op", WITH_INPUT_SHAPE)
@pytest.mark.parametrize(
    "shape, error, message",
    [
        (
            (N, C, H),
            ValueError,
            r"input_shape must be 4 non-negative ints \(N, C, H, W\); got "
            r"\(2, 3, 5\)",
        ),
        (
            (N, C, H, W, 1),
            ValueError,
            r"input_shape must be 4 non-negative ints \(N, C, H, W\); "
            r"got \(2, 3, 5, 6, 1\)",
        ),
        (
            (N, -C, H, W),
            ValueError,
            r"input_shape must be 4 non-negative ints \(N, C, H, W\); "
            r"got \(2, -3, 5, 6\)",
        ),
        (
            (N, C, 0, W),
            ValueError,
            r"input_shape must have height and width >= 1; got "
            r"\(2, 3, 0, 6\)",
        ),
        ((N, C, H, 0), ValueError, r"input_shape must have height and width >= 1"),
        (
            (N, C, 5.0, W),
            TypeError,
            r"input_shape must be a sequence of 4 ints \(N, C, H, W\); "
            r"got \(2, 3, 5.0, 6\)",
        ),
        ((N, C, True, W), TypeError, r"input_shape must be a sequence of 4 ints"),
        ((N, C, "5", W), TypeError, r"input_shape must be a sequence of 4 ints"),
        (5, TypeError, r"input_shape must be a sequence of 4 ints \(N, C, H, W\); got 5"),
        (None, TypeError, r"input_shape must be a sequence of 4 ints \(N, C, H, W\); got None"),
    ],
)
def test_bad_input_shape(op, shape, error, message):
    with pytest.raises(error, match=message):
        call(op, input_shape=shape, grad=default_grad(4), argmax=default_argmax((4, C, *OUT)))


@pytest.mark.parametrize("op", WITH_INPUT_SHAPE)
def test_input_shape_as_array_or_list(op):
    expected = call(op)
    _assert_same(call(op, input_shape=list((N, C, H, W))), expected)
    _assert_same(call(op, input_shape=np.array((N, C, H, W))), expected)


def _with_input_shape(name, shape):
    """Call the backward ``name`` (every function that takes an input_shape) with ``shape``."""
    g = np.ones((1, C, *OUT), np.float32)
    b = boxes()[:1]
    calls = {
        "roi_align_backward": lambda: cuproi.roi_align_backward(g, b, shape, OUT),
        "roi_pool_backward": lambda: cuproi.roi_pool_backward(
            g, b, np.zeros(g.shape, np.int32), shape
        ),
        "ps_roi_align_backward": lambda: cuproi.ps_roi_align_backward(g, b, shape, OUT),
        "ps_roi_pool_backward": lambda: cuproi.ps_roi_pool_backward(g, b, shape, OUT),
        "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g, b, shape, OUT),
        "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
            g, np.array([[0, 2, 2, 2, 2, 0]], np.float32), shape, OUT
        ),
        "multi_scale_roi_align_backward": lambda: cuproi.multi_scale_roi_align_backward(
            g, b, [shape], OUT, [1.0]
        ),
    }
    return calls[name]()


WITH_ANY_INPUT_SHAPE = (
    "roi_align_backward",
    "roi_pool_backward",
    "ps_roi_align_backward",
    "ps_roi_pool_backward",
    "prroi_pool_backward",
    "roi_align_rotated_backward",
    "multi_scale_roi_align_backward",
)


@pytest.mark.parametrize("op", WITH_ANY_INPUT_SHAPE)
@pytest.mark.parametrize(
    "shape, error, message",
    [
        # The features themselves: named by shape and dtype, with the fix.
        (
            features(),
            TypeError,
            r"a sequence of 4 ints \(N, C, H, W\); got an array of shape \(2, 3, 5, 6\) and "
            r"dtype float32 \(give its .shape instead\)$",
        ),
        # Ints, but 1000 of them: not printed one by one.
        (
            np.arange(1000),
            ValueError,
            r"4 non-negative ints \(N, C, H, W\); got an array of shape \(1000,\) and dtype "
            r"int64$",
        ),
        # Four floats: no .shape to give.
        (
            np.array([2.0, 3, 5, 6]),
            TypeError,
            r"a sequence of 4 ints \(N, C, H, W\); got an array of shape \(4,\) and dtype "
            r"float64$",
        ),
    ],
)
def test_an_array_in_place_of_input_shape_is_named_by_its_shape(op, shape, error, message):
    name = "input_shapes[0]" if op.startswith("multi_scale") else "input_shape"
    with pytest.raises(error) as info:
        _with_input_shape(op, shape)
    text = str(info.value)
    assert text.startswith(f"{name} must be ") and re.search(message, text), text
    assert len(text) < 200


@pytest.mark.parametrize("argument", ["features", "input_shapes"])
def test_an_array_in_place_of_a_list_of_levels_is_named_by_its_shape(argument):
    x = features()
    with pytest.raises(
        TypeError,
        match=rf"^{argument} must be a list with one entry per pyramid level; "
        r"got an array of shape \(2, 3, 5, 6\)$",
    ):
        if argument == "features":
            cuproi.multi_scale_roi_align(x, boxes(), OUT, [1.0])
        else:
            cuproi.multi_scale_roi_align_backward(
                np.ones((4, C, *OUT), np.float32), boxes(), x, OUT, [1.0]
            )


@pytest.mark.parametrize("shape", [(4, C, 1, 3), (4, C, *OUT, 1), (3, C, *OUT), (4, C + 1, *OUT)])
def test_argmax_wrong_shape(shape):
    with pytest.raises(
        ValueError,
        match=rf"argmax must have the shape of grad_output "
        rf"\(4, 3, 2, 3\); got {re_shape(shape)}",
    ):
        call("roi_pool_backward", argmax=np.zeros(shape, np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_, np.complex64])
def test_argmax_not_integer(dtype):
    argmax = default_argmax((4, C, *OUT)).astype(dtype)
    with pytest.raises(
        TypeError,
        match=rf"argmax must be an integer array \(from roi_pool\); "
        rf"got {np.dtype(dtype).name}",
    ):
        call("roi_pool_backward", argmax=argmax)


def test_argmax_not_an_array():
    with pytest.raises(TypeError, match=r"argmax must be an array \(NumPy, CuPy"):
        call("roi_pool_backward", argmax=default_argmax((4, C, *OUT)).tolist())


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int64, np.uint16, np.uint32])
def test_argmax_other_integer_dtypes_work(dtype):
    argmax = default_argmax((4, C, *OUT))
    if np.dtype(dtype).kind == "u":
        argmax = np.maximum(argmax, 0)  # -1 (empty bin) does not fit
    expected = call("roi_pool_backward", argmax=argmax)
    _assert_same(call("roi_pool_backward", argmax=argmax.astype(dtype)), expected)


@pytest.mark.parametrize("bad", [H * W, 10**6, 2**32 + 5, -2])
def test_argmax_out_of_range(bad):
    argmax = default_argmax((4, C, *OUT)).astype(np.int64)
    argmax[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"argmax"):
        call("roi_pool_backward", argmax=argmax)


# ---- contract: empty boxes ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", FORWARD)
def test_empty_boxes_forward(op, dtype):
    x = features(dtype)
    empty = np.zeros((0, 5), np.float32)
    if op == "roi_pool":
        out, argmax = cuproi.roi_pool(x, empty, OUT, return_argmax=True)
        assert argmax.shape == (0, C, *OUT) and argmax.dtype == np.int32
    elif op == "deform_roi_pool":
        out = cuproi.deform_roi_pool(x, empty, np.zeros((0, 2, *OUT), dtype), OUT)
        assert cuproi.deform_roi_pool(x, empty, None, OUT).shape == (0, C, *OUT)
    else:
        out = cuproi.roi_align(x, empty, OUT)
    assert out.shape == (0, C, *OUT) and out.dtype == dtype


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", BACKWARD)
def test_empty_boxes_backward(op, dtype):
    x = features(dtype)
    empty = np.zeros((0, 5), np.float32)
    g = np.zeros((0, C, *OUT), dtype)
    if op == "roi_align_backward":
        results = [cuproi.roi_align_backward(g, empty, x.shape, OUT)]
    elif op == "roi_pool_backward":
        results = [cuproi.roi_pool_backward(g, empty, np.zeros(g.shape, np.int32), x.shape)]
    else:
        grad_x, grad_offset, _ = cuproi.deform_roi_pool_backward(
            g, x, empty, np.zeros((0, 2, *OUT), dtype), OUT
        )
        assert grad_offset.shape == (0, 2, *OUT) and grad_offset.dtype == dtype
        grad_x_none, none, _ = cuproi.deform_roi_pool_backward(g, x, empty, None, OUT)
        assert none is None
        results = [grad_x, grad_x_none]
    for grad in results:
        assert grad.shape == x.shape and grad.dtype == dtype
        assert not grad.any()


# ---- contract: list form, integer and float64 boxes --------------------------------------------


def _per_image(b, images):
    return [b[b[:, 0] == i, 1:] for i in range(images)]


@pytest.mark.parametrize("op", OPS)
def test_box_list_equals_k5_form(op):
    b = boxes()
    _assert_same(call(op, b=_per_image(b, N)), call(op, b=b))
    _assert_same(call(op, b=tuple(_per_image(b, N))), call(op, b=b))


@pytest.mark.parametrize("op", OPS)
def test_box_list_fewer_lists_than_images(op):
    x = features(shape=(3, C, H, W))
    b = boxes()  # images 0 and 1 only: a list of two arrays for a batch of three
    _assert_same(call(op, x, _per_image(b, 2)), call(op, x, b))
    only_first = b[b[:, 0] == 0]
    _assert_same(call(op, x, [only_first[:, 1:]]), call(op, x, only_first))


@pytest.mark.parametrize("op", OPS)
def test_empty_box_list_equals_empty_k5(op):
    x = features()
    expected = call(op, x, np.zeros((0, 5), np.float32))
    _assert_same(call(op, x, []), expected)
    _assert_same(call(op, x, [np.zeros((0, 4), np.float32)] * N), expected)


@pytest.mark.parametrize("op", OPS)
def test_box_list_with_an_empty_image(op):
    b = boxes()
    b_second = b[b[:, 0] == 1]
    _assert_same(call(op, b=[np.zeros((0, 4), np.float32), b_second[:, 1:]]), call(op, b=b_second))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.int16, np.uint16])
def test_integer_boxes_equal_float_boxes(op, int_dtype):
    b = np.abs(np.round(boxes(np.float64)))
    expected = call(op, b=b.astype(np.float32))
    _assert_same(call(op, b=b.astype(int_dtype)), expected)
    _assert_same(call(op, b=[p.astype(int_dtype) for p in _per_image(b, N)]), expected)


@pytest.mark.parametrize("op", OPS)
def test_float64_boxes_with_float32_features(op):
    x = features(np.float32)
    b64 = boxes(np.float64)
    b64[:, 1:] += 1 / 3  # not representable in float32: read as float32, like the kernels do
    _assert_same(call(op, x, b64), call(op, x, b64.astype(np.float32)))
    for result in _results(call(op, x, b64)):
        assert result.dtype == np.float32


@pytest.mark.parametrize("op", OPS)
def test_float32_boxes_with_float64_features(op):
    x = features(np.float64)
    b32 = boxes(np.float32)
    _assert_same(call(op, x, b32), call(op, x, b32.astype(np.float64)))


# ---- contract: layouts, dtypes, no writes ------------------------------------------------------


def _non_contiguous(a):
    """The same values as a view that is not C-contiguous (last two axes swapped in memory)."""
    view = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(view, a)
    return view


def _strided(b):
    """The same boxes as a strided view (every other row and column of a bigger array)."""
    big = np.full((2 * len(b), 2 * b.shape[1]), 99.0, b.dtype)
    big[::2, ::2] = b
    view = big[::2, ::2]
    assert not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op, dtype):
    x = features(dtype)
    b = boxes(dtype)
    k = len(b)
    offset = default_offset(k, dtype)
    g = default_grad(k, C, dtype)
    argmax = default_argmax((k, C, *OUT))
    expected = call(op, x, b, offset=offset, grad=g, argmax=argmax)
    actual = call(
        op,
        _non_contiguous(x),
        _strided(b),
        offset=_non_contiguous(offset),
        grad=_non_contiguous(g),
        argmax=_non_contiguous(argmax),
    )
    _assert_same(actual, expected)
    # A transposed view: (N, C, W, H) memory read as (N, C, H, W).
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    _assert_same(call(op, xt, b, offset=offset, grad=g, argmax=argmax), expected)
    # Per-image boxes as strided views.
    _assert_same(
        call(op, x, [_strided(p) for p in _per_image(b, N)], offset=offset, grad=g, argmax=argmax),
        expected,
    )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", OPS)
def test_inputs_are_not_modified(op, dtype):
    x = features(dtype)
    b = boxes(np.float32)
    k = len(b)
    arrays = {
        "x": x,
        "b": b,
        "offset": default_offset(k, dtype),
        "grad": default_grad(k, C, dtype),
        "argmax": default_argmax((k, C, *OUT)),
    }
    per_image = _per_image(b, N)
    copies = {name: a.copy() for name, a in arrays.items()}
    copies_per_image = [p.copy() for p in per_image]
    call(
        op,
        arrays["x"],
        arrays["b"],
        offset=arrays["offset"],
        grad=arrays["grad"],
        argmax=arrays["argmax"],
    )
    call(
        op,
        arrays["x"],
        per_image,
        offset=arrays["offset"],
        grad=arrays["grad"],
        argmax=arrays["argmax"],
    )
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, copies[name], err_msg=name)
        assert a.dtype == copies[name].dtype
    for p, q in zip(per_image, copies_per_image, strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("dtype", FLOATS)
def test_output_dtype_equals_input_dtype(dtype):
    x = features(dtype)
    b = boxes()
    k = len(b)
    g = default_grad(k, C, dtype)
    offset = default_offset(k, dtype)
    out = cuproi.roi_align(x, b, OUT, sampling_ratio=2)
    assert out.dtype == dtype and out.shape == (k, C, *OUT)
    out, argmax = cuproi.roi_pool(x, b, OUT, return_argmax=True)
    assert out.dtype == dtype and argmax.dtype == np.int32 and argmax.shape == out.shape
    assert cuproi.roi_pool(x, b, OUT).dtype == dtype
    out = cuproi.deform_roi_pool(x, b, offset, OUT)
    assert out.dtype == dtype and out.shape == (k, C, *OUT)
    assert cuproi.deform_roi_pool(x, b, None, OUT).dtype == dtype
    grad = cuproi.roi_align_backward(g, b, x.shape, OUT)
    assert grad.dtype == dtype and grad.shape == x.shape
    grad = cuproi.roi_pool_backward(g, b, argmax, x.shape)
    assert grad.dtype == dtype and grad.shape == x.shape
    grad_x, grad_offset, _ = cuproi.deform_roi_pool_backward(g, x, b, offset, OUT)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert grad_offset.dtype == dtype and grad_offset.shape == offset.shape
    for result in (grad, grad_x, grad_offset):
        assert np.isfinite(result).all()


def test_import_does_not_import_cupy():
    code = "import cuproi, sys; assert 'cupy' not in sys.modules, 'cupy was imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_calls_on_numpy_do_not_import_cupy():
    code = (
        "import numpy as np, cuproi, sys\n"
        "x = np.ones((1, 1, 4, 4), np.float32)\n"
        "b = np.array([[0, 0, 0, 3, 3]], np.float32)\n"
        "cuproi.roi_align(x, b, 2)\n"
        "cuproi.roi_pool(x, b, 2)\n"
        "cuproi.deform_roi_pool(x, b, None, 2)\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
