"""The CPU backend keeps its largest temporary from one call to the next (_scratch).

Checked here: a buffer given back is lent to the next take of the same thread, never to two
arrays at once nor to another thread; what take did not lend (the caller's own features, read
in place) is never kept; buffers over the limit are freed; and the ops that take one (RoI
Align, Deformable RoI Pooling and RoI Pool forwards) give it back, return nothing that shares
it, and give the same results call after call.
"""

import gc
import importlib
import threading
import weakref

import numpy as np
import pytest

import cuproi
from cuproi._cpu import _scratch


@pytest.fixture(autouse=True)
def fresh_thread_state(monkeypatch):
    monkeypatch.setattr(_scratch, "_local", threading.local())
    # RoI Align on its chunked path: a forward of few bins gathers its few pixels anew.
    monkeypatch.setattr(importlib.import_module("cuproi._cpu.roi_align"), "FEW_BINS", 0)


def test_a_buffer_given_back_is_lent_again():
    a = _scratch.take((100, 8), np.float32)
    _scratch.give(a)
    b = _scratch.take((50, 3), np.int64)  # smaller, another dtype: the same memory
    assert np.shares_memory(a, b)
    assert b.shape == (50, 3) and b.dtype == np.int64 and b.flags.c_contiguous
    _scratch.give(b)
    c = _scratch.take((1000, 8), np.float32)  # larger: a new buffer, then kept instead
    assert not np.shares_memory(a, c)
    _scratch.give(c)
    assert np.shares_memory(c, _scratch.take((1000, 8), np.float32))


def test_a_lent_buffer_is_not_lent_twice():
    a = _scratch.take((64,), np.float64)
    _scratch.give(a)
    b = _scratch.take((64,), np.float64)
    c = _scratch.take((64,), np.float64)  # b still in use
    assert np.shares_memory(a, b) and not np.shares_memory(b, c)
    _scratch.give(c)
    _scratch.give(b)  # both given back: the larger (here the first given) is kept
    d = _scratch.take((64,), np.float64)
    assert np.shares_memory(d, c) or np.shares_memory(d, b)
    e = _scratch.take((64,), np.float64)
    assert not np.shares_memory(d, e)


def test_only_what_take_lent_is_kept():
    foreign = np.empty(4096, np.uint8)
    _scratch.give(foreign)
    _scratch.give(foreign[:100].view(np.float32))
    assert not np.shares_memory(foreign, _scratch.take((4096,), np.uint8))


def test_buffers_over_the_limit_are_not_kept(monkeypatch):
    monkeypatch.setattr(_scratch, "KEEP", 1000)
    big = _scratch.take((1001,), np.uint8)
    _scratch.give(big)
    assert not np.shares_memory(big, _scratch.take((1001,), np.uint8))
    small = _scratch.take((1000,), np.uint8)
    _scratch.give(small)
    assert np.shares_memory(small, _scratch.take((1000,), np.uint8))


def test_each_thread_keeps_its_own():
    a = _scratch.take((256,), np.float32)
    _scratch.give(a)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_scratch.take((256,), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(a, seen[0])
    assert np.shares_memory(a, _scratch.take((256,), np.float32))


def _calls(x, rois):
    k = len(rois)
    offset = np.random.default_rng(1).uniform(-0.3, 0.3, (k, 2, 3, 3)).astype(x.dtype)
    return {
        "roi_align": lambda: cuproi.roi_align(x, rois, 3, 0.5, 2, True),
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, rois, offset, 3, 0.5, 2),
        "roi_pool": lambda: cuproi.roi_pool(x, rois, 3, 0.5),
        "roi_pool, argmax": lambda: cuproi.roi_pool(x, rois, 3, 0.5, return_argmax=True),
    }


def _boxes(k, seed):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-4, 40, (k, 2))
    size = rng.uniform(2, 30, (k, 2))
    return np.column_stack([rng.integers(0, 2, k), corner, corner + size]).astype(np.float32)


def _tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool", "roi_pool", "roi_pool, argmax"])
@pytest.mark.parametrize("boxes", [40, 2])  # the whole map copied, and a few of its tiles
@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # RoI Pool: keys, or a proxy's
def test_ops_give_their_buffer_back_and_results_do_not_share_it(op, boxes, dtype):
    x = np.random.default_rng(0).standard_normal((2, 8, 24, 40)).astype(dtype)
    rois = _boxes(boxes, 2).astype(dtype)
    outputs = _tuple(_calls(x, rois)[op]())
    kept = getattr(_scratch._local, "kept", None)
    # The op gave its temporary back; but for RoI Pool's values of a few boxes, pooled box by
    # box on copies of their windows, which take none.
    windows = op == "roi_pool" and boxes == 2 and dtype == np.float32
    assert (kept is None) == windows
    assert not any(np.shares_memory(out, kept) for out in outputs if kept is not None)
    expected = [out.copy() for out in outputs]
    # Another call on other inputs reuses the buffer: the first results stay as they were,
    # and the same call gives the same results again.
    other = np.random.default_rng(5).standard_normal(x.shape).astype(dtype)
    _calls(other, _boxes(boxes, 3).astype(dtype))[op]()
    for out, again, want in zip(outputs, _tuple(_calls(x, rois)[op]()), expected, strict=True):
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(again, want)


def test_features_read_in_place_are_not_kept():
    """Channels-last features are read where they are: no copy to give back, none kept."""
    x = np.random.default_rng(0).standard_normal((2, 24, 40, 8)).astype(np.float32)
    x = x.transpose(0, 3, 1, 2)  # (N, C, H, W) stored channels last
    rois = _boxes(40, 2)
    for op in ("roi_align", "roi_pool"):
        _calls(x, rois)[op]()
        kept = getattr(_scratch._local, "kept", None)
        assert kept is None or not np.shares_memory(kept, x)


def test_a_buffer_never_given_back_is_freed():
    """An op that stops halfway (an exception) drops its array: nothing keeps the buffer."""
    a = _scratch.take((1000,), np.float32)
    ref = weakref.ref(a.base if a.base is not None else a)
    del a
    gc.collect()
    assert ref() is None
    b = _scratch.take((10,), np.float32)
    _scratch.give(b)
    assert np.shares_memory(b, _scratch.take((10,), np.float32))
