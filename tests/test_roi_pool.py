"""RoI Pool (Fast R-CNN, torchvision.ops.roi_pool) on every backend against the float64 loop
oracle of tests/oracles/roi_pool.py: the shared checks of roi_op_tester, then what is particular
to a max with its argmax (exact values, C rounding, ties, NaN and -inf, half precision)."""

import importlib

import numpy as np
import pytest
from conftest import On
from oracles import roi_pool as pool_oracle
from roi_op_tester import RoIOpTester, box_zoo, features, rois_for

import cuproi

SIZE = (3, 4)


class TestRoIPool(RoIOpTester):
    size = SIZE
    forward_cases = [
        {"scale": scale, "size": size}
        for scale in (1.0, 0.5, 0.7)
        for size in ((3, 4), (1, 1), (7, 5))
    ]
    backward_cases = [{"scale": 0.5, "size": SIZE}]
    adjoint_cases = backward_cases
    test_validation = None  # nothing of its own: test_validation.py checks every op
    # Chunks serve only a few boxes on a large map (_few: test_cpu_memory.py); the zoo takes none.
    test_cpu_chunks_give_the_same_result = None

    def forward(self, x, boxes, case, **options):
        return cuproi.roi_pool(x, boxes, case["size"], case["scale"], **options)

    def backward(self, g, x, boxes, case, **options):
        _, argmax = self.forward(x, boxes, case, return_argmax=True)
        return cuproi.roi_pool_backward(g, boxes, argmax, x.shape, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        return pool_oracle.roi_pool(x, boxes, case["size"], case["scale"], coord_dtype=coord_dtype)[
            0
        ]

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        _, argmax = pool_oracle.roi_pool(
            x, boxes, case["size"], case["scale"], coord_dtype=coord_dtype
        )
        return pool_oracle.roi_pool_backward(g, boxes, argmax, x.shape)

    def assert_forward(self, out, expected, dtype):
        np.testing.assert_array_equal(out, expected)  # a max selects a value: exact

    def test_argmax_matches_oracle(self, on, dtype, case):
        x = features(dtype)
        boxes = box_zoo(case["scale"])
        rois = on.put(rois_for(boxes, dtype))
        out, argmax = self.forward(on.put(x), rois, case, return_argmax=True)
        _, expected = pool_oracle.roi_pool(
            x.astype(np.float64), boxes, case["size"], case["scale"], coord_dtype=rois.dtype.type
        )
        assert on.get(argmax).dtype == np.int32
        np.testing.assert_array_equal(on.get(argmax), expected)
        np.testing.assert_array_equal(on.get(out), on.get(self.forward(on.put(x), rois, case)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rounds_just_below_a_half_down(on, dtype):
    """C's round(0.5 - ulp) is 0; floor(v + 0.5) gives 1 in float32 (the sum rounds up)."""
    below = np.nextafter(dtype(0.5), dtype(0))
    x = features(dtype)
    rois = np.array([[0, below, 2 + below, 5 - below, 7 + below]], dtype)
    out, argmax = cuproi.roi_pool(on.put(x), on.put(rois), (2, 2), 1.0, return_argmax=True)
    expected, expected_argmax = pool_oracle.roi_pool(x, rois, (2, 2), 1.0, coord_dtype=dtype)
    np.testing.assert_array_equal(on.get(argmax), expected_argmax)
    np.testing.assert_array_equal(on.get(out), expected)


def test_float16(on):
    """float16 features, float32 coordinates: the oracle on the same halves, exactly."""
    x = features(np.float16)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    out, argmax = cuproi.roi_pool(on.put(x), on.put(rois), SIZE, 0.5, return_argmax=True)
    expected, expected_argmax = pool_oracle.roi_pool(
        x.astype(np.float64), boxes, SIZE, 0.5, coord_dtype=np.float32
    )
    assert on.get(out).dtype == np.float16
    np.testing.assert_array_equal(on.get(out).astype(np.float64), expected)
    np.testing.assert_array_equal(on.get(argmax), expected_argmax)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ties_and_non_finite(on, dtype):
    """Ties go to the first cell in scan order; a NaN propagates (argmax: the first NaN); a bin of
    -inf gives -inf with a valid argmax."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 3, (2, 3, 10, 12)).astype(dtype)  # many ties
    x[0, 0, 2:5, 3:6] = np.nan
    x[1, 1, :, :4] = -np.inf
    boxes = box_zoo(1.0)
    rois = on.put(rois_for(boxes, dtype))
    out, argmax = cuproi.roi_pool(on.put(x), rois, SIZE, 1.0, return_argmax=True)
    out, argmax = on.get(out), on.get(argmax)
    expected, expected_argmax = pool_oracle.roi_pool(x.astype(np.float64), boxes, SIZE, 1.0)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(out.astype(np.float64), expected)
    assert np.isnan(out).any() and np.isneginf(out).any()
    values = on.get(cuproi.roi_pool(on.put(x), rois, SIZE, 1.0, return_argmax=False))
    np.testing.assert_array_equal(values.astype(np.float64), expected)


def _first_nan_kept(on, dtype):
    """roi_pool with and without an argmax on ``on``: a NaN maximum is the first NaN itself."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 10, 12)).astype(dtype)
    rois = rois_for(box_zoo(1.0), dtype)
    with np.errstate(invalid="ignore"):  # a signalling NaN cast or compared
        nans = _nan([0x7FC00001, 0xFFC00002, 0x7F800003, 0x7FC00004]).astype(dtype)
        x.reshape(-1)[rng.choice(x.size, 60, replace=False)] = np.resize(nans, 60)
        out, argmax = cuproi.roi_pool(on.put(x), on.put(rois), SIZE, 1.0, return_argmax=True)
        values = on.get(cuproi.roi_pool(on.put(x), on.put(rois), SIZE, 1.0))
        out, argmax = on.get(out), on.get(argmax)
        _, expected_argmax = pool_oracle.roi_pool(x.astype(np.float64), rois, SIZE, 1.0)
    np.testing.assert_array_equal(argmax, expected_argmax)
    nan = np.isnan(out)
    assert nan.sum() > 10 and np.array_equal(nan, np.isnan(values))
    image = rois[:, 0].astype(np.int64)[:, None, None, None]
    channel = np.arange(x.shape[1])[:, None, None]
    first = x.reshape(*x.shape[:2], -1)[image, channel, argmax]
    for result in (out, values):
        np.testing.assert_array_equal(result[nan].view(np.uint8), first[nan].view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("cells", ["gathered", "table"])  # the CPU's few boxes, or the others
def test_a_nan_maximum_is_the_first_nan_itself(monkeypatch, dtype, cells):
    """A bin holding NaNs gives the first of them in scan order, its bits kept (sign and
    payload), with or without an argmax, whichever path the CPU takes."""
    pool = importlib.import_module("cuproi._cpu.roi_pool")
    monkeypatch.setattr(pool, "_few", lambda *args: cells == "gathered")
    _first_nan_kept(On("cpu"), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # a GPU may convert half NaNs
def test_the_kernels_keep_the_first_nan(kernels_on, dtype):
    """The GPU kernel keeps the first NaN it meets, as the CPU does."""
    _first_nan_kept(kernels_on, dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("zeros", [2, 60])  # boxes over zeros: gathered again, or the keys
def test_values_give_a_zero_maximum_its_first_zeros_sign(monkeypatch, dtype, zeros):
    """Without an argmax, on the table of values, a bin whose maximum is zero among -0.0 and
    +0.0 has its first zero's sign, as with one: the few boxes with a zero maximum gathered
    again, or, where they are many, the keys."""
    pool = importlib.import_module("cuproi._cpu.roi_pool")
    monkeypatch.setattr(pool, "_windowed", lambda *args: False)
    gather, gathered = pool._forward_gather, []
    monkeypatch.setattr(pool, "_forward_gather", lambda *a: gathered.append(a[1]) or gather(*a))
    rng = np.random.default_rng(7)
    x = (np.abs(rng.standard_normal((2, 4, 80, 100))) + 0.5).astype(dtype)
    corner = rng.integers(0, 80, (80, 2))
    rois = np.column_stack([rng.integers(0, 2, 80), corner, corner + rng.integers(3, 10, (80, 2))])
    for i, x0, y0, x1, y1 in rois[:zeros]:  # cells of -0.0, +0.0 and -1 under these boxes
        cells = x[i, :, y0 : y1 + 1, x0 : x1 + 1]
        cells[...] = rng.choice(np.array([-0.0, 0.0, -1.0], dtype), cells.shape)
    past = np.tile([0, 200, 200, 210, 210], (30, 1))  # empty bins: zeros that count for none
    rois = np.vstack([rois, past]).astype(np.float64 if dtype == np.float64 else np.float32)
    out, _ = cuproi.roi_pool(x, rois, (3, 3), 1.0, return_argmax=True)
    assert not gathered  # the table of keys
    values = cuproi.roi_pool(x, rois, (3, 3), 1.0)
    zero = out == 0
    assert np.signbit(out[zero]).any() and not np.signbit(out[zero]).all()
    np.testing.assert_array_equal(values.view(np.uint8), out.view(np.uint8))
    if zeros == 2:
        assert len(gathered) == 1 and 2 <= len(gathered[0]) < 10
    else:
        assert not gathered


@pytest.mark.parametrize("shape, k", [((2, 3, 5, 6), 0), ((2, 0, 5, 6), 3)])
def test_no_boxes_or_no_channels_argmax(on, shape, k):
    x = on.put(np.ones(shape, np.float32))
    rois = on.put(rois_for(box_zoo(1.0)[:k], np.float32))
    out, argmax = cuproi.roi_pool(x, rois, (2, 3), 1.0, return_argmax=True)
    bins = (k, shape[1], 2, 3)
    assert out.shape == argmax.shape == bins and on.get(argmax).dtype == np.int32


def _nan(bits):
    """A float32 NaN of the given bits (a payload, a sign)."""
    return np.array(bits, np.uint32).view(np.float32)


@pytest.mark.parametrize("seed", range(16))
def test_windows_give_the_table_bits(monkeypatch, seed):
    """Box by box on their windows (_forward_windows) or on a table of keys: the same bits.

    Maxima, argmax, the sign of zero and NaN, with and without the argmax: ties (few distinct
    values), -0.0 beside +0.0, -inf, NaN of several payloads and signs (the windows give way to
    the table), boxes past the map (empty bins), bins of many rows, bins sharing cells (more
    bins than cells), float16 and float32, maps stored channels last, one thread or three.
    """
    pool = importlib.import_module("cuproi._cpu.roi_pool")
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float16)[seed % 2]
    n, c, h, w = 2, int(rng.integers(1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
    choices = ([-1.0, 0.0, 1.0], [0.0, -0.0, -1.0, -np.inf], [0.0, -0.0], [2.0, -0.0])[seed % 4]
    x = rng.choice(np.array(choices), (n, c, h, w))
    x = np.where(rng.random(x.shape) < 0.5, x, rng.standard_normal(x.shape) * (seed % 3 == 0))
    x = x.astype(dtype)
    nan = seed % 5 == 4
    if nan:
        payloads = [_nan(0x7FC00001), _nan(0xFFC00002), _nan(0x7F800003)]
        x.reshape(-1)[rng.integers(0, x.size, 3)] = np.array(payloads).astype(dtype)
    if seed % 3 == 0:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    scale = (1.0, 0.5)[seed % 2]
    k = int(rng.integers(1, 9))
    corner = rng.uniform(-0.4, 1.1, (k, 2)) * [w / scale, h / scale]
    side = rng.uniform(0, 1.2, (k, 2)) * [w / scale, h / scale] * (rng.random((k, 1)) < 0.8)
    rois = np.column_stack([rng.integers(0, n, k), corner, corner + side]).astype(np.float32)
    size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    windows = pool._forward_windows
    taken = []
    monkeypatch.setattr(pool, "_few", lambda *args: False)  # not the gather path
    if seed % 2:  # the boxes spread over threads
        monkeypatch.setattr(pool, "_WINDOW_GRAIN", 1)
        monkeypatch.setenv("CUPROI_NUM_THREADS", "3")
    monkeypatch.setattr(pool, "_forward_windows", lambda *a: taken.append(windows(*a)) or taken[-1])
    results = []
    for windowed in (True, False):
        monkeypatch.setattr(pool, "_windowed", lambda bins, table, windowed=windowed: windowed)
        with np.errstate(all="ignore"):  # as cuproi._cpu calls it: NaN in, NaN out
            out, argmax = pool.roi_pool(x, rois, size, scale, return_argmax=True)
            values = pool.roi_pool(x, rois, size, scale)
        results.append([a.view(np.uint8) for a in (out, argmax, values)])
    assert len(taken) == 2 and all((t is None) == nan for t in taken)  # with an argmax or not
    for windowed, table in zip(*results, strict=True):
        np.testing.assert_array_equal(windowed, table)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_added_backward_by_blocks_gives_the_bits_of_one_add_at(monkeypatch, dtype):
    """_backward_added zeroes and adds a few channels of one image at a time: every cell still
    sums its contributions in the order of the boxes and bins, from 0, as one ``np.add.at`` over
    the whole result does, to the bit (cells named by several bins and boxes, gradients of -0.0
    and NaN of several payloads, empty bins, channels that do not fill the last block)."""
    pool = importlib.import_module("cuproi._cpu.roi_pool")
    rng = np.random.default_rng(3)
    n, c, h, w = 2, 7, 9, 11
    monkeypatch.setattr(pool, "_ADDED_BLOCK", 3 * h * w * np.dtype(dtype).itemsize)  # 3 channels
    monkeypatch.setattr(pool, "_ADDED_ENTRIES", np.inf)
    monkeypatch.setattr(pool, "_named", lambda *args: None)
    added, calls = pool._backward_added, []
    monkeypatch.setattr(pool, "_backward_added", lambda *a: calls.append(a) or added(*a))
    x = rng.integers(0, 3, (n, c, h, w)).astype(dtype)  # ties: bins name shared cells
    rois = np.array(
        [[1, 0, 0, 10, 8], [0, 2, 1, 5, 4], [1, 1, 1, 3, 2], [0, 30, 30, 40, 40], [0, 0, 0, 10, 8]],
        dtype,
    )
    _, argmax = pool.roi_pool(x, rois, (4, 5), 1.0, return_argmax=True)
    g = rng.standard_normal(argmax.shape).astype(dtype)
    g.reshape(-1)[rng.integers(0, g.size, 40)] = -0.0
    nan = np.array([0x7FF8000000000001, 0xFFF8000000000002], np.uint64).view(np.float64)
    g.reshape(-1)[rng.integers(0, g.size, 2)] = nan.astype(dtype)
    grad = pool.roi_pool_backward(g, rois, argmax, x.shape)
    assert len(calls) == 1 and (argmax < 0).any()
    expected = np.zeros(x.size, dtype)
    plane = (rois[:, 0].astype(np.int64)[:, None] * c + np.arange(c)) * (h * w)
    hit = argmax >= 0
    np.add.at(expected, (plane[:, :, None, None] + argmax)[hit], g[hit])
    assert np.bincount((plane[:, :, None, None] + argmax)[hit]).max() > 2  # shared cells
    np.testing.assert_array_equal(grad.view(np.uint8), expected.reshape(x.shape).view(np.uint8))
