"""The CPU backend's threads: results bitwise equal whatever the number of threads.

Every op is run with 1 and with 4 threads (``CUPROI_NUM_THREADS``) on inputs split into many
chunks (a tiny ``_sampling.BUDGET``) and in one chunk that the threads split into ranges, so
chunks, ranges and blocks are all exercised; outputs and gradients must agree bit for bit,
since each element is computed by one task in a fixed order. Inputs this small would take
one thread (``_parallel.workers``), so those tests take every thread whatever the work, and
check that the pool ran; then the choice of the number of threads itself. Also checks RoI
Pool's fast paths (keys, values) against its generic gather formulation on NaN, infinities,
signed zeros and ties, and its backward over several channel slabs against np.add.at.
"""

import importlib

import numpy as np
import pytest
import scipy.sparse

from cuproi import _cpu
from cuproi._cpu import _cells, _geometry, _parallel, _sampling

# The op modules of the CPU backend (the attribute cuproi._cpu.<op> is the op's function).
roi_pool = importlib.import_module("cuproi._cpu.roi_pool")


def _inputs(dtype, k=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 13, 17)).astype(dtype)
    corner = rng.uniform(-20, 130, (k, 2))
    size = rng.uniform(0, 90, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size]).astype(dtype)
    offset = (0.3 * rng.standard_normal((k, 2, 3, 4))).astype(dtype)
    grad = rng.standard_normal((k, 5, 3, 4)).astype(dtype)
    return x, rois, offset, grad


@pytest.fixture
def every_thread(monkeypatch):
    """Every step takes all the threads, whatever its work; yields the pools' sizes used."""
    used = []
    pool = _parallel._pool
    monkeypatch.setattr(_parallel, "workers", lambda work, grain: _parallel.threads())
    monkeypatch.setattr(_parallel, "_pool", lambda n: (used.append(n), pool(n))[1])
    return used


def _run_all(x, rois, offset, grad):
    """Every CPU op and backward of cuproi._cpu on one input, as a flat list of arrays."""
    scale = 1 / 8
    mask = np.linspace(0, 1, rois.shape[0] * 12, dtype=rois.dtype).reshape(-1, 1, 3, 4)
    out = [
        _cpu.roi_align(x, rois, (3, 4), scale, 2, True),
        _cpu.roi_align(x, rois, (3, 4), scale, -1, False),
        _cpu.roi_align_backward(grad, rois, x.shape, scale, 2, True),
        _cpu.roi_align_backward(grad, rois, x.shape, scale, -1, False),
        *_cpu.roi_pool(x, rois, (3, 4), scale, return_argmax=True),
        _cpu.roi_pool(x, rois, (3, 4), scale),
        _cpu.deform_roi_pool(x, rois, offset, (3, 4), scale, 2, 0.1),
        _cpu.deform_roi_pool(x, rois, None, (3, 4), scale, 0, 0.1),
        *_cpu.deform_roi_pool_backward(grad, x, rois, offset, scale, 2, 0.1)[:2],
        _cpu.deform_roi_pool_backward(grad, x, rois, None, scale, 0, 0.1)[0],
        *_cpu.deform_roi_pool_backward(grad, x, rois, offset, scale, 2, 0.1, mask),
        _cpu.deform_roi_pool_backward(grad, x, rois, None, scale, 0, 0.1, mask)[2],
    ]
    _, argmax = _cpu.roi_pool(x, rois, (3, 4), scale, return_argmax=True)
    out.append(_cpu.roi_pool_backward(grad, rois, argmax, x.shape))
    out += [  # max mode, its samples' winners found in ranges of boxes on the threads
        _cpu.roi_align(x, rois, (3, 4), scale, 2, True, "max"),
        _cpu.roi_align_backward(grad, rois, x.shape, scale, 2, True, pool_mode="max", input=x),
        _cpu.roi_align_backward(grad, rois, x.shape, scale, -1, False, pool_mode="max", input=x),
        _cpu.roi_align_box_backward(grad, x, rois, scale, 2, True, pool_mode="max"),
        _cpu.roi_align_box_backward(grad, x, rois, scale, 2, True),
    ]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("budget", [64, None])
def test_bitwise_equal_with_1_and_4_threads(monkeypatch, every_thread, dtype, budget):
    if budget:  # a chunk of a box or two; else one chunk, split into ranges for the threads
        monkeypatch.setattr(_sampling, "BUDGET", budget)
    monkeypatch.setattr(_cells, "BLOCK", 16)  # many layout blocks
    x, rois, offset, grad = _inputs(np.float32 if dtype == np.float16 else dtype)
    args = (x.astype(dtype), rois, offset, grad.astype(dtype))  # float16: float32 boxes
    monkeypatch.setenv("CUPROI_NUM_THREADS", "1")
    one = _run_all(*args)
    assert not every_thread
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    assert _parallel.threads() == 4
    four = _run_all(*args)
    again = _run_all(*args)
    assert max(every_thread) == 4
    for a, b, c in zip(one, four, again, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        np.testing.assert_array_equal(b.view(np.uint8), c.view(np.uint8))


def _run_position_sensitive(x, rois, grad):
    shape = x.shape
    return [
        _cpu.ps_roi_align(x, rois, (3, 4), 1 / 8, 2),
        _cpu.ps_roi_align(x, rois, (3, 4), 1 / 8, -1),
        _cpu.ps_roi_align_backward(grad, rois, shape, 1 / 8, 2),
        _cpu.ps_roi_align_backward(grad, rois, shape, 1 / 8, -1),
        _cpu.ps_roi_pool(x, rois, (3, 4), 1 / 8),
        _cpu.ps_roi_pool_backward(grad, rois, shape, 1 / 8),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_position_sensitive_bitwise_equal_with_1_and_4_threads(monkeypatch, every_thread, dtype):
    _, rois, _, _ = _inputs(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2 * 12, 13, 17)).astype(dtype)  # 2 groups of 3 x 4 maps
    grad = rng.standard_normal((len(rois), 2, 3, 4)).astype(dtype)
    whole = _run_position_sensitive(x, rois, grad)  # one chunk of boxes
    monkeypatch.setattr(_sampling, "BUDGET", 16)  # several chunks of boxes per bin position
    monkeypatch.setenv("CUPROI_NUM_THREADS", "1")
    one = _run_position_sensitive(x, rois, grad)
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    four = _run_position_sensitive(x, rois, grad)
    assert max(every_thread) == 3  # one per bin row
    for a, b, c in zip(one, four, whole, strict=True):
        assert a.dtype == b.dtype == dtype and a.any()
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        # Chunks only regroup the backward's sums.
        np.testing.assert_allclose(b, c, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_roi_pool_float64_values_float32_cannot_tell_apart():
    """float64 with argmax runs the keys of a float32 proxy: where the proxy ties values that
    differ (or rounds them to 0 or inf), the exact maximum and its first cell still win."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 11))
    base = [1.0, 1e-310, 1e300, -1e-310]  # a normal, a subnormal, past float32's range, ...
    for i, value in enumerate(base):
        cells = rng.choice(x[0, 0].size, 5, replace=False)
        # Ties in float32 only, the largest not first in scan order; and an exact tie.
        x[0, i % 3].flat[cells] = value * (1 + np.array([0, 1e-12, 3e-12, 2e-12, 3e-12]))
    rois = np.array([[0, 0, 0, 10, 8], [0, 2, 1, 9, 7], [1, 0, 0, 10, 8]], np.float64)
    bins = _geometry.pool_bins(rois, 1.0, 2, 3, 9, 11)
    out, argmax = roi_pool.roi_pool(x, rois, (2, 3), 1.0, return_argmax=True)
    expected, expected_argmax = roi_pool._forward_gather(x, rois, bins)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(out, expected)
    with np.errstate(over="ignore"):
        _, proxy_argmax = roi_pool._forward_keys(x.astype(np.float32), rois, bins)
    assert (proxy_argmax != expected_argmax).any()  # the proxy alone would have been wrong


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("wide", [False, True, "runs"])
def test_roi_pool_backward_over_channel_slabs(monkeypatch, every_thread, dtype, wide):
    """Several slabs of channels, empty bins, int32 or int64 targets: every cell sums its
    contributions in the order of the boxes and bins, as np.add.at does, to the bit. So does
    the sum over the runs of the cells named (a few boxes on a large map)."""
    if wide is True:
        monkeypatch.setattr(roi_pool, "_INT32_TARGETS", 0)
    named, found = roi_pool._named, []
    if wide == "runs":  # every cell of the map in runs
        monkeypatch.setattr(_cells, "_WHOLE", 1.0)
        monkeypatch.setattr(roi_pool, "_FEW_ENTRIES", np.inf)
        monkeypatch.setattr(_cells, "_RUN_COST", 0)
        monkeypatch.setattr(roi_pool, "_named", lambda *a: (found.append(named(*a)), found[-1])[1])
    else:
        monkeypatch.setattr(roi_pool, "_named", lambda *a: None)
    monkeypatch.setenv("CUPROI_NUM_THREADS", "3")
    assert 19 > 2 * roi_pool._SLAB
    rng = np.random.default_rng(5)
    _, rois, _, _ = _inputs(np.float32)  # some boxes off the map: empty bins
    x = rng.standard_normal((2, 19, 13, 17)).astype(dtype)
    _, argmax = _cpu.roi_pool(x, rois, (3, 4), 1 / 8, return_argmax=True)
    assert (argmax < 0).any() and (argmax >= 0).any()
    g = rng.standard_normal(argmax.shape).astype(dtype)
    grad = _cpu.roi_pool_backward(g, rois, argmax, x.shape)
    n, c, h, w = x.shape
    accumulate = np.promote_types(dtype, np.float32)
    expected = np.zeros(x.size, accumulate)
    plane = (rois[:, 0].astype(np.int64)[:, None] * c + np.arange(c)) * (h * w)
    hit = argmax >= 0
    np.add.at(expected, (plane[:, :, None, None] + argmax)[hit], g[hit].astype(accumulate))
    assert grad.dtype == dtype
    np.testing.assert_array_equal(grad, expected.reshape(x.shape).astype(dtype))
    assert 3 in every_thread
    assert all(runs is not None for runs in found) and len(found) == (wide == "runs")


def test_roi_pool_backward_entries_past_int32(monkeypatch):
    """A slab's entries (boxes x channels x bins) can outnumber int32 before its target cells
    do (about 5.5M boxes of 7x7 bins): both are then int64 (np.arange wraps silently)."""
    rng = np.random.default_rng(6)
    _, rois, _, _ = _inputs(np.float32)
    x = rng.standard_normal((2, 9, 13, 17)).astype(np.float32)
    _, argmax = _cpu.roi_pool(x, rois, (3, 4), 1 / 8, return_argmax=True)
    g = rng.standard_normal(argmax.shape).astype(np.float32)
    expected = _cpu.roi_pool_backward(g, rois, argmax, x.shape)
    targets, entries = 2 * roi_pool._SLAB * (13 * 17 + 1), len(rois) * roi_pool._SLAB * 12
    assert targets < entries  # a bound between them: the targets alone would fit
    monkeypatch.setattr(roi_pool, "_INT32_TARGETS", targets + 1)
    monkeypatch.setattr(roi_pool, "_named", lambda *a: None)  # the slabs
    passed, csc_matrix = [], scipy.sparse.csc_matrix

    def spy(arg, **kwargs):
        passed.append((arg[1].dtype, arg[2].dtype))
        return csc_matrix(arg, **kwargs)

    monkeypatch.setattr(scipy.sparse, "csc_matrix", spy)
    np.testing.assert_array_equal(_cpu.roi_pool_backward(g, rois, argmax, x.shape), expected)
    assert passed and all(dtypes == (np.int64, np.int64) for dtypes in passed)


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("CUPROI_NUM_THREADS", "3")
    assert _parallel.threads() == 3
    monkeypatch.setenv("CUPROI_NUM_THREADS", "lots")
    with pytest.raises(ValueError, match="CUPROI_NUM_THREADS"):
        _parallel.threads()
    monkeypatch.delenv("CUPROI_NUM_THREADS")
    assert _parallel.threads() >= 1


def test_workers_and_ranges(monkeypatch):
    """One thread per grain of work, at least one, at most the setting; ranges for fewer
    threads than there are come one per thread, so that no more than those run them."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    assert [_parallel.workers(w, 10) for w in (0, 9, 10, 29, 30, 10**9)] == [1, 1, 1, 2, 3, 4]
    cost = np.ones(100)
    assert _parallel.ranges(cost, 1) == [(0, 100)]
    assert _parallel.ranges(cost, 2) == [(0, 50), (50, 100)]
    assert len(_parallel.ranges(cost)) == len(_parallel.ranges(cost, 4)) == 8  # spare ranges
    monkeypatch.setenv("CUPROI_NUM_THREADS", "1")
    assert _parallel.ranges(cost) == _parallel.ranges(cost, 4) == [(0, 100)]


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "ps_roi_align"])
def test_small_work_stays_in_the_calling_thread(monkeypatch, op):
    """A call whose work is below the grains makes no use of the pool, whatever the setting;
    the same call with tiny grains does (so the grains, not the sizes, decided)."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    # RoI Align's few bins run in the calling thread whatever the grains: its chunked path.
    monkeypatch.setattr(importlib.import_module("cuproi._cpu.roi_align"), "FEW_BINS", 0)
    x, rois, _, grad = _inputs(np.float32)
    calls = {
        "roi_align": lambda: (
            _cpu.roi_align(x, rois, (3, 4), 1 / 8, 2, True),
            _cpu.roi_align_backward(grad, rois, x.shape, 1 / 8, 2, True),
        ),
        "roi_pool": lambda: (
            _cpu.roi_pool_backward(
                grad, rois, _cpu.roi_pool(x, rois, (3, 4), 1 / 8, return_argmax=True)[1], x.shape
            ),
        ),
        "ps_roi_align": lambda: (
            _cpu.ps_roi_align(np.repeat(x, 12, axis=1), rois, (3, 4), 1 / 8, 2),
        ),
    }
    used = []
    pool = _parallel._pool
    monkeypatch.setattr(_parallel, "_pool", lambda n: (used.append(n), pool(n))[1])
    small = calls[op]()
    assert used == []
    for grain in ("PRODUCT_GRAIN", "COPY_GRAIN"):
        monkeypatch.setattr(_parallel, grain, 1)
    monkeypatch.setattr(roi_pool, "_LOOP_CHANNELS", 1)
    monkeypatch.setattr(roi_pool, "_SLAB_ENTRIES", 1)
    threaded = calls[op]()
    assert used and max(used) > 1
    for a, b in zip(small, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_map_ordered_keeps_order_and_nests(monkeypatch):
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    inner = _parallel.map_ordered(
        lambda i: _parallel.map_ordered(lambda j: i * j, range(3)), range(9)
    )
    assert inner == [[i * j for j in range(3)] for i in range(9)]


def test_map_ordered_runs_in_the_calling_thread_once_the_pool_takes_no_work(monkeypatch):
    """At interpreter exit (a JAX computation still pending), pools refuse new work."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", "4")
    closed = _parallel.ThreadPoolExecutor(2)
    closed.shutdown()
    monkeypatch.setattr(_parallel, "_pool", lambda workers: closed)
    assert _parallel.map_ordered(lambda i: i * i, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_roi_pool_fast_paths_match_generic(dtype):
    """The key-based path (argmax) and the value-only path (no argmax) of RoI Pool give what
    the gather formulation gives, signs of zero included."""
    rng = np.random.default_rng(3)
    for trial in range(60):
        n, c, h, w = 2, 3, int(rng.integers(1, 10)), int(rng.integers(1, 10))
        x = rng.integers(-3, 3, (n, c, h, w)).astype(dtype)  # many ties
        x.flat[rng.integers(0, x.size, 3)] = [np.nan, -np.inf, np.inf]
        if trial % 3 == 1:
            x.flat[rng.integers(0, x.size, 6)] = -0.0
        elif trial % 3 == 2:
            x[x == 0] = -0.0
        corner = rng.uniform(-4, 10, (5, 2))
        rois = np.column_stack(
            [rng.integers(0, n, 5), corner, corner + rng.uniform(-2, 8, (5, 2))]
        ).astype(np.float32)
        scale = float(rng.choice([0.5, 1.0, 2.0]))
        bins = _geometry.pool_bins(rois, scale, 2, 3, h, w)
        expected, expected_argmax = roi_pool._forward_gather(x, rois, bins)
        # Every value is the input's own at the argmax, sign of zero included (NaN aside,
        # whose sign bit means nothing).
        image = rois[:, 0].astype(np.int64)[:, None, None, None]
        channel = np.arange(c)[None, :, None, None]
        at = np.maximum(expected_argmax, 0)
        picked = x[image, channel, at // w, at % w]
        hit = (expected_argmax >= 0) & ~np.isnan(expected)
        # With argmax the keys (float64: its proxy's), without it the values.
        keys, argmax = roi_pool.roi_pool(x, rois, (2, 3), scale, return_argmax=True)
        np.testing.assert_array_equal(argmax, expected_argmax)
        for out in (expected, roi_pool.roi_pool(x, rois, (2, 3), scale), keys):
            assert out.dtype == dtype
            np.testing.assert_array_equal(out, expected)  # NaN where NaN; -0.0 == 0.0
            np.testing.assert_array_equal(np.signbit(out[hit]), np.signbit(picked[hit]))
