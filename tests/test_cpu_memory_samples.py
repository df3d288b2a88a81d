"""Max-mode RoI Align, rotated RoI Align and the box gradients: memory bounded (CPU backend).

Their working memory grew two ways. With the map: the features were copied whole, channels
last (float16 twice: cast to float32, then copied), and max mode's input gradient was summed as
(N*H*W, C) rows then copied to NCHW. With the samples of one box: max mode and the box
gradients listed every sample of a chunk of boxes at once, and a chunk holds at least one box,
so ``sampling_ratio=512`` on one box took 2.3 GB (1024 ran out of memory) and an adaptive box
over a 4096 x 4096 map 1.8 GB. Checked here, with the peak that tracemalloc sees (NumPy
reports its allocations to it): one small box on a large map allocates what it reads, a box
with a huge sampling_ratio is reduced in pieces of bounded size, and the pieces give the bits
of the whole box at once (first maximum in scan order, NaN, out-of-range zeros, sums in sample
order). The other ops: test_cpu_memory.py.
"""

import importlib

import host
import numpy as np
import peak_memory
import pytest
from oracles import roi_align as align_oracle
from peak_memory import peak_beyond

import cuproi
from cuproi._cpu import _cells, _samples, _sampling

# The op modules of the CPU backend (the attribute cuproi._cpu.<op> is the op's function).
roi_align_rotated = importlib.import_module("cuproi._cpu.roi_align_rotated")
deform_cpu = importlib.import_module("cuproi._cpu.deform_roi_pool")
align_cpu = importlib.import_module("cuproi._cpu.roi_align")

SIZE = 2000  # a 2000 x 2000 plane: 8 MB of float16 per channel, 16 MB of float32
BOX = np.array([[0, 900, 1000, 910, 1010]], np.float64)
ROTATED = np.array([[0, 905, 1005, 10, 10, 30]], np.float64)


def _calls(x):
    g = np.ones((1, x.shape[1], 7, 7), x.dtype)
    offset = np.full((1, 2, 7, 7), 0.1, x.dtype)
    return {
        "max": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True, pool_mode="max"),
        "max backward": lambda: cuproi.roi_align_backward(
            g, BOX, x.shape, 7, 1.0, 2, True, pool_mode="max", input=x
        ),
        "max box backward": lambda: cuproi.roi_align_box_backward(
            g, x, BOX, 7, 1.0, 2, True, pool_mode="max"
        ),
        "avg box backward": lambda: cuproi.roi_align_box_backward(g, x, BOX, 7, 1.0, 2, True),
        "deform box backward": lambda: cuproi.deform_roi_pool_box_backward(g, x, BOX, offset, 7),
        "rotated": lambda: cuproi.roi_align_rotated(x, ROTATED, 7, 1.0, 2),
    }


_NAMES = sorted(_calls(np.zeros((1, 1, 8, 8))))


@pytest.fixture(
    scope="module",
    params=[(np.float16, 1), (np.float32, 16), (np.float16, 16)],
    ids=["float16-1", "float32-16", "float16-16"],
)
def large_map(request):
    """A (1, C, 2000, 2000) map, zero but for random values around the boxes.

    (One channel of float32 is stored channels last already: it was read in place before.)
    """
    dtype, channels = request.param
    x = np.zeros((1, channels, SIZE, SIZE), dtype)  # pages left unwritten stay unallocated
    x[:, :, 980:1030, 880:930] = np.random.default_rng(0).standard_normal((channels, 50, 50))
    return x


@pytest.mark.parametrize("name", _NAMES)
def test_one_small_box_on_a_large_map(large_map, name):
    """Beyond the output (a backward's: the input gradient), what the box reads: kilobytes.

    Before, 1 to 3 times the map (8 to 256 MB here): the whole map copied channels last, in
    float32 for float16 features, and max mode's gradient summed aside then copied.
    """
    beyond = peak_beyond(_calls(large_map)[name])
    # A few tiles of the map, a few hundred samples: 512 KiB is under 1/16 of the smallest map.
    assert beyond < 2**19, f"{name}: {beyond} bytes beyond its result ({large_map.nbytes} map)"


# ---- one box, a huge sampling_ratio ----------------------------------------------------------

RATIO = 100  # 7 x 7 bins of 100 x 100 samples: 490000 samples


def _one_box(dtype=np.float32, channels=4):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, channels, 30, 30)).astype(dtype)
    ct = np.float64 if dtype == np.float64 else np.float32
    rois = np.array([[1, 2.5, 3.5, 27.0, 26.0]], ct)
    g = rng.standard_normal((1, channels, 7, 7)).astype(dtype)
    offset = rng.normal(0, 0.2, (1, 2, 7, 7)).astype(ct)
    return x, rois, g, offset


_ONE_BOX = {
    "max": lambda x, r, g, o, ratio: align_cpu.roi_align(x, r, (7, 7), 1.0, ratio, True, "max"),
    "max backward": lambda x, r, g, o, ratio: align_cpu.roi_align_backward(
        g, r, x.shape, 1.0, ratio, True, pool_mode="max", input=x
    ),
    "max backward channels last": lambda x, r, g, o, ratio: align_cpu.roi_align_backward(
        g, r, x.shape, 1.0, ratio, True, pool_mode="max", input=x, channels_last=True
    ),
    "max box backward": lambda x, r, g, o, ratio: align_cpu.roi_align_box_backward(
        g, x, r, 1.0, ratio, True, pool_mode="max"
    ),
    "avg box backward": lambda x, r, g, o, ratio: align_cpu.roi_align_box_backward(
        g, x, r, 1.0, ratio, True
    ),
    "deform box backward": lambda x, r, g, o, ratio: deform_cpu.deform_roi_pool_box_backward(
        g, x, r, o, 1.0, ratio, 0.1
    ),
}


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("name", sorted(_ONE_BOX))
def test_huge_sampling_ratio_is_reduced_in_pieces(monkeypatch, name):
    """A budget of 2**18 entries: pieces of ~13000 samples, a few MB; the whole box's bits.

    Before, the box's 490000 samples were listed at once whatever the budget (70-110 MB).
    """
    data = _one_box()
    call = _ONE_BOX[name]
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 30)  # the box in one chunk
    whole = call(*data, RATIO)
    monkeypatch.setattr(_sampling, "BUDGET", 1 << 18)
    pieces, peak = peak_memory.peak(lambda: call(*data, RATIO))
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
        return [
            align_cpu.roi_align(x, rois, (2, 3), 1.0, 40, True, "max"),
            align_cpu.roi_align_backward(g, rois, x.shape, 1.0, 40, True, pool_mode="max", input=x),
            align_cpu.roi_align_backward(
                g, rois, x.shape, 1.0, 40, True, pool_mode="max", input=x, channels_last=True
            ),
            align_cpu.roi_align_box_backward(g, x, rois, 1.0, 40, True, pool_mode="max"),
        ]

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


def _family_calls(x, rois, rotated, g):
    return {
        "max": lambda: align_cpu.roi_align(x, rois, (3, 4), 0.5, 2, True, "max"),
        "max backward": lambda: align_cpu.roi_align_backward(
            g, rois, x.shape, 0.5, 2, True, pool_mode="max", input=x
        ),
        "max backward channels last": lambda: align_cpu.roi_align_backward(
            g, rois, x.shape, 0.5, 2, True, pool_mode="max", input=x, channels_last=True
        ),
        "max box backward": lambda: align_cpu.roi_align_box_backward(
            g, x, rois, 0.5, 2, True, pool_mode="max"
        ),
        "avg box backward": lambda: align_cpu.roi_align_box_backward(g, x, rois, 0.5, 2, True),
        "rotated": lambda: roi_align_rotated.roi_align_rotated(
            x, rotated, (3, 4), 0.5, 2, True, False
        ),
    }


@pytest.mark.parametrize("name", sorted(_family_calls(*[None] * 4)))
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
    call = _family_calls(x, rois, rotated, g)[name]
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
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
    from benchmarks import memory_samples

    bench = memory_samples.OneBoxHugeSamplingRatio()
    for op in memory_samples.OPS:
        bench.setup(4, op)
        bench.peakmem_one_box(4, op)
        bench.time_one_box(4, op)
