"""Every kernel launched as on the GPU, with many threads per block and several blocks, on the host.

The other host tests run a launch as one thread of one block, which never exercises what the
threads of a block share: shared-memory tables and staging filled by some threads and read by
others, with barriers in between (the channels-last kernels, the layout transpose). Here the
block simulator of tests/host/shim.h runs the threads one at a time from barrier to barrier, in
ascending, descending and shuffled order, over a grid of at most three blocks (so the grid- and
block-stride loops take several turns). A missing or misplaced barrier makes some thread read
what another has not yet written (or has already overwritten) in one of the orders. Most runs
take 64 threads per block, which exercise the same sharing as the GPU launcher's 256 (every
loop over a block's work strides by the block size) in a quarter of the time (each hand-over
from thread to thread is an OS context switch); one takes 256.

Every output and every deterministic gradient must be the same bits as the one-thread run. The
default gradients add with atomics, whose order the thread order changes: they must agree to
rounding, and (the check that the simulator does reorder them) some must differ in their bits.
"""

import host
import numpy as np
import pyramids
import pytest
from conftest import TOLERANCE, host_backend
from roi_op_tester import box_zoo, rois_for

from cuproi._cuda import _launch

pytestmark = pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")

# (order, seed, threads per block)
ORDERS = [("ascending", 0, 64), ("descending", 0, 64), ("shuffled", 1, 64), ("shuffled", 2, 256)]
SIZE = (9, 8)  # 72 bins: several chunks of the channels-last kernels' staging


def problem(dtype, channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, 9, 11)).astype(dtype)
    rois = rois_for(np.concatenate([box_zoo(0.5), [[-1, 1.0, 1.0, 6.0, 6.0]]]), dtype)
    g = rng.standard_normal((len(rois), channels, *SIZE)).astype(dtype)
    offset = rng.normal(0, 1, (len(rois), 2, *SIZE)).astype(rois.dtype)
    mask = rng.uniform(0, 1, (len(rois), 1, *SIZE)).astype(rois.dtype)
    return x, rois, g, offset, mask


def runs(dtype):
    """Calls of every host kernel, by name; each returns (exact, rounded): the results that must
    be the same bits whatever the order of the threads, and the atomic sums."""
    b = host_backend()
    x, rois, g, offset, mask = problem(dtype, 33)  # >= 32 channels: the channels-last kernels
    small, _, g_small, _, _ = problem(dtype, 3)  # the NCHW kernels
    rng = np.random.default_rng(1)
    centre_size = rng.uniform(0, 5, (len(rois), 4)) + [0, 0, 1, 1]
    angle = rng.uniform(-180, 180, (len(rois), 1))
    rotated = rois_for(np.column_stack([rois[:, :1], centre_size, angle]), dtype)
    ps = rng.standard_normal((2, 2 * SIZE[0] * SIZE[1], 9, 11)).astype(dtype)
    g_ps = rng.standard_normal((len(rois), 2, *SIZE)).astype(dtype)
    levels = pyramids.pyramid(dtype)
    shapes = [a.shape for a in levels]
    level_rois = rois_for(pyramids.boxes_zoo(), dtype)
    scales, thresholds = pyramids.SCALES, pyramids.thresholds(dtype)
    g_levels = rng.standard_normal((len(level_rois), levels[0].shape[1], *SIZE)).astype(dtype)

    def op(forward, backward):
        """(forward's outputs and the deterministic gradients, the default gradients)."""
        return [*forward, backward(deterministic=True)], [backward()]

    def roi_align(x, g, ratio, aligned):
        return op(
            [b.roi_align(x, rois, SIZE, 0.5, ratio, aligned)],
            lambda **d: b.roi_align_backward(g, rois, x.shape, 0.5, ratio, aligned, **d),
        )

    def deform(x, g, ratio, mask, box=False):  # the input, offset and mask gradients, or box
        backward = b.deform_roi_pool_box_backward if box else b.deform_roi_pool_backward
        return op(
            [b.deform_roi_pool(x, rois, offset, SIZE, 0.5, ratio, 0.1, mask)],
            lambda **d: backward(g, x, rois, offset, 0.5, ratio, 0.1, mask, **d),
        )

    def roi_pool():
        out, argmax = b.roi_pool(small, rois, SIZE, 0.5, return_argmax=True)
        return op(
            [out, argmax], lambda **d: b.roi_pool_backward(g_small, rois, argmax, small.shape, **d)
        )

    return {
        "roi_align, channels last": lambda: roi_align(x, g, 2, True),
        "roi_align, channels last, adaptive grid": lambda: roi_align(x, g, 0, False),
        "roi_align, NCHW": lambda: roi_align(small, g_small, 2, True),
        "roi_align, box gradient": lambda: op(
            [], lambda **d: b.roi_align_box_backward(g_small, small, rois, 0.5, 2, True, **d)
        ),
        "deform_roi_pool, channels last": lambda: deform(x, g, 2, mask),
        "deform_roi_pool, NCHW": lambda: deform(small, g_small, 0, None),
        "deform_roi_pool, box gradient": lambda: deform(small, g_small, 2, mask, box=True),
        "roi_pool": roi_pool,
        "roi_align max mode": lambda: op(
            [b.roi_align(small, rois, SIZE, 0.5, 2, True, "max")],
            lambda **d: b.roi_align_backward(
                g_small, rois, small.shape, 0.5, 2, True, pool_mode="max", input=small, **d
            ),
        ),
        "ps_roi_align": lambda: op(
            [b.ps_roi_align(ps, rois, SIZE, 0.5, 2)],
            lambda **d: b.ps_roi_align_backward(g_ps, rois, ps.shape, 0.5, 2, **d),
        ),
        "ps_roi_pool": lambda: op(
            [b.ps_roi_pool(ps, rois, SIZE, 0.5)],
            lambda **d: b.ps_roi_pool_backward(g_ps, rois, ps.shape, 0.5, **d),
        ),
        "prroi_pool": lambda: op(
            [b.prroi_pool(small, rois, SIZE, 0.5)],
            lambda **d: b.prroi_pool_backward(g_small, rois, small.shape, 0.5, **d),
        ),
        "roi_align_rotated": lambda: op(
            [b.roi_align_rotated(small, rotated, SIZE, 0.5, 2, True, False)],
            lambda **d: b.roi_align_rotated_backward(
                g_small, rotated, small.shape, 0.5, 2, True, False, **d
            ),
        ),
        "multi_scale_roi_align": lambda: op(
            [b.multi_scale_roi_align(levels, level_rois, SIZE, scales, 2, True, thresholds)],
            lambda **d: b.multi_scale_roi_align_backward(
                g_levels, level_rois, shapes, scales, 2, True, thresholds, **d
            ),
        ),
    }


def flat(results):
    """Arrays of a result list, tuples (several gradients) unpacked, Nones dropped."""
    out = []
    for r in results:
        out.extend(r if isinstance(r, (tuple, list)) else [r])
    return [np.asarray(a) for a in out if a is not None]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_gives_the_one_thread_results_in_any_thread_order(dtype):
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    serial = {name: run() for name, run in runs(dtype).items()}
    reordered = 0
    # float64 differs in its shared-memory types, not its barriers: the cheaper orders suffice.
    for order, seed, threads in ORDERS[:3] if dtype == np.float64 else ORDERS:
        with host.blocks(threads, order=order, seed=seed):
            simulated = {name: run() for name, run in runs(dtype).items()}
        for name, (exact, rounded) in serial.items():
            got_exact, got_rounded = simulated[name]
            where = f"{name}, {threads} threads, {order} {seed}"
            for a, b in zip(flat(got_exact), flat(exact), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=where)
            for a, b in zip(flat(got_rounded), flat(rounded), strict=True):
                np.testing.assert_allclose(a, b, rtol, atol, err_msg=where)
                reordered += not np.array_equal(a, b)
    assert reordered > 0  # the thread orders did reorder the atomic adds


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(2, 33, 70), (1, 64, 31)])
def test_layout_transpose(dtype, shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    for order, seed, threads in ORDERS:
        with host.blocks(threads, order=order, seed=seed):
            out = _launch.Device(np, host.launch).transpose(a, *shape[1:])
        np.testing.assert_array_equal(out, a.transpose(0, 2, 1))


def test_orders_are_checked():
    with pytest.raises(ValueError, match="order"):
        with host.blocks(order="random"):
            pass
