"""RoI Align's channels-last kernels and the layout kernel they need, run on the host.

Features with many channels take the channels-last kernels (one block per box and tile of 32
channels, the box's taps in shared memory) between two layout transposes. They are checked
against the float64 oracle, and against the NCHW kernels, whose sums they compute in the same
order: the results must be the same bits.
"""

import host
import numpy as np
import pytest
import reference
from test_ops import assert_close, box_zoo, rois_for

from cuproi._cuda import _ops
from cuproi._validate import compute_dtype

pytestmark = pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")

SHAPE = (2, 33, 10, 12)  # 33 channels: a full tile of 32 and a tile of one


@pytest.fixture
def entries(monkeypatch):
    """The entry points the host launches, in order."""
    called = []
    launch = host.launch
    monkeypatch.setattr(
        host, "launch", lambda *a, **k: (called.append(a[1]), launch(*a, **k))[1]
    )
    return called


def nchw(monkeypatch):
    """Make every later call take the NCHW kernels."""
    monkeypatch.setattr(_ops, "CHANNELS_LAST_FROM", 2**31)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 33, 70), (3, 64, 31), (1, 5, 32)])
def test_transpose(dtype, shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = _ops._transpose(np, host.launch, a, *shape[1:])
    np.testing.assert_array_equal(out, a.transpose(0, 2, 1))


def test_transpose_i64(monkeypatch, entries):
    a = np.arange(3 * 40 * 35, dtype=np.float32).reshape(3, 40, 35)
    monkeypatch.setattr(_ops, "LARGE", 0)
    np.testing.assert_array_equal(_ops._transpose(np, host.launch, a, 40, 35), a.swapaxes(1, 2))
    assert entries == ["cuproi_layout_transpose_f32_i64"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_forward_and_backward_match_the_oracle(dtype, aligned, ratio, entries):
    scale = 0.7
    boxes = box_zoo(scale)
    rois = rois_for(boxes, dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(dtype)
    g = rng.standard_normal((len(boxes), SHAPE[1], 3, 4)).astype(dtype)
    coord = compute_dtype(dtype).type
    out = host.bind("roi_align_forward")(x, rois, scale, 3, 4, ratio, aligned)
    grad = host.bind("roi_align_backward")(g, rois, SHAPE, scale, ratio, aligned)
    assert [e.rsplit("_", 1)[0] for e in entries] == [
        "cuproi_layout_transpose",
        "cuproi_roi_align_forward_nhwc",
        "cuproi_roi_align_backward_nhwc",
        "cuproi_layout_transpose",
    ]
    assert out.dtype == dtype and out.shape == (len(boxes), SHAPE[1], 3, 4)
    assert grad.dtype == dtype and grad.shape == SHAPE
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    expected = reference.roi_align(x64, boxes, (3, 4), scale, ratio, aligned, coord_dtype=coord)
    assert_close(out, expected, dtype)
    expected = reference.roi_align_backward(
        g64, boxes, SHAPE, (3, 4), scale, ratio, aligned, coord_dtype=coord
    )
    assert_close(grad, expected, dtype)


def _problem(dtype, channels, seed):
    """Features, boxes and an output gradient with every kind of box: the zoo, boxes whose
    adaptive grid overflows the kernels' shared tables, and rows naming no image."""
    rng = np.random.default_rng(seed)
    n, h, w = 2, 9, 11
    x = rng.standard_normal((n, channels, h, w)).astype(dtype)
    boxes = np.concatenate(
        [
            box_zoo(0.5),
            [[0, -300.0, -200.0, 400.0, 300.0], [1, -5.0, 2.0, 900.0, 7.0]],  # huge grids
            [[2, 1.0, 1.0, 6.0, 6.0], [-1, 1.0, 1.0, 6.0, 6.0]],  # no image: zeros
        ]
    )
    g = rng.standard_normal((len(boxes), channels, 5, 3)).astype(dtype)
    return x, rois_for(boxes, dtype), g


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [32, 33, 70])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_same_bits_as_nchw(dtype, channels, ratio, aligned, monkeypatch):
    x, rois, g = _problem(dtype, channels, seed=channels + ratio)

    def run():
        forward = host.bind("roi_align_forward")
        backward = host.bind("roi_align_backward")
        return [
            forward(x, rois, 0.5, 5, 3, ratio, aligned),
            backward(g, rois, x.shape, 0.5, ratio, aligned),
            backward(g, rois, x.shape, 0.5, ratio, aligned, deterministic=True),
        ]

    channels_last = run()
    nchw(monkeypatch)
    for a, b in zip(channels_last, run(), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert not np.any(channels_last[0][-2:])  # the rows that name no image


def test_i64_entries(monkeypatch, entries):
    x, rois, g = _problem(np.float32, 40, seed=0)
    narrow = host.bind("roi_align_forward")(x, rois, 0.5, 5, 3, 2, True)
    narrow_grad = host.bind("roi_align_backward")(g, rois, x.shape, 0.5, 2, True)
    del entries[:]
    monkeypatch.setattr(_ops, "LARGE", 0)
    wide = host.bind("roi_align_forward")(x, rois, 0.5, 5, 3, 2, True)
    wide_grad = host.bind("roi_align_backward")(g, rois, x.shape, 0.5, 2, True)
    assert "cuproi_roi_align_forward_nhwc_f32_i64" in entries
    assert all(e.endswith("_i64") for e in entries)
    np.testing.assert_array_equal(wide, narrow)
    np.testing.assert_array_equal(wide_grad, narrow_grad)


def test_no_boxes():
    x = np.ones((1, 32, 4, 4), np.float32)
    rois = np.zeros((0, 5), np.float32)
    assert host.bind("roi_align_forward")(x, rois, 1.0, 2, 2, 2, True).shape == (0, 32, 2, 2)
    g = np.zeros((0, 32, 2, 2), np.float32)
    grad = host.bind("roi_align_backward")(g, rois, x.shape, 1.0, 2, True)
    assert grad.shape == x.shape and not grad.any()
