"""Working memory follows the boxes, not the map, nor the samples of a box (CPU backend).

NumPy reports its allocations to tracemalloc (SciPy's sparse matrices are NumPy arrays), so
the peak traced while an op runs is what it allocated. Beyond its output (a backward's: the
input gradient), one small box on a large map allocates what it reads; a box whose operator
outgrows a chunk, or with a huge sampling_ratio, is built or reduced a few pieces at a time,
with the whole box's values (the bits, for the maxima: first maximum in scan order, NaN,
out-of-range zeros); a backward's memory does not grow with its output gradient.

Before the runs of tiles (cuproi._cpu._cells), the ops allocated 1 to 8 times the map: the
features copied whole, channels last (float16: cast to float32, then copied), max mode's input
gradient summed as (N*H*W, C) rows then copied to NCHW. Max mode and the box gradients listed
every sample of a chunk of boxes at once, and a chunk holds at least one box:
``sampling_ratio=512`` on one box took 2.3 GB.
"""

import importlib
import sys
import tracemalloc
import weakref
from pathlib import Path

import host
import numpy as np
import peak_memory
import pytest
from oracles import roi_align as align_oracle
from peak_memory import peak_beyond

import cuproi
from cuproi._cpu import _cells, _ps, _samples, _sampling
from cuproi._cpu.ps_roi_pool import _plan as _ps_pool_plan

# The op modules of the CPU backend (the attribute cuproi._cpu.<op> is the op's function).
roi_align_rotated = importlib.import_module("cuproi._cpu.roi_align_rotated")
deform_cpu = importlib.import_module("cuproi._cpu.deform_roi_pool")
align_cpu = importlib.import_module("cuproi._cpu.roi_align")

SIZE = 2000  # a 2000 x 2000 plane: 8 MB of float16 per channel, 16 MB of float32
BOX = np.array([[0, 900, 1000, 910, 1010]], np.float64)
ROTATED = np.array([[0, 905, 1005, 10, 10, 30]], np.float64)


def _one_box(x, x4, levels):
    """Every public call on BOX (ROTATED) over the map ``x`` (``x4``: a multiple of 4 channels
    for the position-sensitive ops; ``levels``: a pyramid)."""
    g7 = np.ones((1, x.shape[1], 7, 7), x.dtype)
    g2 = np.ones((1, x4.shape[1] // 4, 2, 2), x.dtype)
    offset = np.full((1, 2, 7, 7), 0.1, x.dtype)
    _, argmax = cuproi.roi_pool(x, BOX, 7, return_argmax=True)
    return {
        "roi_align": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True),
        "roi_align max": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True, pool_mode="max"),
        "roi_align_backward": lambda: cuproi.roi_align_backward(g7, BOX, x.shape, 7, 1.0, 2, True),
        "roi_align_backward max": lambda: cuproi.roi_align_backward(
            g7, BOX, x.shape, 7, 1.0, 2, True, pool_mode="max", input=x
        ),
        "roi_align_box_backward": lambda: cuproi.roi_align_box_backward(
            g7, x, BOX, 7, 1.0, 2, True
        ),
        "roi_align_box_backward max": lambda: cuproi.roi_align_box_backward(
            g7, x, BOX, 7, 1.0, 2, True, pool_mode="max"
        ),
        "roi_pool": lambda: cuproi.roi_pool(x, BOX, 7),
        "roi_pool argmax": lambda: cuproi.roi_pool(x, BOX, 7, return_argmax=True),
        "roi_pool_backward": lambda: cuproi.roi_pool_backward(g7, BOX, argmax, x.shape),
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, BOX, offset, 7),
        "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(g7, x, BOX, offset, 7),
        "deform_roi_pool_backward no offset": lambda: cuproi.deform_roi_pool_backward(
            g7, x, BOX, None, 7
        ),
        "deform_roi_pool_box_backward": lambda: cuproi.deform_roi_pool_box_backward(
            g7, x, BOX, offset, 7
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
        "roi_align_rotated": lambda: cuproi.roi_align_rotated(x, ROTATED, 7, 1.0, 2),
        "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
            g7, ROTATED, x.shape, 7, 1.0, 2
        ),
    }


def _large_map(dtype, channels):
    """A (1, C, 2000, 2000) map, zero but for random values around the boxes."""
    x = np.zeros((1, channels, SIZE, SIZE), dtype)  # pages left unwritten stay unallocated
    x[:, :, 980:1030, 880:930] = np.random.default_rng(0).standard_normal((channels, 50, 50))
    return x


@pytest.fixture(
    scope="module",
    params=[(np.float32, 1), (np.float16, 1), (np.float32, 16), (np.float16, 16)],
    ids=["float32-1", "float16-1", "float32-16", "float16-16"],
)
def one_box(request):
    """The calls of ``_one_box`` on a large map (one channel of float32 is channels last
    already, and was read in place before)."""
    x = _large_map(*request.param)
    x4 = x if x.shape[1] % 4 == 0 else _large_map(request.param[0], 4)
    return x.nbytes, _one_box(x, x4, [x, np.ascontiguousarray(x[:, :, ::2, ::2])])


_NAMES = sorted(_one_box(*[np.zeros((1, 4, 8, 8))] * 2, [np.zeros((1, 4, 8, 8))]))


@pytest.mark.parametrize("name", _NAMES)
def test_one_small_box_on_a_large_map(one_box, name):
    plane, calls = one_box
    beyond = peak_beyond(calls[name])
    # What the box reads (a few tiles, a few hundred samples, operators of a few hundred
    # entries) is some kilobytes; 256 KiB (1/32 of the smallest map) leaves room for NumPy's
    # and SciPy's small temporaries. Before: 1 to 8 times the map.
    assert beyond < 2**18, f"{name}: {beyond} bytes beyond its result ({plane} in the map)"


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
    x = np.random.default_rng(1).standard_normal((1, 4, 1500, 1500), np.float32)
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

    narrow then shrinks the sums' buffer in place (a realloc), which NumPy 2.5 reports to
    tracemalloc as a new block beside the old: the peak is read as narrow starts, after which
    the op allocates nothing (test_narrow_rounds_once_in_place: in place).
    """
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 12)  # many chunks
    peaks, narrow = [], _sampling.narrow

    def peak_then_narrow(grad, dtype):
        peaks.append(tracemalloc.get_traced_memory()[1])
        return narrow(grad, dtype)

    monkeypatch.setattr(_sampling, "narrow", peak_then_narrow)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 1024, 1024), np.float32).astype(np.float16)
    corner = rng.uniform(0, 700, (64, 2))
    boxes = np.column_stack([np.zeros(64), corner, corner + rng.uniform(200, 320, (64, 2))])
    rotated = np.column_stack(
        [np.zeros(64), corner + 150, rng.uniform(200, 320, (64, 2)), rng.uniform(-90, 90, 64)]
    )
    call = _backwards_of_many_boxes(x, boxes, rotated)[name]
    beyond = peak_beyond(call)
    if peaks:  # max mode's backward does not call narrow
        beyond = peaks[-1] - x.nbytes
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


@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_backward_lets_its_operators_go_once_transposed(monkeypatch, threads):
    """The input gradient's products run on the transposed operator alone: the operators of
    the chunk (for 4096 boxes at 7x7, 11 MB, as much as their transpose) are not kept."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", threads)
    made, alive = [], []
    in_pieces, spans = align_cpu._in_pieces, _sampling._spans

    def operator(*args):
        a = in_pieces(*args)
        made.append(weakref.ref(a))
        return a

    def spans_seen(*args):  # once A.T is built, before the products
        alive.append(sum(ref() is not None for ref in made))
        return spans(*args)

    monkeypatch.setattr(align_cpu, "_in_pieces", operator)
    monkeypatch.setattr(_sampling, "_spans", spans_seen)
    rng = np.random.default_rng(2)
    corner = rng.uniform(0, 60, (1024, 2))
    boxes = np.column_stack(
        [rng.integers(0, 2, 1024), corner, corner + rng.uniform(2, 40, (1024, 2))]
    )
    g = np.ones((1024, 64, 7, 7), np.float32)
    cuproi.roi_align_backward(g, boxes.astype(np.float32), (2, 64, 80, 80), 7, 1.0, 2)
    assert made and alive and not any(alive)


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


@pytest.mark.skipif(host.ASAN_LOADED, reason="ASan's realloc always moves the buffer")
def test_narrow_rounds_once_in_place():
    """_sampling.narrow: the float32 sums rounded to float16 as astype does, NCHW and channels
    last, an odd number of elements, more elements than one step."""
    rng = np.random.default_rng(4)
    for shape, channels_last in [((2, 3, 5, 7), False), ((1, 3, 301, 299), True)]:
        grad = _sampling.zeros(shape, np.float32, channels_last)
        grad[...] = rng.standard_normal(shape) * 1000
        expected = grad.astype(np.float16)
        start = grad.ctypes.data  # the buffer's start, NCHW or channels last
        out = _sampling.narrow(grad, np.float16)
        assert out.ctypes.data == start  # rounded in place, the buffer shrunk where it was
        assert out.dtype == np.float16 and out.shape == shape
        assert out.flags.c_contiguous != channels_last
        np.testing.assert_array_equal(out, expected)
    same = np.ones((1, 1, 2, 2), np.float32)
    assert _sampling.narrow(same, np.float32) is same


# ---- one box, a huge sampling_ratio ----------------------------------------------------------

RATIO = 100  # 7 x 7 bins of 100 x 100 samples: 490000 samples


def _sampled(x, rois, g, size, scale, ratio, offset=None, rotated=None):
    """The CPU backend's calls that list samples: max mode, the box gradients, rotated boxes."""
    return {
        "max": lambda: align_cpu.roi_align(x, rois, size, scale, ratio, True, "max"),
        "max backward": lambda: align_cpu.roi_align_backward(
            g, rois, x.shape, scale, ratio, True, pool_mode="max", input=x
        ),
        "max backward channels last": lambda: align_cpu.roi_align_backward(
            g, rois, x.shape, scale, ratio, True, pool_mode="max", input=x, channels_last=True
        ),
        "max box backward": lambda: align_cpu.roi_align_box_backward(
            g, x, rois, scale, ratio, True, pool_mode="max"
        ),
        "avg box backward": lambda: align_cpu.roi_align_box_backward(
            g, x, rois, scale, ratio, True
        ),
        "deform box backward": lambda: deform_cpu.deform_roi_pool_box_backward(
            g, x, rois, offset, scale, ratio, 0.1
        ),
        "rotated": lambda: roi_align_rotated.roi_align_rotated(
            x, rotated, size, scale, ratio, True, False
        ),
    }


_MAXIMA = ["max", "max backward", "max backward channels last", "max box backward"]
_SAMPLED = sorted(_sampled(*[None] * 6))


def _huge_ratio_box(name):
    """``_sampled(...)[name]`` on one box of 7 x 7 bins of RATIO x RATIO samples."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 30, 30)).astype(np.float32)
    rois = np.array([[1, 2.5, 3.5, 27.0, 26.0]], np.float32)
    g = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    offset = rng.normal(0, 0.2, (1, 2, 7, 7)).astype(np.float32)
    return _sampled(x, rois, g, (7, 7), 1.0, RATIO, offset)[name]


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("name", sorted(set(_SAMPLED) - {"rotated"}))
def test_huge_sampling_ratio_is_reduced_in_pieces(monkeypatch, name):
    """A budget of 2**18 entries: pieces of ~13000 samples, a few MB; the whole box's bits.

    Before, the box's 490000 samples were listed at once whatever the budget (70-110 MB).
    """
    call = _huge_ratio_box(name)
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 30)  # the box in one chunk
    whole = call()
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 18)
    pieces, peak = peak_memory.peak(call)
    # A piece's samples times (channels + 16) are within the budget; a few words each, for the
    # pieces of both threads, stay under 32 bytes per budget entry (8 MB).
    assert peak - pieces.nbytes < 32 * _sampling.BUDGET, f"{name}: peak {peak}"
    np.testing.assert_array_equal(_bits(pieces), _bits(whole))


def _tricky(channels=3):
    """Features whose maxima test the running winners across pieces.

    Channel 0: every value equal (the first sample in scan order wins); channel 1: negative
    but for a NaN late in the box (the first NaN wins); channel 2: negative, with the box
    reaching off the map (an out-of-range sample wins as 0, no gradient).
    """
    rng = np.random.default_rng(2)
    x = np.empty((1, channels, 20, 24), np.float32)
    x[0, 0] = 0.5
    x[0, 1] = -1 - rng.uniform(size=(20, 24))
    x[0, 1, 15, 17] = np.nan
    x[0, 1, 16, 17] = np.nan
    x[0, 2] = -1 - rng.uniform(size=(20, 24))
    return x


@pytest.mark.parametrize("box", [[0, 2.0, 1.5, 22.0, 19.0], [0, -6.0, -4.0, 21.0, 30.0]])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pieces_keep_ties_nan_and_zeros(monkeypatch, box, dtype):
    """Pieces of ~100 samples cut through every bin: the whole box's bits, and the oracle."""
    x = _tricky().astype(dtype)
    rois = np.array([box], np.float32)
    g = np.random.default_rng(3).standard_normal((1, 3, 2, 3)).astype(dtype)

    def run():
        calls = _sampled(x, rois, g, (2, 3), 1.0, 40)
        return [calls[name]() for name in _MAXIMA]

    monkeypatch.setattr(_sampling, "BUDGET", 1 << 30)
    whole = run()
    monkeypatch.setattr(_sampling, "BUDGET", 2000)
    spans = []
    samples = _samples.samples
    monkeypatch.setattr(
        _samples, "samples", lambda *a, span=None: (spans.append(span), samples(*a, span=span))[1]
    )
    pieces = run()
    assert sum(span is not None for span in spans) > 4 * 50  # about 90 pieces a call
    for a, b in zip(pieces, whole, strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    out, grad = pieces[0], pieces[1]
    x64 = x.astype(np.float64)
    want = align_oracle.roi_align_max(x64, rois, (2, 3), 1.0, 40, True)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    assert np.isnan(out[0, 1]).any()  # a NaN won a bin
    assert (out[0, 2] == 0).any() == (box[1] < 0)  # an out-of-range zero won a bin
    want = align_oracle.roi_align_max_backward(g, x64, rois, (2, 3), 1.0, 40, True)
    np.testing.assert_allclose(grad, want, rtol=tol, atol=tol)


def _interpolation(positions, size):
    """(S, size) matrix of the bilinear weights of ``positions`` (inside, off the last cell)."""
    low = np.floor(positions).astype(np.int64)
    frac = positions - low
    m = np.zeros((len(positions), size))
    m[np.arange(len(positions)), low] = 1 - frac
    m[np.arange(len(positions)), low + 1] = frac
    return m


@pytest.mark.parametrize("budget", [1 << 30, 300])
def test_zero_ties_keep_the_first_sample_sign_as_the_kernels(monkeypatch, budget):
    """A bin whose samples are all zeros, -0.0 first: the winner's -0.0, as bin_max gives.

    (np.maximum kept the sign of a later zero.) In one chunk and in pieces of ~15 samples.
    """
    if host.COMPILER is None:
        pytest.skip("no C++ compiler")
    x = np.random.default_rng(6).standard_normal((1, 2, 12, 14)).astype(np.float32)
    x[0, 0, :, :7] = -0.0
    x[0, 0, :, 7:] = 0.0
    rois = np.array([[0, 1.0, 1.0, 13.0, 11.0], [0, -3.0, -2.0, 9.0, 9.0]], np.float32)
    want = host.bind("roi_align")(x, rois, (2, 2), 1.0, 4, True, "max")
    monkeypatch.setattr(_sampling, "BUDGET", budget)
    out = align_cpu.roi_align(x, rois, (2, 2), 1.0, 4, True, "max")
    assert np.signbit(out[0, 0, :, 0]).all() and not np.signbit(out[0, 0, :, 1]).any()
    np.testing.assert_array_equal(_bits(out), _bits(want))


@pytest.mark.slow
def test_sampling_ratio_512_on_one_box():
    """12.8 million samples (2.3 GB and 18 s before): under 100 MB at the default budget.

    Against the maxima of the samples in float64, bin by bin (the box lies inside the map:
    every sample is a separable bilinear interpolation).
    """
    x = np.random.default_rng(4).standard_normal((1, 4, 64, 64)).astype(np.float32)
    rois = np.array([[0, 4.0, 4.0, 60.0, 60.0]], np.float32)
    out, peak = peak_memory.peak(
        lambda: align_cpu.roi_align(x, rois, (7, 7), 1.0, 512, True, "max")
    )
    assert peak < 100 * 2**20
    offsets = (np.arange(512) + 0.5) * 8 / 512
    want = np.empty(out.shape)
    for p in range(7):
        ay = _interpolation(3.5 + 8 * p + offsets, 64)
        for q in range(7):
            ax = _interpolation(3.5 + 8 * q + offsets, 64)
            want[0, :, p, q] = (ay @ x[0].astype(np.float64) @ ax.T).max(axis=(1, 2))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


# ---- the tiles that rotated boxes read ---------------------------------------------------------


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotated_reach_holds_every_pixel_the_operator_reads(aligned, dtype):
    rng = np.random.default_rng(int(aligned))
    n, h, w, k = 2, 23, 31, 60
    center = rng.uniform(-10, [w + 10, h + 10], (k, 2)) / 0.5
    size = rng.uniform(-3, 25, (k, 2)) / 0.5
    rois = np.column_stack([rng.integers(0, n, k), center, size, rng.uniform(-400, 400, k)])
    rois[::7, 1:3] *= 1e5  # far past the map, where float32 rounds by whole cells
    rois[5, 3] = np.nan
    rois = rois.astype(dtype)
    with np.errstate(invalid="ignore"):  # the NaN box (the public functions ignore it too)
        plan = roi_align_rotated._plan(rois, (n, h, w), 0.5, 3, 4, 0, aligned, False)
        a = roi_align_rotated._operator(plan, 0, k).tocoo()
        cells = roi_align_rotated._reach(plan)
    assert a.nnz > 0
    box = a.row // 12
    image, y, x = np.unravel_index(a.col, (n, h, w))
    assert (image == cells.image[box]).all()
    assert ((cells.y0[box] <= y) & (y < cells.y1[box])).all()
    assert ((cells.x0[box] <= x) & (x < cells.x1[box])).all()


@pytest.mark.parametrize("name", sorted(set(_SAMPLED) - {"deform box backward"}))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_on_the_tiles_read_as_on_the_whole_map(monkeypatch, name, dtype):
    """A few boxes on a large map read a few runs of tiles, and give the whole map's bits."""
    rng = np.random.default_rng(5)
    n, c, h, w = 2, 3, 80, 120
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    corner = rng.uniform(0, [2 * w, 2 * h], (4, 2))
    rois = np.column_stack([[0, 1, 1, 0], corner, corner + rng.uniform(2, 30, (4, 2))])
    rotated = np.column_stack(
        [
            rois[:, 0],
            (rois[:, 1:3] + rois[:, 3:5]) / 2,
            rois[:, 3:5] - rois[:, 1:3],
            [0, 30, -75, 200],
        ]
    )
    rois, rotated = rois.astype(np.float32), rotated.astype(np.float32)
    g = rng.standard_normal((4, c, 3, 4)).astype(dtype)
    call = _sampled(x, rois, g, (3, 4), 0.5, 2, rotated=rotated)[name]
    reached = []
    runs = _cells.runs
    monkeypatch.setattr(_cells, "runs", lambda *a: (reached.append(runs(*a)), reached[-1])[1])
    monkeypatch.setattr(_cells, "_RUN_COST", 0)  # the runs of this small map, however many
    tiles = call()
    assert reached[-1] is not None and reached[-1].size < 0.5 * n * h * w
    monkeypatch.setattr(_cells, "_WHOLE", -1.0)  # the whole map, always
    whole = call()
    assert reached[-1] is None
    assert tiles.dtype == whole.dtype
    np.testing.assert_array_equal(_bits(tiles), _bits(whole))


def test_memory_benchmark_runs():
    """asv_bench's memory_samples benchmark, with a small sampling_ratio."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
    from benchmarks import memory_samples

    bench = memory_samples.OneBoxHugeSamplingRatio()
    for op in memory_samples.OPS:
        bench.setup(4, op)
        bench.peakmem_one_box(4, op)
        bench.time_one_box(4, op)
