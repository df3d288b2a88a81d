"""The channels-last kernels of RoI Align and Deformable RoI Pooling, and the layout kernel
they need, run on the host.

Features with many channels take the channels-last kernels (one block per box and tile of 32
channels, the box's taps in shared memory) between layout transposes. They are checked against
the float64 oracles, and against the NCHW kernels, whose sums they compute in the same order:
outputs and input gradients must be the same bits (the offset and mask gradients, summed over
the channels in another grouping, agree to rounding).
"""

import host
import numpy as np
import pytest
from conftest import TOLERANCE
from layouts import assert_stored_channels_last, channels_last, problem
from oracles import deform_roi_pool as deform_oracle
from oracles import roi_align as align_oracle
from roi_op_tester import assert_close, box_zoo, rois_for

from cuproi._cuda import _launch
from cuproi._validate import compute_dtype

pytestmark = pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")

SHAPE = (2, 33, 10, 12)  # 33 channels: a full tile of 32 and a tile of one


@pytest.fixture
def entries(monkeypatch):
    """The entry points the host launches, in order."""
    called = []
    launch = host.launch
    monkeypatch.setattr(host, "launch", lambda *a, **k: (called.append(a[1]), launch(*a, **k))[1])
    return called


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 33, 70), (3, 64, 31), (1, 5, 32), (3, 40, 35)])
@pytest.mark.parametrize("large", [False, True])  # the _i64 entry point
def test_transpose(dtype, shape, large, monkeypatch, entries):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if large:
        monkeypatch.setattr(_launch, "LARGE", 0)
    out = _launch.Device(np, host.launch).transpose(a, *shape[1:])
    np.testing.assert_array_equal(out, a.transpose(0, 2, 1))
    suffix = {np.float16: "f16", np.float32: "f32", np.float64: "f64"}[dtype]
    assert entries == [f"cuproi_layout_transpose_{suffix}" + "_i64" * large]


def _zoo(dtype, seed):
    """(boxes, rois, x, rng): the box zoo at scale 0.7 on features of SHAPE."""
    boxes = box_zoo(0.7)
    rng = np.random.default_rng(seed)
    return boxes, rois_for(boxes, dtype), rng.standard_normal(SHAPE).astype(dtype), rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_forward_and_backward_match_the_oracle(dtype, aligned, ratio, entries):
    boxes, rois, x, rng = _zoo(dtype, seed=1)
    g = rng.standard_normal((len(boxes), SHAPE[1], 3, 4)).astype(dtype)
    coord = compute_dtype(dtype).type
    out = host.bind("roi_align")(x, rois, (3, 4), 0.7, ratio, aligned)
    grad = host.bind("roi_align_backward")(g, rois, SHAPE, 0.7, ratio, aligned)
    assert [e.rsplit("_", 1)[0] for e in entries] == [
        "cuproi_layout_transpose",
        "cuproi_roi_align_forward_nhwc",
        "cuproi_roi_align_backward_nhwc",
        "cuproi_layout_transpose",
    ]
    assert out.dtype == dtype and out.shape == (len(boxes), SHAPE[1], 3, 4)
    assert grad.dtype == dtype and grad.shape == SHAPE
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    expected = align_oracle.roi_align(x64, boxes, (3, 4), 0.7, ratio, aligned, coord_dtype=coord)
    assert_close(out, expected, dtype)
    expected = align_oracle.roi_align_backward(
        g64, boxes, SHAPE, (3, 4), 0.7, ratio, aligned, coord_dtype=coord
    )
    assert_close(grad, expected, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [0, 2])
def test_deform_matches_the_oracle(dtype, ratio, entries):
    boxes, rois, x, rng = _zoo(dtype, seed=2)
    offset = rng.normal(0, 2, (len(boxes), 2, 3, 4)).astype(rois.dtype)
    mask = rng.uniform(0, 1, (len(boxes), 1, 3, 4)).astype(rois.dtype)
    g = rng.standard_normal((len(boxes), SHAPE[1], 3, 4)).astype(dtype)
    coord = compute_dtype(dtype).type
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    out = host.bind("deform_roi_pool")(x, rois, offset, (3, 4), 0.7, ratio, 0.1, mask)
    grad, grad_offset, grad_mask = host.bind("deform_roi_pool_backward")(
        g, x, rois, offset, 0.7, ratio, 0.1, mask
    )
    sfx = {np.float32: "f32", np.float64: "f64"}[dtype]
    assert entries == [
        f"cuproi_layout_transpose_{sfx}",
        f"cuproi_deform_roi_pool_forward_nhwc_{sfx}",
        f"cuproi_layout_transpose_{sfx}",  # the features, for the offset and mask gradients
        f"cuproi_deform_roi_pool_backward_nhwc_{sfx}",
        f"cuproi_layout_transpose_{sfx}",  # the input gradient, back to NCHW
    ]
    expected = deform_oracle.deform_roi_pool_modulated(x64, boxes, offset, mask, (3, 4), 0.7, ratio)
    assert_close(out, expected, dtype)
    # The mask scales the output gradient; the oracle of the unmodulated op takes it so.
    expected_grad, expected_offset = deform_oracle.deform_roi_pool_backward(
        g64 * mask, x64, boxes, offset, (3, 4), 0.7, ratio, 0.1, coord_dtype=coord
    )
    assert_close(grad, expected_grad, dtype)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(grad_offset, expected_offset, rtol=10 * rtol, atol=10 * atol)
    expected_mask = deform_oracle.deform_roi_pool_mask_grad(
        g64, x64, boxes, offset, (3, 4), 0.7, ratio
    )
    np.testing.assert_allclose(grad_mask, expected_mask, rtol=10 * rtol, atol=10 * atol)


def assert_same_as_nchw(monkeypatch, run, dtype, rounded=()):
    """``run()`` gives the same results on the channels-last kernels as on the NCHW kernels:
    the same bits, but for the results at the indices ``rounded`` (the offset and mask
    gradients, summed over the channels in another grouping), equal to rounding. The last
    two rows, which name no image, are zeros."""
    channels_last = run()
    monkeypatch.setattr(_launch, "CHANNELS_LAST_FROM", 2**31)  # every call takes NCHW
    rtol, atol = TOLERANCE[np.dtype(compute_dtype(dtype))]
    for i, (a, b) in enumerate(zip(channels_last, run(), strict=True)):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.dtype == b.dtype and a.shape == b.shape
            if i in rounded:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
            else:
                np.testing.assert_array_equal(a, b)
    assert not np.any(channels_last[0][-2:])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [32, 33, 70])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_same_bits_as_nchw(dtype, channels, ratio, aligned, monkeypatch):
    x, rois, g = problem(dtype, channels, seed=channels + ratio)
    forward, backward = host.bind("roi_align"), host.bind("roi_align_backward")
    assert_same_as_nchw(
        monkeypatch,
        lambda: [
            forward(x, rois, (5, 3), 0.5, ratio, aligned),
            backward(g, rois, x.shape, 0.5, ratio, aligned),
            backward(g, rois, x.shape, 0.5, ratio, aligned, deterministic=True),
        ],
        dtype,
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [33, 70])
@pytest.mark.parametrize("ratio", [0, 2])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_deform_same_bits_as_nchw(dtype, channels, ratio, with_offset, with_mask, monkeypatch):
    x, rois, g = problem(dtype, channels, seed=channels + ratio)
    rng = np.random.default_rng(3)
    offset = rng.normal(0, 1, (len(rois), 2, 5, 3)).astype(rois.dtype) if with_offset else None
    mask = rng.uniform(0, 1, (len(rois), 1, 5, 3)).astype(rois.dtype) if with_mask else None
    forward, backward = host.bind("deform_roi_pool"), host.bind("deform_roi_pool_backward")
    assert_same_as_nchw(
        monkeypatch,
        lambda: [
            forward(x, rois, offset, (5, 3), 0.5, ratio, 0.1, mask),
            *backward(g, x, rois, offset, 0.5, ratio, 0.1, mask),
            *backward(g, x, rois, offset, 0.5, ratio, 0.1, mask, deterministic=True),
        ],
        dtype,
        rounded=(2, 3, 5, 6),  # the offset and mask gradients, where asked for
    )


def test_i64_entries(monkeypatch, entries):
    x, rois, g = problem(np.float32, 40, seed=0)
    offset = np.random.default_rng(4).normal(0, 1, (len(rois), 2, 5, 3)).astype(np.float32)

    def run():
        return [
            host.bind("roi_align")(x, rois, (5, 3), 0.5, 2, True),
            host.bind("roi_align_backward")(g, rois, x.shape, 0.5, 2, True),
            host.bind("deform_roi_pool")(x, rois, offset, (5, 3), 0.5, 2, 0.1),
            *host.bind("deform_roi_pool_backward")(g, x, rois, offset, 0.5, 2, 0.1)[:2],
        ]

    narrow = run()
    del entries[:]
    monkeypatch.setattr(_launch, "LARGE", 0)
    wide = run()
    assert {
        "cuproi_roi_align_forward_nhwc_f32_i64",
        "cuproi_deform_roi_pool_backward_nhwc_f32_i64",
    } <= set(entries)
    assert all(e.endswith("_i64") for e in entries)
    for a, b in zip(narrow, wide, strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_boxes():
    x = np.ones((1, 32, 4, 4), np.float32)
    rois = np.zeros((0, 5), np.float32)
    assert host.bind("roi_align")(x, rois, (2, 2), 1.0, 2, True).shape == (0, 32, 2, 2)
    g = np.zeros((0, 32, 2, 2), np.float32)
    grad = host.bind("roi_align_backward")(g, rois, x.shape, 1.0, 2, True)
    assert grad.shape == x.shape and not grad.any()


# ---- features stored channels last (torch's channels_last memory format) ------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 5, 33])
@pytest.mark.parametrize("deterministic", [False, True])
def test_stored_channels_last_gives_the_same_bits(backend, dtype, channels, deterministic):
    """RoI Align and Deformable RoI Pooling (avg and max mode, input and box gradients), Precise
    RoI Pooling (forward and box gradient), rotated and multi-level RoI Align give the same bits
    on features stored either way (read in place on the CPU; the GPU kernels of the last three
    get an NCHW copy); asked for, the input gradients come back stored channels last (on both
    backends: the `backend` fixture)."""
    x, rois, g = problem(dtype, channels, seed=channels)
    rois, g = rois[:-2], g[:-2]  # every box names an image, as validated calls have it
    rng = np.random.default_rng(5)
    offset = rng.normal(0, 1, (len(rois), 2, 5, 3)).astype(rois.dtype)
    mask = rng.uniform(0, 1, (len(rois), 1, 5, 3)).astype(rois.dtype)
    coarse = np.ascontiguousarray(x[:, :, ::2, ::2])
    centre, size = (rois[:, 1:3] + rois[:, 3:5]) / 2, rois[:, 3:5] - rois[:, 1:3]
    angle = np.linspace(-90, 90, len(rois), dtype=rois.dtype)
    rotated = np.column_stack([rois[:, 0], centre, size, angle]).astype(rois.dtype)
    b, det = backend, {"deterministic": deterministic}

    def run(x, coarse, layout):
        grads = {**det, "channels_last": layout}
        deform_grads = b.deform_roi_pool_backward(g, x, rois, offset, 0.5, 0, 0.1, mask, **grads)
        return {
            "forward": b.roi_align(x, rois, (5, 3), 0.5, 2, True),
            "max forward": b.roi_align(x, rois, (5, 3), 0.5, 0, False, "max"),
            "deform forward": b.deform_roi_pool(x, rois, offset, (5, 3), 0.5, 0, 0.1),
            "backward": b.roi_align_backward(g, rois, x.shape, 0.5, 2, True, **grads),
            "max backward": b.roi_align_backward(
                g, rois, x.shape, 0.5, 0, False, pool_mode="max", input=x, **grads
            ),
            "box backward": b.roi_align_box_backward(g, x, rois, 0.5, 2, True, **det),
            "deform backward": deform_grads[0],
            "deform offset": deform_grads[1],
            "deform mask": deform_grads[2],
            "deform box backward": b.deform_roi_pool_box_backward(
                g, x, rois, offset, 0.5, 0, 0.1, mask, **det
            ),
            "prroi forward": b.prroi_pool(x, rois, (5, 3), 0.5),
            "prroi box backward": b.prroi_pool_box_backward(g, x, rois, 0.5, **det),
            "rotated forward": b.roi_align_rotated(x, rotated, (5, 3), 0.5, 2, True, False),
            "multi-scale forward": b.multi_scale_roi_align(
                [x, coarse], rois, (5, 3), (0.5, 0.25), 2, True, (30.0,)
            ),
        }

    expected = run(x, coarse, False)
    stored = run(channels_last(x), channels_last(coarse), True)
    for name, value in expected.items():
        if "backward" in name and "box" not in name:
            assert_stored_channels_last(stored[name])
            assert stored[name].dtype == value.dtype
        if name in ("deform offset", "deform mask"):  # summed over channels in tiles or not
            rtol, atol = TOLERANCE[np.dtype(compute_dtype(dtype))]
            np.testing.assert_allclose(stored[name], value, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(stored[name], value, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 5, 33])
@pytest.mark.parametrize("argmax", [False, True])
def test_roi_pool_on_stored_channels_last_gives_the_same_bits(backend, dtype, channels, argmax):
    """Ties, zeros of both signs, NaN and -inf included: the same maxima, bit for bit (the sign
    of a zero too), and the same first cells."""
    x, rois, _ = problem(dtype, channels, seed=channels)
    rois = rois[:-2]
    x = np.round(2 * x)  # ties, and -0.0 where a small negative value rounds to zero
    x.reshape(-1)[::37] = np.nan
    x.reshape(-1)[5::41] = -np.inf
    assert np.any((x == 0) & np.signbit(x))
    expected = backend.roi_pool(x, rois, (5, 3), 0.5, return_argmax=argmax)
    stored = backend.roi_pool(channels_last(x), rois, (5, 3), 0.5, return_argmax=argmax)
    bits = f"u{np.dtype(dtype).itemsize}"
    if argmax:
        np.testing.assert_array_equal(stored[1], expected[1])
        expected, stored = expected[0], stored[0]
    np.testing.assert_array_equal(stored.view(bits), expected.view(bits))


@pytest.mark.parametrize("channels", [5, 70])
def test_stored_channels_last_needs_no_transpose(channels, entries):
    x, rois, g = problem(np.float32, channels, seed=1)
    x = channels_last(x)
    offset = np.zeros((len(rois), 2, 5, 3), np.float32)
    host.bind("roi_align")(x, rois, (5, 3), 0.5, 2, True)
    host.bind("roi_align_backward")(g, rois, x.shape, 0.5, 2, True, channels_last=True)
    host.bind("deform_roi_pool")(x, rois, offset, (5, 3), 0.5, 2, 0.1)
    host.bind("deform_roi_pool_backward")(g, x, rois, offset, 0.5, 2, 0.1, channels_last=True)
    assert entries == [
        "cuproi_roi_align_forward_nhwc_f32",
        "cuproi_roi_align_backward_nhwc_f32",
        "cuproi_deform_roi_pool_forward_nhwc_f32",
        "cuproi_deform_roi_pool_backward_nhwc_f32",
    ]


def test_the_cpu_backend_reads_stored_channels_last_features_in_place():
    import importlib

    from cuproi._cpu import _cells

    roi_pool = importlib.import_module("cuproi._cpu.roi_pool")  # the module, not the function

    x = channels_last(np.random.default_rng(0).standard_normal((2, 6, 4, 5)).astype(np.float32))
    rows = _cells.channels_last(x)
    assert rows.shape == (2 * 4 * 5, 6) and np.shares_memory(rows, x)
    np.testing.assert_array_equal(rows, x.transpose(0, 2, 3, 1).reshape(-1, 6))
    copied = _cells.channels_last(x, np.float64)  # another dtype: a copy
    assert not np.shares_memory(copied, x)
    np.testing.assert_array_equal(copied, rows)
    table = roi_pool._table(x, keys=False)[0]  # RoI Pool's table of values
    assert np.shares_memory(table, x)
    np.testing.assert_array_equal(table, x.transpose(0, 2, 3, 1))


def test_public_functions_read_and_return_channels_last(monkeypatch):
    import cuproi
    from cuproi import _cpu

    x, rois, g = problem(np.float32, 6, seed=2)
    rois, g = rois[:-2], g[:-2]
    stored = channels_last(x)
    seen = []  # the features (the first level's) each backend function below receives

    def spy(name):
        fn = getattr(_cpu, name)
        first = (lambda x: x[0]) if name.startswith("multi_scale") else (lambda x: x)
        monkeypatch.setattr(
            _cpu, name, lambda x, *a, **k: (seen.append(first(x)), fn(x, *a, **k))[1]
        )

    for op in ("roi_align", "roi_pool", "prroi_pool", "roi_align_rotated", "multi_scale_roi_align"):
        spy(op)
    rotated = np.column_stack([rois[:, :3], rois[:, 3:5] - rois[:, 1:3], np.full(len(rois), 30)])
    rotated = rotated.astype(np.float32)
    calls = [
        lambda x: cuproi.roi_align(x, rois, (5, 3), 0.5, 2, True),
        lambda x: cuproi.roi_pool(x, rois, (5, 3), 0.5),
        lambda x: cuproi.roi_pool(x, rois, (5, 3), 0.5, True),
        lambda x: cuproi.prroi_pool(x, rois, (5, 3), 0.5),
        lambda x: cuproi.roi_align_rotated(x, rotated, (5, 3), 0.5, 2, True),
        lambda x: cuproi.multi_scale_roi_align([x, x], rois, (5, 3), [0.5, 0.25], 2, True),
    ]
    for call in calls:
        got = call(stored)
        assert np.shares_memory(seen[-1], stored)  # not copied to C order on the way in
        np.testing.assert_equal(got, call(x))

    args = (rois, x.shape, (5, 3), 0.5, 2, True)
    for kwargs in ({}, {"pool_mode": "max", "input": stored}):
        grad = cuproi.roi_align_backward(g, *args, channels_last=True, **kwargs)
        assert_stored_channels_last(grad)
        np.testing.assert_array_equal(grad, cuproi.roi_align_backward(g, *args, **kwargs))
        assert cuproi.roi_align_backward(g, *args, **kwargs).flags.c_contiguous

    offset = np.random.default_rng(0).normal(0, 1, (len(rois), 2, 5, 3)).astype(np.float32)
    deform = (rois, offset, (5, 3), 0.5, 2)
    grads = cuproi.deform_roi_pool_backward(g, stored, *deform, channels_last=True)
    assert_stored_channels_last(grads[0])
    for a, b in zip(grads[:2], cuproi.deform_roi_pool_backward(g, x, *deform)[:2], strict=True):
        np.testing.assert_array_equal(a, b)

    # The ops without channels-last readers copy such features to C order first.
    ps = channels_last(np.random.default_rng(1).standard_normal((2, 18, 9, 11)))
    np.testing.assert_array_equal(
        cuproi.ps_roi_align(ps, rois.astype(np.float64), 3, 0.5, 2),
        cuproi.ps_roi_align(np.ascontiguousarray(ps), rois.astype(np.float64), 3, 0.5, 2),
    )
