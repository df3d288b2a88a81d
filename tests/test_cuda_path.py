"""The CUDA path as a GPU user meets it: every public function on CuPy arrays, its host
synchronisations, its device and stream, CuPy's compile options, and the launch rules.

Runs on a GPU, and in CI on the CuPy stand-in (tests/cupy_standin); the tests that read the
stand-in's log of transfers and launches skip on a real GPU.
"""

import types

import calls
import numpy as np
import pytest
from conftest import CUPY, DEVICES, STANDIN

import cuproi

pytestmark = pytest.mark.gpu
cupy = CUPY


@pytest.mark.parametrize("deterministic", [False, True])
def test_every_function_matches_the_cpu_without_a_host_sync(host_syncs, deterministic):
    """No call reads device memory back (no synchronisation, capturable in a CUDA graph), none
    reads another device's memory, and the results are the NumPy backend's."""
    problem = calls.problem()
    on_device = [cupy.asarray(a) for a in problem]
    with host_syncs() as log:
        results = calls.every_call(*on_device, deterministic)
    assert log.launches and log.transfers == [] and log.cross_device == []
    for got, want in zip(results, calls.every_call(*problem, deterministic), strict=True):
        assert isinstance(got, cupy.ndarray) and got.dtype == want.dtype
        np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-4, atol=1e-5)


def test_bad_rows_give_zeros_without_a_sync(host_syncs):
    """Where the CPU raises (a batch index outside the batch or fractional, non-finite or huge
    coordinates, an argmax off the plane), the GPU gives zeros and no gradient, and raises the
    CPU's errors only with set_eager_checks(True)."""
    x, boxes, rotated, g, *_ = (cupy.asarray(a) for a in calls.problem())  # on the current device
    bad = boxes.copy()
    bad[1, 0], bad[2, 0], bad[3, 1], bad[4, 2] = 7, 0.5, np.nan, 1e30
    rotated[1, 0] = -1
    _, argmax = cuproi.roi_pool(x, boxes, 2, 0.5, return_argmax=True)
    argmax[0] = 10**6
    forwards = [
        lambda b: cuproi.roi_align(x, b, 2, 0.5, 2, True),
        lambda b: cuproi.roi_pool(x, b, 2, 0.5),
    ]
    with host_syncs() as log:
        outs = [f(bad) for f in forwards] + [
            cuproi.roi_align_backward(g, bad, x.shape, 2, 0.5, 2, True),
            cuproi.roi_align_rotated(x, rotated, 2, 0.5, 2),
        ]
        grad = cuproi.roi_pool_backward(g, boxes, argmax, x.shape)
    assert log.transfers == []
    for f, out in zip(forwards, outs, strict=False):
        cupy.testing.assert_array_equal(out[1:5], 0)
        cupy.testing.assert_array_equal(out[5], f(boxes[5:])[0])
    good = [0, 5]
    expected = cuproi.roi_align_backward(g[good], boxes[good], x.shape, 2, 0.5, 2, True)
    cupy.testing.assert_allclose(outs[2], expected, rtol=1e-6, atol=1e-6)
    cupy.testing.assert_array_equal(outs[3][1], 0)
    expected = cuproi.roi_pool_backward(g[1:], boxes[1:], argmax[1:], x.shape)
    cupy.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    before = cuproi.set_eager_checks(True)
    try:
        with pytest.raises(IndexError, match=r"boxes\[1\] has batch index 7"):
            cuproi.roi_align(x, bad, 2, 0.5)
        with pytest.raises(ValueError, match=r"argmax holds values outside"):
            cuproi.roi_pool_backward(g, boxes, argmax, x.shape)
    finally:
        cuproi.set_eager_checks(before)


@pytest.mark.skipif(DEVICES < 2, reason="needs two devices")
def test_inputs_on_another_device_than_the_current_one(host_syncs):
    """Casts, per-image lists, validation, gradients and results all on the inputs' device."""
    x, boxes, rotated, g, offset, mask, x2 = calls.problem(np.float32)
    with cupy.cuda.Device(1):
        problem = (x, boxes.astype(np.float64), rotated, g, offset, mask, x2)
        args = [cupy.asarray(a) for a in problem]
    with cupy.cuda.Device(0), host_syncs() as log:
        results = calls.every_call(*args, True)
    assert log.cross_device == [] and {launch[1] for launch in log.launches} == {1}
    assert all(r.device.id == 1 for r in results)


def test_float32_subnormals_are_flushed_on_the_gpu():
    """CuPy compiles every kernel with -ftz=true (appended after cuproi's options, so it wins):
    float32 arithmetic flushes subnormal inputs and results to zero, float64 keeps them. A map
    of 1e-40 (float32 subnormal) pools to exactly 0 on the GPU, 1e-40 on the CPU."""
    if STANDIN:
        from cupy_standin import _kernels

        if not _kernels.FLUSHES_SUBNORMALS:
            pytest.skip("the stand-in mirrors -ftz=true on x86-64 only")
    boxes = np.array([[0, 0.5, 0.5, 3.5, 3.5]])
    for dtype in (np.float32, np.float64):
        x = np.full((1, 1, 5, 5), 1e-40, dtype)
        b = boxes.astype(dtype)
        cpu = cuproi.roi_align(x, b, 2, sampling_ratio=2, aligned=True)
        gpu = cupy.asnumpy(cuproi.roi_align(cupy.asarray(x), cupy.asarray(b), 2, 1.0, 2, True))
        np.testing.assert_allclose(cpu, 1e-40, rtol=1e-3)
        np.testing.assert_array_equal(gpu, 0 if dtype == np.float32 else cpu)


def test_the_torch_adapter_runs_on_the_tensors_device_and_torch_stream(host_syncs, monkeypatch):
    """cuproi.torch enters the tensor's device before torch's stream (CuPy 14's from_external
    carries no device; CuPy 13's ExternalStream(ptr, index) refuses another device), and the
    kernels run on that stream. CPU torch has no CUDA tensors: a tensor on cuda:1 is faked."""
    torch = pytest.importorskip("torch")
    if DEVICES < 2 or not STANDIN:
        pytest.skip("needs the stand-in's second device")
    from cuproi.torch._common import stream

    class TorchStream:  # what torch.cuda.current_stream gives: a handle and the protocol
        cuda_stream = 0xBEEF0

        def __cuda_stream__(self):
            return (0, self.cuda_stream)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: TorchStream())
    tensor = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    x, boxes = calls.problem()[:2]
    with cupy.cuda.Device(1):
        x, boxes = cupy.asarray(x), cupy.asarray(boxes)
    for protocol in (True, False):  # CuPy 14, then CuPy 13's ExternalStream
        if not protocol:
            monkeypatch.delattr(cupy.cuda.Stream, "from_external")
        with cupy.cuda.Device(0), host_syncs() as log, stream(tensor):
            assert cupy.cuda.Device().id == 1
            cuproi.roi_align(x, boxes, 2, 0.5, 2, True)
        assert {(launch[1], launch[2]) for launch in log.launches} == {(1, 0xBEEF0)}


class ForeignCudaArray:
    """An array of another framework (torch, JAX) on CUDA device ``index``, which hands its
    memory over through DLPack; host memory underneath, for the stand-in."""

    def __init__(self, data, index):
        self.data, self.index, self.streams = data, index, []

    def __dlpack_device__(self):
        return (2, self.index)

    def __dlpack__(self, *, stream=None, **unused):
        self.streams.append(stream)
        return self.data.__dlpack__()


def from_dlpack(array):
    """The foreign framework's import of a result: what cuproi hands results back through."""
    from cupy_standin import _HostCapsule

    capsule = array.__dlpack__(stream=0xF00)  # the stream the framework will read it on
    data = np.from_dlpack(_HostCapsule(capsule)).copy()  # writable, as a framework's tensor is
    return ForeignCudaArray(data, array.__dlpack_device__()[1])


def test_foreign_cuda_arrays_come_in_and_go_back_through_dlpack(host_syncs):
    """A torch or JAX array on cuda:1 is read in place on device 1, on CuPy's current stream
    there, and the result goes back as the caller's type through its own from_dlpack."""
    if DEVICES < 2 or not STANDIN:
        pytest.skip("needs the stand-in's second device")
    x, boxes = calls.problem()[:2]
    fx, fb = ForeignCudaArray(x, 1), ForeignCudaArray(boxes, 1)
    with cupy.cuda.Device(1):
        stream = cupy.cuda.Stream()
    with cupy.cuda.Device(0), host_syncs() as log:
        with cupy.cuda.Device(1), stream:
            out = cuproi.roi_align(fx, fb, 2, 0.5, 2, True)
        backward = cuproi.roi_align_backward(ForeignCudaArray(out.data, 1), fb, x.shape, 2, 0.5)
    assert isinstance(out, ForeignCudaArray) and out.index == 1
    np.testing.assert_allclose(out.data, cuproi.roi_align(x, boxes, 2, 0.5, 2, True), 1e-6, 1e-6)
    assert isinstance(backward, ForeignCudaArray) and backward.index == 1
    assert fx.streams[0] == stream.ptr  # the producer was handed the stream that reads it
    assert [e for e in log.dlpack if e[0] == "export"] == [("export", 1, 0xF00)] * 2
    assert log.transfers == [] and {launch[1] for launch in log.launches} == {1}
