"""The CuPy backend on a real GPU, against the float64 oracles and the NumPy backend.

Skipped without CuPy or a CUDA device; run on a GPU machine with ``python -m pytest -m gpu``.
"""

import numpy as np
import pytest
from layouts import assert_stored_channels_last, channels_last, problem
from pyramids import SCALES, SIZE, boxes_zoo, pyramid
from roi_op_tester import box_zoo, features

import cuproi
from cuproi._cuda import _launch

cupy = pytest.importorskip("cupy")
try:
    DEVICES = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    DEVICES = 0

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICES == 0, reason="no CUDA device")]

from cuproi import _cuda  # noqa: E402  (after the skip: its functions need a device)

DTYPES = [np.float16, np.float32, np.float64]


def test_public_api_returns_cupy_and_rejects_mixed_devices():
    x = cupy.asarray(features(np.float32))
    boxes = box_zoo(1.0)
    out = cuproi.roi_align(x, cupy.asarray(boxes), 3, aligned=True)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
    per_image = [cupy.asarray(boxes[boxes[:, 0] == i, 1:]) for i in range(2)]
    assert isinstance(cuproi.roi_pool(x, per_image, 2), cupy.ndarray)
    with pytest.raises(ValueError, match="device"):
        cuproi.roi_align(x, boxes, 3)  # boxes still on the host
    bad = cupy.asarray([[5.0, 0, 0, 1, 1], [0, 0, 0, 2, 2]])  # image 5 of 2
    out = cuproi.roi_align(x, bad, 3)  # no host synchronisation: the bad row gives zeros
    cupy.testing.assert_array_equal(out[0], 0)
    cupy.testing.assert_array_equal(out[1], cuproi.roi_align(x, bad[1:], 3)[0])
    before = cuproi.set_eager_checks(True)
    try:
        with pytest.raises(IndexError, match="batch index"):
            cuproi.roi_align(x, bad, 3)
    finally:
        cuproi.set_eager_checks(before)


def test_runs_on_the_current_stream():
    x = cupy.asarray(features(np.float32))
    rois = cupy.asarray(box_zoo(1.0))
    expected = cuproi.roi_align(x, rois, 3, sampling_ratio=2)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out = cuproi.roi_align(x, rois, 3, sampling_ratio=2)
    stream.synchronize()
    cupy.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(DEVICES < 2, reason="needs two GPUs")
def test_second_device():
    with cupy.cuda.Device(1):
        x = cupy.asarray(features(np.float32))
        rois = cupy.asarray(box_zoo(1.0))
    out = cuproi.roi_align(x, rois, 3, aligned=True)
    assert out.device.id == 1
    np.testing.assert_allclose(
        out.get(), cuproi.roi_align(x.get(), rois.get(), 3, aligned=True), rtol=1e-5, atol=1e-5
    )


# ---- RoI Align's channels-last kernels -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 70, 45), (70000, 2, 3)])  # the second: > 65535 blocks
def test_layout_transpose(dtype, shape):
    from cuproi._cuda._launch import launch

    a = cupy.asarray(np.random.default_rng(0).standard_normal(shape).astype(dtype))
    out = _launch.Device(cupy, launch).transpose(a, *shape[1:])
    cupy.testing.assert_array_equal(out, a.transpose(0, 2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_kernels_match_nchw(dtype, monkeypatch):
    """The channels-last kernels compute the NCHW kernels' sums in the same order: the same bits
    (but for the order of the default backward's atomic adds)."""
    x, rois, g = (cupy.asarray(a) for a in problem(dtype, 70, seed=0))
    rng = np.random.default_rng(1)
    offset = cupy.asarray(rng.normal(0, 1, (len(rois), 2, 5, 3)).astype(rois.dtype))
    mask = cupy.asarray(rng.uniform(0, 1, (len(rois), 1, 5, 3)).astype(rois.dtype))

    def run():
        deform = _cuda.deform_roi_pool_backward(
            g, x, rois, offset, 0.5, 2, 0.1, mask, deterministic=True
        )
        return [  # first the results that must be the same bits
            _cuda.roi_align(x, rois, (5, 3), 0.5, 2, True),
            _cuda.roi_align(x, rois, (5, 3), 0.5, -1, False),
            _cuda.roi_align_backward(g, rois, x.shape, 0.5, 2, True, deterministic=True),
            _cuda.deform_roi_pool(x, rois, offset, (5, 3), 0.5, 2, 0.1, mask),
            deform[0],
            _cuda.roi_align_backward(g, rois, x.shape, 0.5, 2, True),
            *_cuda.deform_roi_pool_backward(g, x, rois, offset, 0.5, 2, 0.1, mask),
            *deform[1:],
        ]

    channels_last = run()
    monkeypatch.setattr(_launch, "CHANNELS_LAST_FROM", 2**31)
    nchw = run()
    for a, b in zip(channels_last[:5], nchw[:5], strict=True):
        cupy.testing.assert_array_equal(a, b)
    tol = 1e-2 if dtype == np.float16 else 1e-5
    for a, b in zip(channels_last[5:], nchw[5:], strict=True):
        cupy.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [5, 70])
def test_stored_channels_last_features_on_the_device(dtype, channels):
    """Features stored channels last are read in place and give the NCHW results; the
    gradients asked for channels last are stored so."""
    x, rois, g = (cupy.asarray(a) for a in problem(dtype, channels, seed=2))
    rois, g = rois[:-2], g[:-2]
    offset = cupy.asarray(np.random.default_rng(3).normal(0, 1, (len(rois), 2, 5, 3)))
    offset = offset.astype(rois.dtype)
    stored = cupy.asarray(channels_last(cupy.asnumpy(x)))
    assert not stored.flags.c_contiguous
    for f in (
        lambda x: cuproi.roi_align(x, rois, (5, 3), 0.5, 2, True),
        lambda x: cuproi.roi_align(x, rois, (5, 3), 0.5, 2, True, "max"),
        lambda x: cuproi.deform_roi_pool(x, rois, offset, (5, 3), 0.5, 2),
        lambda x: cuproi.roi_pool(x, rois, (5, 3), 0.5),
        lambda x: cuproi.roi_pool(x, rois, (5, 3), 0.5, return_argmax=True)[1],
        lambda x: cuproi.prroi_pool(x, rois, (5, 3), 0.5),
        lambda x: cuproi.multi_scale_roi_align([x, x], rois, (5, 3), [0.5, 0.25], 2, True),
    ):
        cupy.testing.assert_array_equal(f(stored), f(x))
    args = (rois, x.shape, (5, 3), 0.5, 2, True)
    tol = 1e-2 if dtype == np.float16 else 1e-5
    for kwargs in ({"deterministic": True}, {"pool_mode": "max", "input": stored}):
        grad = cuproi.roi_align_backward(g, *args, channels_last=True, **kwargs)
        assert_stored_channels_last(grad)
        expected = cuproi.roi_align_backward(g, *args, **kwargs)
        cupy.testing.assert_allclose(grad, expected, rtol=tol, atol=tol)
    grad, grad_offset, _ = cuproi.deform_roi_pool_backward(
        g, stored, rois, offset, (5, 3), 0.5, 2, deterministic=True, channels_last=True
    )
    assert_stored_channels_last(grad)
    expected = cuproi.deform_roi_pool_backward(
        g, x, rois, offset, (5, 3), 0.5, 2, deterministic=True
    )
    cupy.testing.assert_array_equal(grad, expected[0])
    cupy.testing.assert_allclose(grad_offset, expected[1], rtol=tol, atol=tol)


# ---- multi_scale_roi_align -------------------------------------------------------------------


def test_multi_scale_runs_on_the_current_stream():
    x = [cupy.asarray(a) for a in pyramid(np.float32)]
    boxes = cupy.asarray(boxes_zoo().astype(np.float32))
    out = cuproi.multi_scale_roi_align(x, boxes, SIZE, SCALES, 2, True)
    with cupy.cuda.Stream() as stream:
        stream_out = cuproi.multi_scale_roi_align(x, boxes, SIZE, SCALES, 2, True)
    stream.synchronize()
    cupy.testing.assert_array_equal(stream_out, out)
