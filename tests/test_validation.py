"""Argument validation of every public op function, and the contract details around it.

Every bad input must raise TypeError (wrong kind or dtype), ValueError (wrong shape or value) or
IndexError (a batch index outside the batch) with a message that names what was received and
what is expected. Each check is one test over every function that takes the argument
(``calls.takes``), called through ``calls.call`` with valid arguments but the one changed; a
message differing between functions is a bug. The second half checks contract details that are
not errors: empty boxes, the per-image list form, integer, strided and byte-swapped inputs,
dtypes, that inputs are never written to, and that ``import cuproi`` leaves CuPy alone.

All of this runs on NumPy arrays (the CPU backend).
"""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from calls import (
    FLOATS,
    FUNCTIONS,
    OUT,
    SPECS,
    C,
    H,
    N,
    W,
    boxes,
    call,
    features,
    features_for,
    label,
    results,
    takes,
    valid,
)

import cuproi
from cuproi import _validate

ROOT = Path(__file__).resolve().parents[1]
MAX = _validate.MAX_COORDINATE
MAX_RATIO = _validate.MAX_SAMPLING_RATIO
ARRAY = r" must be an array \(NumPy, CuPy, or any with __dlpack__ such as torch or JAX\); got "
FLOATS_ONLY = r" must be float16, float32 or float64; got "
# By the values a box row holds after its batch index: what the messages call (K, 1 + width)
# arrays and (L, width) ones, and what they say of a (K, width) array.
ROWS = {
    4: (
        r"\(K, 5\) array \[batch_index, x1, y1, x2, y2\]",
        r"\(L, 4\) array \[x1, y1, x2, y2\]",
        r"\(a \(K, 4\) array has no batch index: ",
    ),
    5: (
        r"\(K, 6\) array \[batch_index, cx, cy, w, h, angle\]",
        r"\(L, 5\) array \[cx, cy, w, h, angle\] of rotated boxes",
        r"\(a \(K, 5\) array is either axis-aligned boxes .* or rotated boxes without a batch "
        r"index: ",
    ),
}


def shape(value):
    """A shape as a regular expression."""
    return re.escape(str(tuple(value)))


def expect(name, error, message, x=None, **given):
    """``call(name, x, **given)`` raises ``error`` with a message that ``message`` matches."""
    try:
        call(name, x, **given)
    except error as raised:
        if re.search(message, str(raised)):
            return
        detail = f"raised {raised!r}, which does not match {message!r}"
    else:
        detail = f"did not raise {error.__name__}"
    with np.printoptions(threshold=10, edgeitems=2):
        raise AssertionError(f"{name} with {given!r}: {detail}")


def assert_same(actual, expected):
    """Equal results: the same arrays (dtype, shape, values), None where None."""
    actual, expected = results(actual), results(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
            continue
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(a, e)


def width(name):
    """Values per box row after the batch index."""
    return 5 if SPECS[name].rotated else 4


def edited(b, *edits):
    """``b`` with each ``(row, column, value)`` of ``edits`` written in a copy."""
    b = b.copy()
    for row, col, value in edits:
        b[row, col] = value
    return b


def per_image(b, images=N):
    return [b[b[:, 0] == i, 1:] for i in range(images)]


# ---- boxes: batch index and values -------------------------------------------------------------

HOLDS = r" but the input holds 2 images \(valid: 0 to 1\)"
WHOLE = r"; batch indices must be whole numbers"
# Batch indices written in valid boxes ({row: index}), the error and its message; the float64
# ones are checked as given, before the cast to float32 would round them.
BATCH_INDEX = {
    np.float32: [
        *[({2: i}, IndexError, rf"boxes\[2\] has batch index {i}{HOLDS}") for i in (2, 3, 1000)],
        ({1: -1}, IndexError, rf"boxes\[1\] has batch index -1{HOLDS}"),
        *[
            ({r: i}, ValueError, rf"boxes\[{r}\] has batch index {i}{WHOLE}")
            for r, i in [(3, 0.5), (3, 1.25), (3, -0.5), (0, np.nan), (0, np.inf)]
        ],
        ({1: 7, 3: 0.5}, IndexError, r"boxes\[1\] has batch index 7"),  # the first bad box
    ],
    np.float64: [
        ({0: 1 + 1e-9}, ValueError, rf"boxes\[0\] has batch index 1.000000001{WHOLE}"),
        ({0: 2**24 + 1}, IndexError, rf"boxes\[0\] has batch index 16777217{HOLDS}"),
    ],
}


@pytest.mark.parametrize("name", takes("boxes"))
def test_batch_index(name):
    for dtype, rows in BATCH_INDEX.items():
        for indices, error, message in rows:
            b = edited(boxes(dtype, SPECS[name].rotated), *[(r, 0, i) for r, i in indices.items()])
            expect(name, error, message, boxes=b)


@pytest.mark.parametrize("name", takes("boxes"))
def test_non_finite_box_values(name):
    values = r"values \[cx, cy, w, h, angle\] = " if SPECS[name].rotated else "coordinates "
    for col in range(1, 1 + width(name)):
        for value in (np.nan, np.inf, -np.inf):
            b = edited(boxes(rotated=SPECS[name].rotated), (2, col, value))
            expect(name, ValueError, rf"boxes\[2\] has non-finite {values}\[.*(nan|inf)", boxes=b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 16])
@pytest.mark.parametrize("name", takes("spatial_scale"))
def test_box_beyond_the_coordinate_bound(name, scale, dtype):
    limit = MAX / scale
    values = r"centre and size \[cx, cy, w, h\] =" if SPECS[name].rotated else "coordinates"
    message = rf"boxes\[1\] has {values} .*, which exceed \+-{MAX} feature cells at spatial_scale "
    x, message = features_for(name, dtype), message + str(scale)
    for edit in [(1, 3, limit + 1 / scale), (1, 1, -limit - 1 / scale), (1, 4, 4 * limit)]:
        b = edited(boxes(dtype, SPECS[name].rotated), edit)
        expect(name, ValueError, message, x, boxes=b, spatial_scale=scale)


def box_at_the_bound(limit, dtype, rotated):
    b = boxes(dtype, rotated)
    b[1, 1:5] = [-limit, -limit, limit, limit]  # the largest box there is
    b[2, 1:5] = limit  # a point at the corner (rotated: the largest box, centred there)
    b[3, 1:5] = [-limit, 1.0, 2.0, limit]
    return b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 16])
@pytest.mark.parametrize("name", SPECS)
def test_box_just_inside_the_bound_works(name, scale, dtype):
    """The largest box there is (adaptive sampling too); roi_pool_backward, which has no
    spatial_scale, takes the boxes of a forward at any scale."""
    spec = SPECS[name]
    b = box_at_the_bound(MAX / scale, dtype, spec.rotated)
    given = [{"spatial_scale": scale} if "spatial_scale" in spec.parameters else {}]
    if "sampling_ratio" in spec.parameters:  # adaptive and fixed
        given = [{**given[0], "sampling_ratio": ratio} for ratio in (-1, 2)]
    for options in given:
        for result in results(call(name, features_for(name, dtype), boxes=b, **options)):
            assert result is None or np.isfinite(result).all()
            assert result is None or result.dtype in (dtype, np.int32)  # argmax


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 16])
def test_roi_pool_backward_takes_the_boxes_of_its_forward(scale, dtype):
    x = features(dtype)
    b = box_at_the_bound(MAX / scale, dtype, False)  # up to 16 * 2**20 image pixels at 1 / 16
    out, argmax = cuproi.roi_pool(x, b, OUT, spatial_scale=scale, return_argmax=True)
    grad = cuproi.roi_pool_backward(np.ones_like(out), b, argmax, x.shape)
    assert grad.dtype == dtype and grad.sum() == pytest.approx(float((argmax >= 0).sum()))


# ---- boxes: shape, kind, dtype -----------------------------------------------------------------


@pytest.mark.parametrize("name", takes("boxes"))
def test_box_array_shapes(name):
    w = width(name)
    array, _, hint = ROWS[w]
    hint += rf"add it as the first column, or pass a list with one \(L, {w}\) array per image\)$"
    message = rf"boxes must be a {array}.*; got shape \(4, {w}\) {hint}"
    expect(name, ValueError, message, boxes=np.zeros((4, w)))
    for bad in [(w + 1,), (1, 4, w + 1), (4, w + 2), (4, w - 1), ()]:
        message = rf"boxes must be a {array}.* got shape {shape(bad)}$"
        expect(name, ValueError, message, boxes=np.zeros(bad, np.float32))


@pytest.mark.parametrize("name", takes("boxes"))
def test_bad_box_lists(name):
    w, (_, rows, _) = width(name), ROWS[width(name)]
    first = boxes(rotated=SPECS[name].rotated)[:2, 1:]
    message = r"boxes is a list of 3 per-image arrays but the input holds 2 images"
    expect(name, ValueError, message, boxes=[first] * 3)
    for bad in [(2, w + 1), (w,), (2, w, 1), (2, w - 1)]:
        message = rf"boxes\[1\] must be an {rows}; got shape {shape(bad)}"
        expect(name, ValueError, message, boxes=[first, np.ones(bad, np.float32)])


@pytest.mark.parametrize("name", takes("boxes"))
def test_boxes_of_bool_or_complex_dtype(name):
    b = boxes(rotated=SPECS[name].rotated)
    for dtype in (np.bool_, np.complex64, np.complex128):
        real = rf"must hold real numbers \(float or int\); got {np.dtype(dtype).name}"
        expect(name, TypeError, "boxes " + real, boxes=b.astype(dtype))
        expect(name, TypeError, r"boxes\[1\] " + real, boxes=[b[:2, 1:], b[2:, 1:].astype(dtype)])


@pytest.mark.parametrize("name", takes("boxes"))
def test_boxes_not_an_array(name):
    # A Python list is the per-image list form; its items must be arrays: a clear TypeError.
    first = boxes(rotated=SPECS[name].rotated)[:2, 1:]
    for b, where, kind in [
        ([0, 1.0, 1.0, 3.0, 3.0], r"boxes\[0\]", "int"),
        ([[0, 1.0, 1.0, 3.0, 3.0]], r"boxes\[0\]", "list"),
        ((0.0, 1.0, 1.0, 3.0, 3.0), r"boxes\[0\]", "float"),
        ([first, None], r"boxes\[1\]", "NoneType"),
        ("boxes", "boxes", "str"),
    ]:
        expect(name, TypeError, rf"{where}{ARRAY}builtins.{kind}$", boxes=b)


@pytest.mark.parametrize("name", SPECS)
def test_none_for_a_required_array(name):
    spec = SPECS[name]
    required = [a for a in ("input", "boxes", "grad_output", "argmax") if a in spec.required]
    for argument in set(required) - set(spec.also):  # input=None is no input in max mode
        message = rf"{label(name, argument)}{ARRAY}builtins.NoneType$"
        expect(name, TypeError, message, **{argument: None})


# ---- features ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", takes("input"))
def test_bad_input(name):
    x, c = label(name, "input"), SPECS[name].channels
    for bad in [(c, H, W), (N, c, H, W, 1), (H, W)]:
        message = rf"{x} must be a 4-D array \(N, C, H, W\); got shape {shape(bad)}"
        expect(name, ValueError, message, input=features(shape=bad))
    for bad in [(N, c, 0, W), (N, c, H, 0), (N, c, 0, 0)]:
        message = rf"{x} must have height and width >= 1; got {shape(bad)}"
        expect(name, ValueError, message, input=np.zeros(bad, np.float32))
    for dtype in [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]:
        message = rf"{x}{FLOATS_ONLY}{np.dtype(dtype).name}"
        expect(name, TypeError, message, input=features_for(name).astype(dtype))
    for bad, kind in [(features_for(name).tolist(), "list"), (1.0, "float")]:
        expect(name, TypeError, rf"{x}{ARRAY}builtins.{kind}", input=bad)
    if "input_shape" in SPECS[name].parameters:  # a backward given the features and their shape
        message = r"input has shape \(2, 3, 5, 7\) but input_shape is \(2, 3, 5, 6\)"
        expect(name, ValueError, message, input=features(shape=(N, c, H, W + 1)))


@pytest.mark.parametrize("name", [name for name in SPECS if name.startswith("ps_")])
def test_position_sensitive_channels(name):
    for channels in (5, 7, 13):
        x = features(shape=(N, channels, H, W))
        given = {"input": x} if "input" in SPECS[name].parameters else {"input_shape": x.shape}
        message = rf"{[*given][0]} has {channels} channels, which is not a multiple of output_size "
        expect(name, ValueError, message + "2 x 3 = 6", x, **given)


# ---- grad_output, input_shape, argmax ----------------------------------------------------------


@pytest.mark.parametrize("name", takes("grad_output"))
def test_bad_grad_output(name):
    c = SPECS[name].out_channels(SPECS[name].channels)
    for bad, kind in [(np.ones((4, c, *OUT)).tolist(), "list"), (1.0, "float")]:
        expect(name, TypeError, rf"grad_output{ARRAY}builtins.{kind}", grad_output=bad)
    for dtype in (np.int32, np.bool_, np.complex64):
        bad = np.ones((4, c, *OUT), dtype)
        expect(name, TypeError, rf"grad_output{FLOATS_ONLY}{np.dtype(dtype).name}", grad_output=bad)
    for bad in [(4, c, 6), (4, c, 2, 3, 1), (4,)]:
        message = rf"grad_output must be a 4-D array \(K, C, PH, PW\); got shape {shape(bad)}"
        expect(name, ValueError, message, grad_output=np.ones(bad, np.float32))
    mismatches = [(3, c, *OUT), (5, c, *OUT), (4, c + 1, *OUT), (4, c - 1, *OUT)]
    for bad in mismatches + [(4, c, 3, 3), (4, c, 2, 2), (4, c, 3, 2)]:
        g = np.ones(bad, np.float32)
        if name == "roi_pool_backward" and bad[2:] != OUT:
            # It has no output_size: any (PH, PW) goes, with a matching argmax.
            assert call(name, grad_output=g, argmax=np.zeros(bad, np.int32)).shape == (N, C, H, W)
            continue
        given = {"argmax": np.zeros(bad, np.int32)} if "argmax" in SPECS[name].parameters else {}
        message = rf"grad_output must have shape \(4, {c}, 2, 3\) \(boxes, channels, output_size\)"
        expect(name, ValueError, rf"{message}; got {shape(bad)}", grad_output=g, **given)


@pytest.mark.parametrize("name", takes("input_shape"))
def test_bad_input_shape(name):
    shape_, c = label(name, "input_shape"), SPECS[name].channels
    sequence = rf"{shape_} must be a sequence of 4 ints \(N, C, H, W\); got "
    four = rf"{shape_} must be 4 non-negative ints \(N, C, H, W\); got "
    plane = rf"{shape_} must have height and width >= 1; got "
    for bad, error, message in [
        ((N, c, H), ValueError, four + shape((N, c, H))),
        ((N, c, H, W, 1), ValueError, four + shape((N, c, H, W, 1))),
        ((N, -c, H, W), ValueError, four + shape((N, -c, H, W))),
        ((N, c, 0, W), ValueError, plane + shape((N, c, 0, W))),
        ((N, c, H, 0), ValueError, plane),
        ((N, c, 5.0, W), TypeError, sequence + shape((N, c, 5.0, W))),
        ((N, c, True, W), TypeError, sequence),
        ((N, c, "5", W), TypeError, sequence),
        (5, TypeError, sequence + "5"),
        (None, TypeError, sequence + "None"),
        # An array: named by its shape and dtype, not its values, with the fix if it has 4-D.
        (
            features(),
            TypeError,
            rf"^{sequence}an array of shape \(2, 3, 5, 6\) and dtype float32 \(give its .shape "
            r"instead\)$",
        ),
        (np.arange(1000), ValueError, rf"^{four}an array of shape \(1000,\) and dtype int64$"),
        (
            np.array([2.0, 3, 5, 6]),
            TypeError,
            rf"^{sequence}an array of shape \(4,\) and dtype float64$",
        ),
    ]:
        if isinstance(bad, int) and name.startswith("multi_scale"):  # [5]: one shape, of ints
            message = r"input_shapes must be a list with one \(N, C, H, W\) shape per level; got "
            message += r"one shape \[5\]"
        expect(name, error, message, input_shape=bad)
    expected = call(name)
    assert_same(call(name, input_shape=list((N, c, H, W))), expected)
    assert_same(call(name, input_shape=np.array((N, c, H, W))), expected)


def test_an_array_in_place_of_a_list_of_levels_is_named_by_its_shape():
    x, g = features(), np.ones((4, C, *OUT), np.float32)
    message = r" must be a list with one entry per pyramid level; got an array of shape "
    with pytest.raises(TypeError, match=rf"^features{message}\(2, 3, 5, 6\)$"):
        cuproi.multi_scale_roi_align(x, boxes(), OUT, [1.0])
    with pytest.raises(TypeError, match=rf"^input_shapes{message}\(2, 3, 5, 6\)$"):
        cuproi.multi_scale_roi_align_backward(g, boxes(), x, OUT, [1.0])


@pytest.mark.parametrize("name", takes("argmax"))
def test_bad_argmax(name):
    good = valid(name)["argmax"]
    for bad in [(4, C, 1, 3), (4, C, *OUT, 1), (3, C, *OUT), (4, C + 1, *OUT)]:
        message = rf"argmax must have the shape of grad_output \(4, 3, 2, 3\); got {shape(bad)}"
        expect(name, ValueError, message, argmax=np.zeros(bad, np.int32))
    for dtype in [np.float32, np.float64, np.bool_, np.complex64]:
        message = rf"argmax must be an integer array \(from roi_pool\); got {np.dtype(dtype).name}"
        expect(name, TypeError, message, argmax=good.astype(dtype))
    expect(name, TypeError, rf"argmax{ARRAY}builtins.list", argmax=good.tolist())
    for value in [H * W, 10**6, 2**32 + 5, -2]:
        bad = good.astype(np.int64)
        bad.flat[0] = value
        expect(name, ValueError, rf"argmax holds values outside \[-1, {H * W}\)", argmax=bad)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int64, np.uint16, np.uint32])
@pytest.mark.parametrize("name", takes("argmax"))
def test_argmax_of_other_integer_dtypes(name, dtype):
    argmax = valid(name)["argmax"]
    if np.dtype(dtype).kind == "u":
        argmax = np.maximum(argmax, 0)  # -1 (empty bin) does not fit
    assert_same(call(name, argmax=argmax.astype(dtype)), call(name, argmax=argmax))


# ---- sizes and options -------------------------------------------------------------------------

BAD_OPTIONS = {  # argument: [(value, error, message)]; ARGUMENT stands for the argument's label
    "output_size": [
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
        ((1, 2, 3), ValueError, r"output_size must be an int or a pair \(h, w\); got \(1, 2, 3\)"),
        ((4,), ValueError, r"output_size must be an int or a pair \(h, w\); got \(4,\)"),
    ],
    "spatial_scale": [
        (0, ValueError, r"ARGUMENT must be positive; got 0.0"),
        (-0.5, ValueError, r"ARGUMENT must be positive; got -0.5"),
        (float("nan"), ValueError, r"ARGUMENT must be finite; got nan"),
        (float("inf"), ValueError, r"ARGUMENT must be finite; got inf"),
        (-float("inf"), ValueError, r"ARGUMENT must be finite; got -inf"),
        ("1", TypeError, r"ARGUMENT must be a real number; got '1' of type str"),
        (None, TypeError, r"ARGUMENT must be a real number; got None of type NoneType"),
        (True, TypeError, r"ARGUMENT must be a real number; got True of type bool"),
        (1j, TypeError, r"ARGUMENT must be a real number; got 1j of type complex"),
        # Positive, but zero in the compute dtype.
        (1e-300, ValueError, r"spatial_scales?( value)? 1e-300 is not a positive float32 \(the "),
    ],
    "sampling_ratio": [
        (1.5, TypeError, r"sampling_ratio must be an int; got 1.5 of type float"),
        (2.0, TypeError, r"sampling_ratio must be an int; got 2.0 of type float"),
        (True, TypeError, r"sampling_ratio must be an int; got True of type bool"),
        ("2", TypeError, r"sampling_ratio must be an int; got '2' of type str"),
        (None, TypeError, r"sampling_ratio must be an int; got None of type NoneType"),
        (
            1025,
            ValueError,
            r"sampling_ratio must be at most 1024 \(<= 0 means adaptive\); got 1025",
        ),
        (2**40, ValueError, rf"sampling_ratio must be at most {MAX_RATIO}.*got {2**40}"),
    ],
    "gamma": [
        (float("nan"), ValueError, r"gamma must be finite; got nan"),
        (float("inf"), ValueError, r"gamma must be finite; got inf"),
        (-float("inf"), ValueError, r"gamma must be finite; got -inf"),
        (np.float32("nan"), ValueError, r"gamma must be finite; got nan"),
        ("0.1", TypeError, r"gamma must be a real number; got '0.1' of type str"),
        (None, TypeError, r"gamma must be a real number; got None of type NoneType"),
    ],
    "pool_mode": [
        ("sum", ValueError, r"pool_mode must be 'avg' or 'max'; got 'sum'"),
        ("Max", ValueError, r"pool_mode must be 'avg' or 'max'; got 'Max'"),
    ],
    "canonical_scale": [
        (0, ValueError, r"canonical_scale must be positive; got 0.0"),
        (np.inf, ValueError, r"canonical_scale must be finite; got inf"),
    ],
    "canonical_level": [(4.5, TypeError, r"canonical_level must be an int; got 4.5 of type float")],
}


@pytest.mark.parametrize(
    "name, argument", [(name, a) for a in BAD_OPTIONS for name in takes(a)], ids=str
)
def test_bad_option(name, argument):
    for value, error, message in BAD_OPTIONS[argument]:
        message = message.replace("ARGUMENT", label(name, argument))
        expect(name, error, message, **{argument: value})


FLAGS = ("aligned", "clockwise", "return_argmax", "deterministic", "channels_last")


@pytest.mark.parametrize("name, flag", [(name, f) for f in FLAGS for name in takes(f)], ids=str)
def test_yes_no_options_must_be_bools(name, flag):
    for value in ("False", 1, None):
        expect(name, TypeError, rf"{flag} must be a bool; got {value!r} of type ", **{flag: value})
    assert_same(call(name, **{flag: np.bool_(True)}), call(name, **{flag: True}))


@pytest.mark.parametrize("name", takes("deterministic"))
def test_deterministic_is_keyword_only(name):
    parameters = inspect.signature(getattr(cuproi, SPECS[name].function)).parameters
    assert parameters["deterministic"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", takes("spatial_scale"))
def test_numpy_scalars_are_accepted(name):
    expected = call(name, output_size=(2, 3), spatial_scale=0.5)
    actual = call(name, output_size=(np.int64(2), np.int32(3)), spatial_scale=np.float32(0.5))
    assert_same(actual, expected)


@pytest.mark.parametrize("name", takes("sampling_ratio"))
def test_sampling_ratio_in_range_works(name):
    for ratio in [0, -1, -1000, MAX_RATIO]:
        # 2**20 samples a bin: only the separable CPU paths compute them in a blink.
        fast = ratio < MAX_RATIO or name in SEPARABLE
        b = boxes(rotated=SPECS[name].rotated)[: 4 if fast else 0]
        for result in results(call(name, sampling_ratio=ratio, boxes=b)):
            assert result is None or np.isfinite(result).all()


SEPARABLE = ("roi_align", "roi_align_backward", "deform_roi_pool", "deform_roi_pool_backward")


# ---- offset and mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", takes("offset"))
def test_bad_offset(name):
    for bad in [(4, 2, 3, 3), (4, 1, 2, 3), (5, 2, 2, 3), (3, 2, 2, 3), (4, 2, 3, 2)]:
        message = r"offset must have shape \(4, 2, 2, 3\) \(boxes, \(dx, dy\), output_size\); got "
        expect(name, ValueError, message + shape(bad), offset=np.zeros(bad, np.float32))
    for bad in [(4, 2, 6), (4, 2, 2, 3, 1), ()]:
        message = rf"offset must be a 4-D array \(K, 2, PH, PW\); got shape {shape(bad)}"
        expect(name, ValueError, message, offset=np.zeros(bad, np.float32))
    for dtype in [np.int32, np.int64, np.bool_, np.complex64, np.longdouble]:
        bad = np.zeros((4, 2, *OUT), dtype)
        expect(name, TypeError, rf"offset{FLOATS_ONLY}{np.dtype(dtype).name}", offset=bad)
    expect(name, TypeError, rf"offset{ARRAY}builtins.list$", offset=np.zeros((4, 2, *OUT)).tolist())


@pytest.mark.parametrize("name", takes("mask"))
def test_bad_mask(name):
    for bad in [(4, 1, 2, 2), (4, 2, 2, 3), (3, 1, 2, 3)]:
        message = r"mask must have shape \(4, 1, 2, 3\) \(boxes, 1, output_size\); got "
        expect(name, ValueError, message + shape(bad), mask=np.ones(bad, np.float32))
    for bad in [(4, 2, 3), (4, 1, 2, 3, 1)]:
        message = rf"mask must be a 4-D array \(K, 1, PH, PW\); got shape {shape(bad)}"
        expect(name, ValueError, message, mask=np.ones(bad, np.float32))
    for dtype in [np.int32, np.bool_, np.complex64, np.longdouble]:  # as the offset
        bad = np.ones((4, 1, *OUT), dtype)
        expect(name, TypeError, rf"mask{FLOATS_ONLY}{np.dtype(dtype).name}", mask=bad)
    expect(name, TypeError, rf"mask{ARRAY}builtins.list$", mask=[[1.0]])


# ---- contract: empty boxes, the list form, integer and float64 boxes ---------------------------


def arrays(name, x):
    """The valid array arguments of entry ``name`` besides the features, by argument."""
    given = valid(name, x)
    return {a: given[a] for a in ("boxes", "grad_output", "offset", "argmax") if a in given}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", SPECS)
def test_results_with_and_without_boxes(name, dtype):
    """Results of the features' dtype (a box gradient float32 for float16), argmax int32; with
    no boxes, per-box results without rows and zero gradients."""
    spec, x = SPECS[name], features_for(name, dtype)
    if spec.function.endswith("box_backward"):
        want = [((4, 5), np.promote_types(dtype, np.float32))]
    elif spec.function.endswith("backward"):  # and deform_roi_pool's offset gradient
        want = [(x.shape, dtype), ((4, 2, *OUT), dtype)]
    else:
        want = [((4, spec.out_channels(spec.channels), *OUT), t) for t in (dtype, np.int32)]
    full = results(call(name, x))
    for result, (shape_, dtype_) in zip(full, want, strict=False):
        assert result is None or (result.dtype == dtype_ and result.shape == shape_)
        assert result is None or np.isfinite(result).all()
    empty = boxes(rotated=spec.rotated)[:0]
    for e, f in zip(results(call(name, x, boxes=empty)), full, strict=True):
        assert (e is None) == (f is None)
        if f is not None:
            assert e.dtype == f.dtype and not e.any()
            assert e.shape == ((0, *f.shape[1:]) if len(f) == 4 else f.shape)  # K = 4, N = 2
    assert_same(call(name, x, boxes=[]), call(name, x, boxes=empty))
    assert_same(call(name, x, boxes=[empty[:, 1:]] * N), call(name, x, boxes=empty))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_box_lists(name):
    b = boxes(rotated=SPECS[name].rotated)
    expected = call(name, boxes=b)
    assert_same(call(name, boxes=per_image(b)), expected)
    assert_same(call(name, boxes=tuple(per_image(b))), expected)
    # Fewer lists than images: the last images have no boxes.
    x = features_for(name, images=3)
    assert_same(call(name, x, boxes=per_image(b)), call(name, x, boxes=b))
    first, second = b[b[:, 0] == 0], b[b[:, 0] == 1]
    assert_same(call(name, x, boxes=[first[:, 1:]]), call(name, x, boxes=first))
    # An image without boxes.
    assert_same(call(name, boxes=[second[:0, 1:], second[:, 1:]]), call(name, boxes=second))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_integer_and_other_float_boxes(name):
    """Boxes are read in the compute dtype of the features: float32 for float32 features."""
    b = np.abs(np.round(boxes(np.float64, SPECS[name].rotated)))
    expected = call(name, boxes=b.astype(np.float32))
    for int_dtype in (np.int32, np.int64, np.int16, np.uint16):
        assert_same(call(name, boxes=b.astype(int_dtype)), expected)
        assert_same(call(name, boxes=[p.astype(int_dtype) for p in per_image(b)]), expected)
    b64 = boxes(np.float64, SPECS[name].rotated)
    b64[:, 1:] += 1 / 3  # not representable in float32: read as float32, like the kernels do
    assert_same(call(name, boxes=b64), call(name, boxes=b64.astype(np.float32)))
    x = features_for(name, np.float64)
    b32 = boxes(np.float32, SPECS[name].rotated)
    assert_same(call(name, x, boxes=b32), call(name, x, boxes=b32.astype(np.float64)))


# ---- contract: layouts, byte order, no writes --------------------------------------------------


def non_contiguous(a):
    """The same values as a view that is not C-contiguous (last two axes swapped in memory)."""
    view = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(view, a)
    return view


def strided(b):
    """The same boxes as a strided view (every other row and column of a bigger array)."""
    big = np.full((2 * len(b), 2 * b.shape[1]), 99.0, b.dtype)
    big[::2, ::2] = b
    assert not big[::2, ::2].flags.c_contiguous
    return big[::2, ::2]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", [*FUNCTIONS, "roi_align_backward-max"])  # every array read
def test_layouts_and_byte_order(name, dtype):
    """Strided views, per-image lists and big-endian data (from a file, say) give the results of
    contiguous native arrays, for every array argument; no input is written to."""
    x = features_for(name, dtype)
    given = arrays(name, x)
    b = given["boxes"] = given["boxes"].astype(np.promote_types(dtype, np.float32))
    lists = [per_image(b), [strided(p) for p in per_image(b)]]
    copies = [np.copy(a) for a in (x, *given.values(), *lists[0])]
    expected = call(name, x, **given)
    views = {a: strided(v) if a == "boxes" else non_contiguous(v) for a, v in given.items()}
    assert_same(call(name, non_contiguous(x), **views), expected)
    # A transposed view: (N, C, W, H) memory read as (N, C, H, W).
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert_same(call(name, xt, **given), expected)
    for boxes_ in lists:
        assert_same(call(name, x, **{**given, "boxes": boxes_}), expected)
    big = {a: v.astype(v.dtype.newbyteorder(">")) for a, v in {"x": x, **given}.items()}
    assert not big["x"].dtype.isnative
    assert_same(call(name, **big), expected)
    for a, copy in zip((x, *given.values(), *lists[0]), copies, strict=True):
        np.testing.assert_array_equal(a, copy)
        assert a.dtype == copy.dtype


class _PinnedHost:
    """Host memory that DLPack calls pinned (kDLCUDAHost): a torch tensor from pin_memory."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (3, 0)


def test_pinned_host_memory_is_host_memory():
    """Pinned host memory is read by the CPU backend (it was refused as an unknown device)."""
    x, b = features_for("roi_align"), boxes()
    assert_same(cuproi.roi_align(_PinnedHost(x), _PinnedHost(b), 3), cuproi.roi_align(x, b, 3))


def test_import_and_calls_on_numpy_do_not_import_cupy():
    code = (
        "import numpy as np, cuproi, sys\n"
        "assert 'cupy' not in sys.modules, 'import cuproi imported cupy'\n"
        "x = np.ones((1, 1, 4, 4), np.float32)\n"
        "b = np.array([[0, 0, 0, 3, 3]], np.float32)\n"
        "cuproi.roi_align(x, b, 2)\n"
        "cuproi.roi_pool(x, b, 2)\n"
        "cuproi.deform_roi_pool(x, b, None, 2)\n"
        "assert 'cupy' not in sys.modules, 'a call imported cupy'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("value", ["no", "False", 1, None])
def test_set_eager_checks_takes_a_bool_only(value):
    """A string such as "no" was taken as true (bool("no")); now a TypeError, the setting kept."""
    before = cuproi.set_eager_checks(False)
    try:
        with pytest.raises(
            TypeError, match=f"enabled must be a bool; got {re.escape(repr(value))}"
        ):
            cuproi.set_eager_checks(value)
        assert cuproi.set_eager_checks(np.True_) is False
        assert cuproi.set_eager_checks(False) is True
    finally:
        cuproi.set_eager_checks(before)
