"""The array functions on torch tensors (DLPack, without copies): results come back as tensors
of the inputs' dtype and device, and what NumPy and CuPy cannot hold is named. The adapter's
ops are in tests/test_torch_<op>.py. CUDA variants need a GPU."""

import subprocess
import sys

import numpy as np
import pytest
from roi_op_tester import box_zoo

import cuproi
from cuproi import _dispatch

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()


def data(dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 12, generator=g, dtype=dtype).to(device)
    boxes = torch.tensor(box_zoo(0.7), dtype=torch.float32).to(device)
    offset = torch.randn(len(boxes), 2, 3, 4, generator=g, dtype=dtype).to(device)
    return x, boxes, offset


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_array_api_returns_tensors(dtype):
    x, boxes, offset = data(dtype)
    xn, bn, on = (t.numpy() for t in (x, boxes, offset))
    out = cuproi.roi_align(x, boxes, (3, 4), 0.7, 2, True)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device == x.device
    np.testing.assert_array_equal(out.numpy(), cuproi.roi_align(xn, bn, (3, 4), 0.7, 2, True))
    pooled, argmax = cuproi.roi_pool(x, boxes, (3, 4), 0.7, return_argmax=True)
    assert isinstance(argmax, torch.Tensor) and argmax.dtype == torch.int32
    grad = cuproi.roi_pool_backward(torch.ones_like(pooled), boxes, argmax, x.shape)
    assert isinstance(grad, torch.Tensor) and grad.dtype == dtype
    grads = cuproi.deform_roi_pool_backward(torch.ones_like(out), x, boxes, offset, (3, 4), 0.7)
    assert all(isinstance(g, torch.Tensor) for g in grads[:2]) and grads[2] is None
    assert grads[1].dtype == offset.dtype


def test_list_of_boxes_and_tensors_with_a_graph():
    x, boxes, _ = data()
    x.requires_grad_()
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    flat = torch.cat([boxes[boxes[:, 0] == i] for i in range(2)])
    np.testing.assert_array_equal(
        cuproi.roi_align(x, per_image, 3, 0.7).numpy(), cuproi.roi_align(x, flat, 3, 0.7).numpy()
    )


def test_zero_copy_in_and_out():
    x = torch.randn(2, 3, 4, 5)
    _, (native,), restore = _dispatch.prepare(input=x)
    assert isinstance(native, np.ndarray)
    assert native.__array_interface__["data"][0] == x.data_ptr()
    result = np.ones((2, 2), np.float32)
    back = restore(result)
    assert isinstance(back, torch.Tensor) and back.data_ptr() == result.ctypes.data


def test_non_contiguous_tensors():
    x, boxes, _ = data()
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # channels in a permuted layout
    assert not xt.is_contiguous()
    np.testing.assert_array_equal(
        cuproi.roi_align(xt, boxes, 3).numpy(), cuproi.roi_align(x, boxes, 3).numpy()
    )


class _FakeCudaArray:
    """An array that says it lives on CUDA device 0 (no GPU is touched before the check)."""

    def __dlpack__(self, stream=None):
        raise AssertionError("must not be read")

    def __dlpack_device__(self):
        return (2, 0)


def test_mixed_devices_name_both():
    x, _, _ = data()
    with pytest.raises(ValueError, match=r"input on cpu, boxes on cuda:0"):
        cuproi.roi_align(x, _FakeCudaArray(), 3)


def test_bfloat16_points_to_the_adapter():
    """NumPy and CuPy have no bfloat16: the array functions refuse it with a clear error."""
    x, boxes, _ = data()
    with pytest.raises(TypeError, match=r"bfloat16.*cuproi\.torch"):
        cuproi.roi_align(x.to(torch.bfloat16), boxes, (3, 4))


def test_import_cuproi_does_not_import_torch():
    code = "import sys, cuproi; assert 'torch' not in sys.modules and 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_cuda_tensors_round_trip(dtype):
    pytest.importorskip("cupy")
    x, boxes, offset = data(dtype, "cuda")
    out = cuproi.roi_align(x, boxes, (3, 4), 0.7, 2, True)
    assert out.is_cuda and out.dtype == dtype and out.device == x.device
    expected = cuproi.roi_align(x.cpu().numpy(), boxes.cpu().numpy(), (3, 4), 0.7, 2, True)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    np.testing.assert_allclose(out.cpu().numpy().astype(np.float64), expected, rtol=tol, atol=tol)
