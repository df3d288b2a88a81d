"""Working memory follows the boxes, not the map (CPU backend).

One small box on a large map: beyond the output (a forward's pooled features, a backward's
input gradient) an op may allocate in proportion to what its box reads, not to the map. NumPy
reports its allocations to tracemalloc, SciPy's sparse matrices are NumPy arrays, so the peak
traced while the op runs is what it allocated. Before the runs of tiles (cuproi._cpu._cells),
these ops allocated 1 to 8 times the map (a backward: up to 7 times its gradient; float16 a
float32 copy of the whole map). Max-mode RoI Align, rotated RoI Align and the box gradients:
test_cpu_memory_samples.py.
"""

import numpy as np
import pytest
from oracles import roi_align as align_oracle
from peak_memory import peak_beyond

import cuproi
from cuproi._cpu import _ps, _sampling
from cuproi._cpu.ps_roi_pool import _plan as _ps_pool_plan

SIZE = 1500  # a 1500 x 1500 plane: 9 MB of float32 per channel
BOX = np.array([[0, 700, 700, 712, 709]], np.float64)
ROTATED = np.array([[0, 706, 704, 12, 9, 30]], np.float64)


def _cases(x, x4, levels):
    g7 = np.ones((1, x.shape[1], 7, 7), x.dtype)
    g2 = np.ones((1, x.shape[1], 2, 2), x.dtype)
    offset = np.full((1, 2, 7, 7), 0.1, x.dtype)
    _, argmax = cuproi.roi_pool(x, BOX, 7, return_argmax=True)
    return {
        "roi_align": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True),
        "roi_align_backward": lambda: cuproi.roi_align_backward(g7, BOX, x.shape, 7, 1.0, 2, True),
        "roi_pool": lambda: cuproi.roi_pool(x, BOX, 7),
        "roi_pool argmax": lambda: cuproi.roi_pool(x, BOX, 7, return_argmax=True),
        "roi_pool_backward": lambda: cuproi.roi_pool_backward(g7, BOX, argmax, x.shape),
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, BOX, offset, 7),
        "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(g7, x, BOX, offset, 7),
        "deform_roi_pool_backward no offset": lambda: cuproi.deform_roi_pool_backward(
            g7, x, BOX, None, 7
        ),
        "prroi_pool": lambda: cuproi.prroi_pool(x, BOX, 7),
        "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g7, BOX, x.shape, 7),
        "prroi_pool_box_backward": lambda: cuproi.prroi_pool_box_backward(g7, x, BOX, 7),
        "ps_roi_align": lambda: cuproi.ps_roi_align(x4, BOX, 2, 1.0, 2),
        "ps_roi_align_backward": lambda: cuproi.ps_roi_align_backward(g2, BOX, x4.shape, 2),
        "ps_roi_pool": lambda: cuproi.ps_roi_pool(x4, BOX, 2),
        "ps_roi_pool_backward": lambda: cuproi.ps_roi_pool_backward(g2, BOX, x4.shape, 2),
        "multi_scale_roi_align": lambda: cuproi.multi_scale_roi_align(
            levels, BOX, 7, [1.0, 0.5], 2
        ),
        "multi_scale_roi_align_backward": lambda: cuproi.multi_scale_roi_align_backward(
            g7, BOX, [a.shape for a in levels], 7, [1.0, 0.5], 2
        ),
        "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
            g7, ROTATED, x.shape, 7, 1.0, 2
        ),
    }


_NAMES = sorted(_cases(np.zeros((1, 1, 8, 8)), np.zeros((1, 4, 8, 8)), [np.zeros((1, 1, 8, 8))]))


@pytest.fixture(scope="module", params=[np.float32, np.float16], ids=["float32", "float16"])
def cases(request):
    rng = np.random.default_rng(0)
    dtype = request.param
    x = rng.standard_normal((1, 1, SIZE, SIZE), np.float32).astype(dtype)
    x4 = rng.standard_normal((1, 4, SIZE, SIZE), np.float32).astype(dtype)
    levels = [x, np.ascontiguousarray(x[:, :, ::2, ::2])]
    return x.nbytes, _cases(x, x4, levels)


@pytest.mark.parametrize("name", _NAMES)
def test_one_small_box_on_a_large_map(cases, name):
    plane, calls = cases
    beyond = peak_beyond(calls[name])
    # What the box reads (a few tiles, operators of a few hundred entries) is some kilobytes;
    # 256 KiB (3 or 6 % of the plane) leaves room for NumPy's and SciPy's small temporaries.
    assert beyond < 2**18, f"{name}: {beyond} bytes beyond its result ({plane} in the plane)"


def _whole_map_box(x):
    """The calls on one box over the whole map ``x`` (adaptive sampling where there is some)."""
    n, c, h, w = x.shape
    box = np.array([[0, 0, 0, w, h]], np.float64)
    g = np.ones((1, c, 7, 7), x.dtype)
    offset = np.linspace(-0.2, 0.2, 98, dtype=x.dtype).reshape(1, 2, 7, 7)
    mask = np.linspace(0.1, 1.0, 49, dtype=x.dtype).reshape(1, 1, 7, 7)
    return {
        "roi_align": lambda: cuproi.roi_align(x, box, 7, 1.0, 0, True),
        "roi_align_backward": lambda: cuproi.roi_align_backward(g, box, x.shape, 7, 1.0, 0, True),
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, box, offset, 7, mask=mask),
        "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(
            g, x, box, offset, 7, mask=mask
        ),
        "deform_roi_pool_backward no offset": lambda: cuproi.deform_roi_pool_backward(
            g, x, box, None, 7
        ),
        "prroi_pool": lambda: cuproi.prroi_pool(x, box, 7),
        "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g, box, x.shape, 7),
        "prroi_pool_box_backward": lambda: cuproi.prroi_pool_box_backward(g, x, box, 7),
    }


_WHOLE_MAP = sorted(_whole_map_box(np.zeros((1, 1, 8, 8))))


@pytest.mark.parametrize("name", _WHOLE_MAP)
def test_one_box_over_the_whole_map_is_built_a_few_bins_at_a_time(monkeypatch, name):
    """A box whose operator outgrows a chunk (adaptive sampling over a whole 1500^2 map).

    It was built whole: two to five times the map, forward and backward. Now its bins are
    boxes of their own, built a few at a time (_sampling.too_large), and a backward numbers
    afresh the pixels each chunk reads: beyond the result, less than the map.
    """
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 18)
    x = np.random.default_rng(1).standard_normal((1, 4, SIZE, SIZE), np.float32)
    beyond = peak_beyond(_whole_map_box(x)[name])
    # A forward copies the map channels last (1x) and builds a chunk of bins.
    assert beyond < 1.25 * x.nbytes, f"{beyond} bytes beyond the result, a map of {x.nbytes}"


@pytest.mark.parametrize("name", _WHOLE_MAP)
def test_a_box_built_a_few_bins_at_a_time_has_its_values(monkeypatch, name):
    """The bins as boxes of their own give what the whole box gives (on a map where the box
    fits a chunk), to float32's rounding: the rows are the same, the sums' order is not."""
    x = np.random.default_rng(2).standard_normal((1, 3, 60, 60), np.float32)
    whole = _whole_map_box(x)[name]()
    monkeypatch.setattr(_sampling, "BUDGET", 200)
    assert _sampling.too_large(np.array([61 * 61]))
    pieces = _whole_map_box(x)[name]()
    for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (pieces, whole)), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_roi_align_over_the_whole_map_a_few_bins_at_a_time_against_the_oracle(monkeypatch):
    """The oracle's values on a box too large for a chunk."""
    small = np.random.default_rng(1).standard_normal((1, 4, 60, 60), np.float32)
    g = np.ones((1, 4, 7, 7), np.float32)
    monkeypatch.setattr(_sampling, "BUDGET", 200)
    box = np.array([[0, 0, 0, 60, 60]], np.float64)
    out = cuproi.roi_align(small, box, 7, 1.0, 0, True)
    expected = align_oracle.roi_align(small, box, (7, 7), 1.0, 0, True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    grad = cuproi.roi_align_backward(g, box, small.shape, 7, 1.0, 0, True)
    expected = align_oracle.roi_align_backward(g, box, small.shape, (7, 7), 1.0, 0, True)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def _backwards_of_many_boxes(x, boxes, rotated):
    """Backward calls whose boxes cover most of the map ``x`` (float16)."""
    shape, c = x.shape, x.shape[1]
    g7 = np.ones((len(boxes), c, 7, 7), x.dtype)
    return {
        "roi_align_backward": lambda: cuproi.roi_align_backward(g7, boxes, shape, 7, 1.0, 2),
        "roi_align_backward max": lambda: cuproi.roi_align_backward(
            g7, boxes, shape, 7, 1.0, 2, pool_mode="max", input=x
        ),
        "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(
            g7, x, boxes, None, 7, sampling_ratio=2
        ),
        "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g7, boxes, shape, 7),
        "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
            g7, rotated, shape, 7, 1.0, 2
        ),
    }


_MANY = sorted(_backwards_of_many_boxes(np.zeros((1, 4, 8, 8)), BOX, ROTATED))


@pytest.mark.parametrize("name", _MANY)
def test_float16_backward_of_several_chunks_costs_one_gradient(monkeypatch, name):
    """float16 gradients are summed in float32; over several chunks of boxes that takes a
    float32 gradient, which was then copied to float16: twice the gradient beyond it. It is
    now rounded in its own memory (_sampling.narrow): the float32 sums, 1x, and small parts.
    """
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 12)  # many chunks
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 1024, 1024), np.float32).astype(np.float16)
    corner = rng.uniform(0, 700, (64, 2))
    boxes = np.column_stack([np.zeros(64), corner, corner + rng.uniform(200, 320, (64, 2))])
    rotated = np.column_stack(
        [np.zeros(64), corner + 150, rng.uniform(200, 320, (64, 2)), rng.uniform(-90, 90, 64)]
    )
    call = _backwards_of_many_boxes(x, boxes, rotated)[name]
    beyond = peak_beyond(call)
    assert beyond < 1.25 * x.nbytes, f"{beyond} bytes beyond a gradient of {x.nbytes}"


@pytest.mark.parametrize("name", _MANY)
def test_backward_memory_does_not_grow_with_the_output_gradient(monkeypatch, name):
    """Beyond the gradient, a backward takes a fixed workspace and its boxes' geometry.

    The products read the output gradient as (K * PH * PW, C) rows, a transposed copy that was
    made whole: as large as the output gradient, larger than the input gradient for a box head
    (26 MB for 7 MB). It is made a chunk of boxes and a group of channels at a time now
    (_sampling.BinRows). Small budgets here make 4x the boxes fill many chunks. (The
    position-sensitive ops copy their rows chunk by chunk: _ps.backward.)
    """
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 15)
    monkeypatch.setattr(_sampling, "ROWS", 1 << 15)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64, 40, 40), np.float32)

    def beyond(k):
        corner = rng.uniform(0, 30, (k, 2))
        size = rng.uniform(2, 10, (k, 2))
        boxes = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
        rotated = np.column_stack([boxes[:, 0], corner + size / 2, size, rng.uniform(-90, 90, k)])
        return peak_beyond(_backwards_of_many_boxes(x, boxes, rotated)[name])

    few, many = beyond(256), beyond(1024)
    more = 768 * 64 * 49 * 4  # 9.6 MB more of output gradient
    assert many - few < more / 2, f"{few} bytes beyond for 256 boxes, {many} for 1024"


@pytest.mark.parametrize(
    ("dtype", "pooled", "threads", "chunks", "fit"),
    [
        (np.float32, 7, 16, 1, True),  # 7 rows of 1/7 of the gradient each
        (np.float32, 2, 2, 1, True),  # 2 rows of 1/2
        (np.float32, 2, 2, 2, False),  # and each chunk's product beside them
        (np.float16, 2, 2, 1, False),  # float32 stacks: 2x the float16 gradient
        (np.float16, 7, 2, 1, True),
        (np.float16, 7, 2, 2, False),  # the float32 sums of several chunks are 1x already
    ],
)
def test_position_sensitive_rows_are_summed_whole_where_they_fit(
    monkeypatch, dtype, pooled, threads, chunks, fit
):
    """A row of bins summed whole, in float32, by every thread took 2 to 9 times a float16
    gradient (rows of 2 x 2 bins over most of the maps): now only where it fits in 1x, else
    the rows are added into the gradient (_ps._stacks_fit), to the same bits."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", str(threads))
    monkeypatch.setattr(_ps, "_threads", lambda plan, channels: threads)
    n = pooled * pooled
    x = np.random.default_rng(6).standard_normal((1, 4 * n, 40, 40)).astype(dtype)
    boxes = np.array([[0, 1, 2, 38, 37], [0, 0, 0, 40, 40], [0, 5, 3, 30, 39]], np.float64)
    g = np.random.default_rng(7).standard_normal((3, 4, pooled, pooled)).astype(dtype)
    plan = _ps_pool_plan(boxes.astype(np.float32), (1, 40, 40), 1.0, pooled, pooled)
    assert _ps._stacks_fit(plan, 4, np.dtype(dtype), chunks > 1) is fit
    grads = []
    for whole in (True, False):
        monkeypatch.setattr(_ps, "_stacks_fit", lambda *args, whole=whole: whole)
        grads.append(cuproi.ps_roi_pool_backward(g, boxes, x.shape, pooled))
    assert grads[0].tobytes() == grads[1].tobytes()


def test_narrow_rounds_once_in_place():
    """_sampling.narrow: the float32 sums rounded to float16 as astype does, NCHW and channels
    last, an odd number of elements, more elements than one step."""
    rng = np.random.default_rng(4)
    for shape, channels_last in [((2, 3, 5, 7), False), ((1, 3, 301, 299), True)]:
        grad = _sampling.zeros(shape, np.float32, channels_last)
        grad[...] = rng.standard_normal(shape) * 1000
        expected = grad.astype(np.float16)
        out = _sampling.narrow(grad, np.float16)
        assert out.dtype == np.float16 and out.shape == shape
        assert out.flags.c_contiguous != channels_last
        np.testing.assert_array_equal(out, expected)
    same = np.ones((1, 1, 2, 2), np.float32)
    assert _sampling.narrow(same, np.float32) is same
