"""Absurd sizes and scalars raise a ValueError naming the argument, before anything is allocated.

The documented limits (cuproi._validate.MAX_OUTPUT_SIZE, MAX_OUTPUT_ELEMENTS and
MAX_COORDINATE; MAX_CANONICAL_LEVEL and MAX_CANONICAL_SCALE of multi_scale_roi_align) are
checked on every public function that takes the argument. "Before anything is allocated" is
measured with tracemalloc, which sees NumPy's buffers: no call may take more than a few MiB on
its way to the error (before these checks, ``output_size=2**31`` had ``roi_pool`` take 8 GB).
"""

import time
import tracemalloc
from functools import partial

import numpy as np
import pytest
from conftest import CUPY

import cuproi
import cuproi._cpu  # noqa: F401  (imported here, not inside a measured call)
from cuproi import _validate
from cuproi.multi_scale_roi_align import MAX_CANONICAL_LEVEL, MAX_CANONICAL_SCALE

MAX_SIZE = _validate.MAX_OUTPUT_SIZE
MAX_ELEMENTS = _validate.MAX_OUTPUT_ELEMENTS
MAX_COORDINATE = _validate.MAX_COORDINATE
C = 8  # channels: 2 output channels of the position-sensitive ops at 2 x 2 bins


def _boxes(k=1):
    """``k`` copies of one box, as a read-only view of one row."""
    return np.broadcast_to(np.array([0, 1, 1, 6, 6], np.float32), (k, 5))


def _rotated(k=1):
    return np.broadcast_to(np.array([0, 4, 4, 4, 4, 30], np.float32), (k, 6))


X = np.zeros((1, C, 8, 8), np.float32)
SHAPE = X.shape
G = np.zeros((1, C, 2, 2), np.float32)
PS_G = np.zeros((1, 2, 2, 2), np.float32)
ARGMAX = np.zeros(G.shape, np.int32)
LEVELS = [X, X[..., ::2, ::2]]
LEVEL_SHAPES = [x.shape for x in LEVELS]
B = _boxes()

# Every public function with an output_size, called as f(output_size, spatial_scale) on valid
# arrays of one box (2 x 2 bins); multi_scale_roi_align's scale is that of its first level.
FORWARDS = ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "prroi_pool")
WITH_OUTPUT_SIZE = {
    **{op: partial(getattr(cuproi, op), X, B) for op in FORWARDS},
    "roi_align_backward": partial(cuproi.roi_align_backward, G, B, SHAPE),
    "roi_align_box_backward": partial(cuproi.roi_align_box_backward, G, X, B),
    "deform_roi_pool": partial(cuproi.deform_roi_pool, X, B, None),
    "deform_roi_pool_backward": partial(cuproi.deform_roi_pool_backward, G, X, B, None),
    "deform_roi_pool_box_backward": partial(cuproi.deform_roi_pool_box_backward, G, X, B, None),
    "ps_roi_align_backward": partial(cuproi.ps_roi_align_backward, PS_G, B, SHAPE),
    "ps_roi_pool_backward": partial(cuproi.ps_roi_pool_backward, PS_G, B, SHAPE),
    "prroi_pool_backward": partial(cuproi.prroi_pool_backward, G, B, SHAPE),
    "prroi_pool_box_backward": partial(cuproi.prroi_pool_box_backward, G, X, B),
    "roi_align_rotated": partial(cuproi.roi_align_rotated, X, _rotated()),
    "roi_align_rotated_backward": partial(cuproi.roi_align_rotated_backward, G, _rotated(), SHAPE),
    "multi_scale_roi_align": lambda p, s: cuproi.multi_scale_roi_align(LEVELS, B, p, [s, s / 2]),
    "multi_scale_roi_align_backward": lambda p, s: cuproi.multi_scale_roi_align_backward(
        G, B, LEVEL_SHAPES, p, [s, s / 2]
    ),
    "quantization_error": lambda p, s: cuproi.quantization_error(B, s, p),
}
# The forwards, called as f(boxes, output_size): their output is (K, C, PH, PW).
FORWARD = {
    **{op: getattr(cuproi, op) for op in FORWARDS},
    "deform_roi_pool": lambda x, b, p: cuproi.deform_roi_pool(x, b, None, p),
    "roi_align_rotated": lambda x, b, p: cuproi.roi_align_rotated(x, _rotated(len(b)), p),
    "multi_scale_roi_align": lambda x, b, p: cuproi.multi_scale_roi_align([x], b, p, [1.0]),
}
# The backwards whose gradient is allocated from input_shape, called as f(input_shape).
FROM_INPUT_SHAPE = {
    "roi_align_backward": lambda shape: cuproi.roi_align_backward(G, B, shape, 2),
    "roi_pool_backward": lambda shape: cuproi.roi_pool_backward(G, B, ARGMAX, shape),
    "ps_roi_align_backward": lambda shape: cuproi.ps_roi_align_backward(PS_G, B, shape, 2),
    "ps_roi_pool_backward": lambda shape: cuproi.ps_roi_pool_backward(PS_G, B, shape, 2),
    "prroi_pool_backward": lambda shape: cuproi.prroi_pool_backward(G, B, shape, 2),
    "roi_align_rotated_backward": lambda shape: cuproi.roi_align_rotated_backward(
        G, _rotated(), shape, 2
    ),
    "multi_scale_roi_align_backward": lambda shape: cuproi.multi_scale_roi_align_backward(
        G, B, [shape], 2, [1.0]
    ),
}
MULTI_SCALE = {
    "multi_scale_roi_align": lambda **kw: cuproi.multi_scale_roi_align(
        LEVELS, B, 2, [1.0, 0.5], **kw
    ),
    "multi_scale_roi_align_backward": lambda **kw: cuproi.multi_scale_roi_align_backward(
        G, B, LEVEL_SHAPES, 2, [1.0, 0.5], **kw
    ),
}


def _raises_early(call, match, error=ValueError):
    """``call()`` raises ``error`` matching ``match`` at once, allocating at most a few MiB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(error, match=match):
            call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the error"
    assert seconds < 2, f"{seconds:.1f} s before the error"


# ---- output_size: bins per side --------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, MAX_SIZE + 1), (MAX_SIZE + 1, 2), 2**31, 10**8, 10**400])
@pytest.mark.parametrize("op", WITH_OUTPUT_SIZE)
def test_output_size_beyond_the_limit(op, size):
    match = rf"output_size must be at most {MAX_SIZE} \(MAX_OUTPUT_SIZE\) along each side; got"
    _raises_early(lambda: WITH_OUTPUT_SIZE[op](size, 1.0), match)


def test_a_huge_int_is_named_by_its_magnitude():
    """10**5000 cannot even be printed (Python's limit of 4300 digits): 2**16609 is named."""
    with pytest.raises(ValueError, match=r"got \(2\*\*16609 \(or more\), 1\)"):
        cuproi.roi_align(X, B, (10**5000, 1))


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "quantization_error"])
def test_output_size_limit_is_exact(op):
    out = WITH_OUTPUT_SIZE[op]((1, MAX_SIZE), 1.0)
    shape = (1,) if op == "quantization_error" else (1, C, 1, MAX_SIZE)
    assert (out[0] if isinstance(out, tuple) else out).shape == shape
    with pytest.raises(ValueError, match=r"output_size must be at most"):
        WITH_OUTPUT_SIZE[op]((1, MAX_SIZE + 1), 1.0)


# ---- results: K * C * PH * PW and input_shape ------------------------------------------------


@pytest.mark.parametrize("op", FORWARD)
def test_output_elements_beyond_the_limit(op):
    """2**13 boxes of 2**20 bins: 2**33 elements (2**36 with 8 channels), 32 GiB or more."""
    pooled = (2**10, 2**10)
    x = X
    if op.startswith("ps_"):  # one output channel: C = PH * PW score maps
        x = np.zeros((1, pooled[0] * pooled[1], 1, 1), np.float32)
    k = 2**13
    channels = 1 if op.startswith("ps_") else C
    match = (
        rf"output_size \(1024, 1024\) with {k} boxes and {channels} channels gives a result of "
        rf"shape \({k}, {channels}, 1024, 1024\), {k * channels * 2**20} elements; at most "
        rf"{MAX_ELEMENTS} \(MAX_OUTPUT_ELEMENTS = 2\*\*32\) are supported"
    )
    _raises_early(lambda: FORWARD[op](x, _boxes(k), pooled), match)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_output_elements_count_the_boxes_of_a_list(op):
    """Per-image box lists count all their boxes."""
    per_image = [np.zeros((2**12, 4), np.float32)] * 2
    x = np.zeros((2, C, 8, 8), np.float32)
    _raises_early(lambda: FORWARD[op](x, per_image, (2**10, 2**10)), r"with 8192 boxes")


@pytest.mark.parametrize("op", FROM_INPUT_SHAPE)
def test_gradient_elements_beyond_the_limit(op):
    shape = (2**12, C, 2**10, 2**10)
    name = "input_shapes\\[0\\]" if op.startswith("multi") else "input_shape"
    match = rf"^{name} gives a result of shape \({2**12}, {C}, 1024, 1024\), {2**35} elements"
    _raises_early(lambda: FROM_INPUT_SHAPE[op](shape), match)


def test_gradient_elements_of_all_levels_together():
    """multi_scale_roi_align_backward's levels share one buffer on the GPU: their sum counts."""
    level = (2, C, 2**14, 2**13)  # 2**31 elements each: 3 of them pass 2**32
    match = r"input_shapes \(all levels together\) gives a result of shape \(6442450944,\)"
    _raises_early(
        lambda: cuproi.multi_scale_roi_align_backward(G, B, [level] * 3, 2, [1, 0.5, 0.25]),
        match,
    )


@pytest.mark.gpu
def test_output_elements_beyond_the_limit_on_the_gpu(host_syncs):
    """Shapes alone: no kernel, no device-to-host copy (CuPy stand-in's log)."""
    x, boxes = CUPY.asarray(X), CUPY.asarray(_boxes(2**13))
    with host_syncs() as log:
        with pytest.raises(ValueError, match=r"MAX_OUTPUT_ELEMENTS"):
            cuproi.roi_align(x, boxes, (2**10, 2**10))
    assert log.transfers == [] and log.launches == []


def test_jax_checks_the_output_when_traced():
    """cuproi.jax raises while jax.jit traces, not in the callback when the computation runs."""
    jax = pytest.importorskip("jax")
    import cuproi.jax

    traced = jax.jit(lambda x, b: cuproi.jax.roi_align(x, b, (2**10, 2**10)))
    with pytest.raises(ValueError, match=r"MAX_OUTPUT_ELEMENTS"):
        traced.lower(np.zeros((1, C, 8, 8), np.float32), np.zeros((2**13, 5), np.float32))


# ---- scales and coordinates ------------------------------------------------------------------

SCALE_CASES = [(op, scale) for op in WITH_OUTPUT_SIZE for scale in (1e300, 2.0 * MAX_COORDINATE)]
SCALE_CASES += [(op, 10**400) for op in WITH_OUTPUT_SIZE if op not in MULTI_SCALE]


@pytest.mark.parametrize(("op", "scale"), SCALE_CASES)
def test_spatial_scale_beyond_the_limit(op, scale):
    """Also on float64 features, in which 1e300 is a positive number: the limit is 2**20.
    multi_scale_roi_align names the scale of its level."""
    if scale == 10**400:
        match = r"spatial_scale must be finite; got 2\*\*1328 \(or more\)"
    elif op in MULTI_SCALE:
        match = rf"spatial_scales\[0\] must be at most {MAX_COORDINATE}"
    else:
        match = rf"spatial_scale must be at most {MAX_COORDINATE} \(one input pixel"
    _raises_early(lambda: WITH_OUTPUT_SIZE[op](2, scale), match)


@pytest.mark.parametrize("gamma", [1e300, -2.0 * MAX_COORDINATE])
@pytest.mark.parametrize("op", ["deform_roi_pool", "backward", "box_backward"])
def test_gamma_beyond_the_limit(op, gamma):
    """1e300 made the offset gradients 0 * inf = NaN (float32 gamma * box size overflows)."""
    x, b = np.zeros((1, 1, 4, 4), np.float32), np.array([[0, 0, 0, 2, 2]], np.float32)
    offset, g = np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32)
    call = {
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, b, offset, 2, 1.0, 2, gamma),
        "backward": lambda: cuproi.deform_roi_pool_backward(g, x, b, offset, 2, 1.0, 2, gamma),
        "box_backward": lambda: cuproi.deform_roi_pool_box_backward(
            g, x, b, offset, 2, 1.0, 2, gamma
        ),
    }[op]
    _raises_early(call, r"gamma must be within \+-1048576")
    assert np.isfinite(cuproi.deform_roi_pool_backward(g, x, b, offset, 2, 1.0, 2, 2**20)[1]).all()


def test_spatial_scale_limit_is_exact():
    """2**20 is accepted (on float64 features, where 1e300 is a positive number too)."""
    x = np.zeros((1, 1, 4, 4))
    b = np.array([[0, 0, 0, 2**-20, 2**-20]])
    assert cuproi.roi_align(x, b, 1, float(MAX_COORDINATE)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"spatial_scale must be at most"):
        cuproi.roi_align(x, b, 1, np.nextafter(MAX_COORDINATE, np.inf))


@pytest.mark.parametrize(
    "boxes",
    [[[0, 1e30, 0, 2e30, 4]], [[0, 0, 0, MAX_COORDINATE + 1, 4]], [[-1e300, 0, 4, 4]]],
)
def test_quantization_error_coordinates_beyond_the_limit(boxes):
    """Garbage before (int64 cells overflowed): now the error of cuproi.roi_pool."""
    match = rf"boxes\[0\] has coordinates .*exceed \+-{MAX_COORDINATE} feature cells"
    _raises_early(lambda: cuproi.quantization_error(np.array(boxes), 1.0, 7), match)


def test_quantization_error_scale_too_small_for_float32():
    """1e-50 is 0 in float32, in which float32 boxes are computed: it raises, as the ops do."""
    with pytest.raises(ValueError, match=r"spatial_scale 1e-50 is not a positive float32"):
        cuproi.quantization_error(B, 1e-50, 7)


def test_quantization_error_temporaries_stay_bounded():
    """Boxes are taken in chunks: 512 boxes of 16384 bins stay far below their 67 MB a
    temporary, with the values of the boxes taken one by one."""
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 500, (512, 2))
    boxes = np.column_stack([corners, corners + rng.uniform(0, 300, (512, 2))])
    tracemalloc.start()
    try:
        err = cuproi.quantization_error(boxes, 1 / 16, (7, MAX_SIZE))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"
    for k in (0, 255, 511):
        one = cuproi.quantization_error(boxes[k], 1 / 16, (7, MAX_SIZE))
        assert all(a[k] == b[0] for a, b in zip(err, one, strict=True))


# ---- multi_scale_roi_align: canonical_level and canonical_scale ------------------------------


LEVEL = rf"canonical_level must be within \+-{MAX_CANONICAL_LEVEL} \(MAX_CANONICAL_LEVEL"
SCALE = r"canonical_scale must be (at most 1048576 pixels \(MAX_CANONICAL_SCALE\)|finite)"


@pytest.mark.parametrize(
    ("argument", "value", "match"),
    # 10**400 as a level sent every box to the finest level; it was meant as the coarsest.
    [("canonical_level", v, LEVEL) for v in (10**400, -(10**400), MAX_CANONICAL_LEVEL + 1, -2000)]
    + [("canonical_scale", v, SCALE) for v in (1e300, 2 * MAX_CANONICAL_SCALE, 10**400)],
)
@pytest.mark.parametrize("op", MULTI_SCALE)
def test_canonical_arguments_beyond_the_limit(op, argument, value, match):
    _raises_early(lambda: MULTI_SCALE[op](**{argument: value}), match)


@pytest.mark.parametrize("sign", [1, -1])
def test_canonical_level_limit_is_exact(sign):
    """Level 64 sends a small box to the coarsest level (of ones), -64 to the finest (zeros);
    65 and -65 raise."""
    levels = [np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 1, 4, 4), np.float32)]

    def pooled(level):
        return cuproi.multi_scale_roi_align(
            levels, B, 2, [1.0, 0.5], canonical_scale=MAX_CANONICAL_SCALE, canonical_level=level
        )

    np.testing.assert_array_equal(pooled(sign * MAX_CANONICAL_LEVEL), 1.0 if sign > 0 else 0.0)
    with pytest.raises(ValueError, match=r"canonical_level must be within"):
        pooled(sign * (MAX_CANONICAL_LEVEL + 1))
