"""Where cuproi.jax computes: in jax.experimental.buffer_callback, on XLA's own buffers.

On the CPU cuproi's NumPy backend writes the results into XLA's result buffers: no copy (but
for what is computed in another dtype, float16 in float32). JAX without buffer_callback gets
jax.pure_callback (forced here). On a GPU the callback views XLA's CUDA buffers with CuPy and
runs the kernels on XLA's stream: checked on the CuPy stand-in of tests/cupy_standin with
buffers as XLA hands them, and on a real GPU where JAX has one.
"""

import types

import numpy as np
import pytest
from conftest import CUPY, DEVICES, STANDIN, TOLERANCE
from jax_helpers import (
    CASES,
    assert_cotangent,
    assert_gradients,
    cj,
    gradient_of,
    jax,
    jnp,
    output_gradient,
    to_jax,
)

import cuproi
from cuproi import _results

_callback = pytest.importorskip("cuproi.jax._callback")

pytestmark = pytest.mark.usefixtures("x64")  # float64 ops

# JAX without buffer_callback runs pure_callback, whose host copies test_pure_callback_fallback
# checks.
needs_buffers = pytest.mark.skipif(
    _callback._buffer_callback is None, reason="this JAX has no buffer_callback"
)


@pytest.fixture
def copies(monkeypatch):
    """The results copied into XLA's buffers (rather than written there by the backend), and
    the addresses of the buffers lent to the backend."""
    log = types.SimpleNamespace(copied=[], lent=[])
    copy, lend = _callback.copy, _results.lend

    def recording_copy(target, result):
        log.copied.append(result.shape)
        copy(target, result)

    def recording_lend(arrays):
        log.lent.extend(_callback._address(a) for a in arrays)
        return lend(arrays)

    monkeypatch.setattr(_callback, "copy", recording_copy)
    monkeypatch.setattr(_results, "lend", recording_lend)
    return log


def _gradients(case, dtype, boxes=False):
    """jit(grad) of every array but the boxes (whose (K, 5) gradients are computed in float64
    and copied), with the output beside it: the arrays, the cotangent and the results."""
    arrays = case.arrays(dtype)
    g = output_gradient(case, arrays)
    argnums = tuple(i for i in range(len(arrays)) if boxes or i != 1)
    return arrays, g, jax.jit(gradient_of(case, g, argnums))(*to_jax(arrays))


@needs_buffers
def test_the_ops_are_buffer_callbacks():
    case = CASES["deform_roi_pool"]
    arrays = to_jax(case.arrays(np.float32))
    text = str(jax.make_jaxpr(jax.grad(lambda *a: case.call(cj, *a).sum()))(*arrays))
    assert "buffer_callback" in text and "pure_callback" not in text


# float64 RoI Pool finds its maxima through a float32 proxy, and returns a copy.
IN_PLACE = [
    (n, d) for n in CASES for d in (np.float32, np.float64) if (n, d) != ("roi_pool", np.float64)
]


@needs_buffers
@pytest.mark.parametrize(("name", "dtype"), IN_PLACE)
def test_cpu_results_are_written_into_xlas_buffers(name, dtype, copies):
    """Forward and backward of every op: the backend's results are XLA's buffers."""
    case = CASES[name]
    arrays, g, (grads, out) = _gradients(case, dtype)
    assert copies.copied == []
    assert copies.lent  # the callbacks ran, and lent XLA's buffers
    np.testing.assert_array_equal(np.asarray(out), case.call(cuproi, *arrays))
    expected = [e for i, e in enumerate(case.backward(*arrays, g)) if i != 1]
    for got, want, array in zip(grads, expected, arrays[:1] + arrays[2:], strict=True):
        assert_cotangent(got, want, array)


@needs_buffers
def test_the_result_is_the_buffer_written(copies):
    """The jitted function's output lies where the backend wrote it."""
    case = CASES["roi_align"]
    x, b = to_jax(case.arrays(np.float32))
    out = jax.jit(lambda x, b: case.call(cj, x, b))(x, b)
    assert copies.copied == [] and out.unsafe_buffer_pointer() in copies.lent


@needs_buffers
def test_results_in_another_dtype_are_copied(copies):
    """float16 is computed in float32, and box gradients in float64: those are copied in (the
    check above would see a copy)."""
    case = CASES["roi_align"]
    arrays, g, (grads, out) = _gradients(case, np.float16, boxes=True)
    assert (len(arrays[1]), 5) in copies.copied  # the box gradient
    assert out.shape in copies.copied  # the float16 output
    np.testing.assert_array_equal(np.asarray(out), case.call(cuproi, *arrays))
    for got, want in zip(grads, case.backward(*arrays, g), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_result_in_another_lent_buffer_is_moved_aside():
    """An allocation may take the buffer lent for another result of the same size: each result
    still ends in its own buffer (_callback._write copies such results aside first)."""
    first, second = np.zeros(6), np.zeros(6)
    results = [second.reshape(2, 3) + 1, second.reshape(6)]  # the second result lies in `second`
    second[:] = 7
    _callback._write(np, [first, second], [results[1].copy() * 0 + 7, results[0].ravel()])
    np.testing.assert_array_equal(first, 7)
    np.testing.assert_array_equal(second, 1)
    swapped = [np.arange(4.0), np.arange(4.0) + 10]
    targets = [np.empty(4), np.empty(4)]
    targets[0][:], targets[1][:] = swapped[1], swapped[0]
    _callback._write(np, targets, [targets[1], targets[0]])  # each result in the other's buffer
    np.testing.assert_array_equal(targets[0], swapped[0])
    np.testing.assert_array_equal(targets[1], swapped[1])


def test_lent_arrays_are_taken_once_by_size_and_dtype():
    a, b = np.empty((2, 3)), np.empty(6, np.float32)
    with _results.lend([a, b]):
        taken = _results.zeros(np, (3, 2), np.float64)
        assert np.shares_memory(taken, a) and taken.shape == (3, 2) and not taken.any()
        assert not np.shares_memory(_results.empty(np, (2, 3), np.float64), a)  # taken once
        assert not np.shares_memory(_results.empty(np, (6,), np.float64), b)  # another dtype
        assert np.shares_memory(_results.empty(np, (6,), np.float32), b)
    assert _results.empty(np, (6,), np.float32).base is None  # nothing lent outside the block


@pytest.mark.parametrize(
    "name", ["roi_align", "roi_pool", "deform_roi_pool", "multi_scale_roi_align"]
)
def test_pure_callback_fallback(name, monkeypatch):
    """JAX without buffer_callback: the same values and gradients, also under vmap."""
    monkeypatch.setattr(_callback, "_buffer_callback", None)
    case = CASES[name]
    arrays = case.arrays(np.float32)
    g = output_gradient(case, arrays)
    grad = gradient_of(case, g)
    text = str(jax.make_jaxpr(grad)(*to_jax(arrays)))
    assert "pure_callback" in text and "buffer_callback" not in text
    grads, out = jax.jit(grad)(*to_jax(arrays))
    np.testing.assert_array_equal(np.asarray(out), case.call(cuproi, *arrays))
    assert_gradients(grads, case, arrays, g)
    batched = jax.tree.map(lambda a: jnp.stack([a, a]), to_jax(arrays))
    grads, out = jax.jit(jax.vmap(grad))(*batched)
    np.testing.assert_array_equal(np.asarray(out[1]), case.call(cuproi, *arrays))
    assert_gradients(jax.tree.map(lambda a: a[1], grads), case, arrays, g)


# ---- a GPU ------------------------------------------------------------------------------


class CudaBuffer:
    """What buffer_callback hands a callback on a GPU: device memory with DLPack (and a record
    of the streams DLPack was asked to export it for)."""

    def __init__(self, array, device):
        self.array, self.device = array, device
        self.shape, self.dtype = array.shape, array.dtype
        self.streams = []

    def __dlpack_device__(self):
        return (2, self.device)  # kDLCUDA

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        self.streams.append(stream)
        return self.array.__dlpack__(max_version=(1, 0))  # writable (a legacy capsule is not)


XLA_STREAM = 0x5A00
# XLA's device: the last, which is not the current one where the stand-in has two.
XLA_DEVICE = DEVICES - 1


def _call_on_gpu(function, outputs, arrays, device=XLA_DEVICE, **options):
    """The callback's body, as XLA runs it on a GPU: buffers of ``device``, XLA's stream."""
    context = types.SimpleNamespace(stream=XLA_STREAM)
    buffers = jax.tree.map(lambda a: CudaBuffer(a, device), arrays)
    targets = jax.tree.map(lambda a: CudaBuffer(a, device), outputs)
    call = _callback._Call(function, tuple(sorted(options.items())))
    with CUPY.record() as log:
        call(context, targets, **buffers)
    return log, jax.tree.leaves(buffers) + jax.tree.leaves(targets)


@needs_buffers
@pytest.mark.gpu
@pytest.mark.skipif(not STANDIN, reason="the CuPy stand-in's record of launches and copies")
def test_gpu_kernels_run_on_xlas_stream_in_xlas_buffers(copies):
    """RoI Align forward and backward (the backward for a batch of two, as jax.vmap makes it):
    every launch on XLA's stream and device, no copy to the host, results in XLA's buffers."""
    x, b = CASES["roi_align"].arrays(np.float32)
    g = output_gradient(CASES["roi_align"], (x, b))
    options = {"output_size": (3, 4), "spatial_scale": 0.7, "sampling_ratio": 2, "aligned": True}
    out = np.full(g.shape, np.nan, np.float32)
    log, buffers = _call_on_gpu("roi_align", out, {"input": x, "boxes": b}, **options)
    grad = np.full((2, *x.shape), np.nan, np.float32)
    arrays = {"grad_output": np.stack([g, 2 * g]), "boxes": b[None], "input": None}
    shape = {"input_shape": x.shape, "pool_mode": "avg", "deterministic": False}
    log_back, back = _call_on_gpu("roi_align_backward", grad, arrays, **options, **shape)
    for entries in (log, log_back):
        assert entries.transfers == [] and entries.cross_device == []
        assert entries.launches and {(d, s) for _, d, s, *_ in entries.launches} == {
            (XLA_DEVICE, XLA_STREAM)
        }
    assert all(s == [XLA_STREAM] for s in (buf.streams for buf in buffers + back))
    assert copies.copied == []
    expected = cuproi.roi_align(x, b, (3, 4), 0.7, 2, True)
    np.testing.assert_allclose(out, expected, *TOLERANCE[np.dtype(np.float32)])
    for i, scale in enumerate((1, 2)):
        expected = cuproi.roi_align_backward(scale * g, b, x.shape, (3, 4), 0.7, 2, True)
        np.testing.assert_allclose(grad[i], expected, *TOLERANCE[np.dtype(np.float32)])


def _jax_gpu():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.mark.gpu
@pytest.mark.skipif(STANDIN or not _jax_gpu(), reason="needs JAX and CuPy on a CUDA GPU")
@pytest.mark.parametrize("name", ["roi_align", "deform_roi_pool", "multi_scale_roi_align"])
def test_on_a_gpu(name):
    """jit(grad) on GPU arrays: CuPy's kernels in the buffer callback, equal to the CPU's to
    rounding, results on the GPU."""
    case = CASES[name]
    arrays = case.arrays(np.float32)
    g = output_gradient(case, arrays)
    gpu = _jax_gpu()[0]
    grad = jax.jit(gradient_of(case, g))
    on_gpu = jax.device_put(to_jax(arrays), gpu)
    assert "xla_buffer_python_gpu_callback" in grad.lower(*on_gpu).as_text()
    grads, out = grad(*on_gpu)
    assert out.devices() == {gpu}
    rtol, atol = TOLERANCE[np.dtype(np.float32)]
    np.testing.assert_allclose(np.asarray(out), case.call(cuproi, *arrays), rtol, atol)
    for got, want, array in zip(grads, case.backward(*arrays, g), arrays, strict=True):
        want = jax.tree.map(np.zeros_like, array) if want is None else want
        for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), w, rtol=20 * rtol, atol=20 * atol)
