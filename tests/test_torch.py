"""PyTorch interop: DLPack round trips of the array API, and the cuproi.torch adapter (custom
ops with autograd, fake tensors, torch.compile, modules). CUDA variants need a GPU."""

import subprocess
import sys

import numpy as np
import pytest
from roi_op_tester import box_zoo

import cuproi
from cuproi import _dispatch

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

CUDA = torch.cuda.is_available()


def data(dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 12, generator=g, dtype=dtype).to(device)
    boxes = torch.tensor(box_zoo(0.7), dtype=torch.float32).to(device)
    offset = torch.randn(len(boxes), 2, 3, 4, generator=g, dtype=dtype).to(device)
    return x, boxes, offset


# ---- the array API on tensors (DLPack) ------------------------------------------------------


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


# ---- cuproi.torch: autograd, custom ops, torch.compile ---------------------------------------


def _ops(boxes):
    return {
        "roi_align": lambda x, o: ct.roi_align(x, boxes, (3, 4), 0.7, 2, True),
        "roi_align_adaptive": lambda x, o: ct.roi_align(x, boxes, (3, 4), 0.7, -1, False),
        "roi_pool": lambda x, o: ct.roi_pool(x, boxes, (3, 4), 0.7),
        "deform_roi_pool": lambda x, o: ct.deform_roi_pool(x, boxes, o, (3, 4), 0.7, 2),
        "deform_roi_pool_no_offset": lambda x, o: ct.deform_roi_pool(x, boxes, None, (3, 4), 0.7),
    }


@pytest.mark.parametrize("op", list(_ops(None)))
def test_gradcheck(op):
    x, boxes, offset = data(seed=1)
    # Keep every cell's value distinct so that roi_pool's max is not tied.
    x = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(2)).double() / 7
    x = x.view(2, 3, 10, 12).requires_grad_()
    offset.requires_grad_()
    f = _ops(boxes)[op]
    inputs = (x, offset) if op == "deform_roi_pool" else (x,)
    assert torch.autograd.gradcheck(lambda *a: f(a[0], a[1] if len(a) > 1 else None), inputs)


def test_values_and_gradients_equal_the_array_api():
    x, boxes, offset = data()
    x.requires_grad_()
    offset.requires_grad_()
    g = torch.randn(len(boxes), 3, 3, 4, dtype=torch.float64)
    out = ct.deform_roi_pool(x, boxes, offset, (3, 4), 0.7, 2)
    (out * g).sum().backward()
    xn, bn, on = (t.detach().numpy() for t in (x, boxes, offset))
    np.testing.assert_array_equal(
        out.detach().numpy(), cuproi.deform_roi_pool(xn, bn, on, (3, 4), 0.7, 2)
    )
    grad_x, grad_o, _ = cuproi.deform_roi_pool_backward(g.numpy(), xn, bn, on, (3, 4), 0.7, 2)
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(offset.grad.numpy(), grad_o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("enabled", [False, True])
def test_deterministic_algorithms_reach_the_backward(monkeypatch, enabled):
    """torch.use_deterministic_algorithms(True) selects cuproi's deterministic backward."""
    seen = []
    for name in ("roi_align_backward", "roi_pool_backward", "deform_roi_pool_backward"):
        original = getattr(cuproi, name)

        def spy(*args, original=original, **kwargs):
            seen.append(kwargs["deterministic"])
            return original(*args, **kwargs)

        monkeypatch.setattr(cuproi, name, spy)
    x, boxes, offset = data()
    x.requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        for out in (
            ct.roi_align(x, boxes, 3, 0.7, 2, True),
            ct.roi_pool(x, boxes, 3, 0.7),
            ct.deform_roi_pool(x, boxes, offset.requires_grad_(), (3, 4), 0.7),
        ):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert seen == [enabled] * 3


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_without_gradients_skips_the_argmax(monkeypatch, device):
    """No gradient to take (no_grad, or an input that needs none): the value-only op, which
    gives what the differentiable one does."""
    x, boxes, _ = data(device=device)
    expected = ct.roi_pool(x.clone().requires_grad_(), boxes, (3, 4), 0.7).detach()
    asked = []
    roi_pool = cuproi.roi_pool

    def spy(*args, **kwargs):
        asked.append(args[4] if len(args) > 4 else kwargs.get("return_argmax", False))
        return roi_pool(*args, **kwargs)

    monkeypatch.setattr(cuproi, "roi_pool", spy)
    with torch.no_grad():
        under_no_grad = ct.roi_pool(x.clone().requires_grad_(), boxes, (3, 4), 0.7)
    plain = ct.roi_pool(x, boxes, (3, 4), 0.7)
    compiled = torch.compile(lambda x: ct.roi_pool(x, boxes, (3, 4), 0.7), fullgraph=True)(x)
    assert asked == [False, False, False]
    for out in (under_no_grad, plain, compiled):
        assert not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_custom_ops_pass_opcheck():
    x, boxes, offset = data()
    x.requires_grad_()
    offset.requires_grad_()
    calls = [
        (torch.ops.cuproi.roi_align.default, (x, boxes, 3, 4, 0.7, 2, True)),
        (torch.ops.cuproi.roi_pool.default, (x, boxes, 3, 4, 0.7)),
        (torch.ops.cuproi.roi_pool_inference.default, (x.detach(), boxes, 3, 4, 0.7)),
        (torch.ops.cuproi.deform_roi_pool.default, (x, boxes, offset, 3, 4, 0.7, 0, 0.1)),
        (torch.ops.cuproi.deform_roi_pool.default, (x, boxes, None, 3, 4, 0.7, 0, 0.1)),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args)


def channels_last(x):
    return x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(x.requires_grad)


def test_custom_ops_pass_opcheck_on_channels_last_features():
    """The fake implementations give the gradients the strides the real ones have."""
    x, boxes, offset = data(seed=3)
    x = channels_last(x).requires_grad_()
    offset.requires_grad_()
    g = torch.randn(len(boxes), 3, 3, 4, dtype=torch.float64)
    ops = torch.ops.cuproi
    plain = x.detach()  # the backward ops have no gradient of their own
    calls = [
        (ops.roi_align.default, (x, boxes, 3, 4, 0.7, 2, True)),
        (ops.roi_align.default, (x, boxes, 3, 4, 0.7, 2, True, "max")),
        (ops.deform_roi_pool.default, (x, boxes, offset, 3, 4, 0.7, 0, 0.1)),
        (ops.roi_pool.default, (x, boxes, 3, 4, 0.7)),
        (ops.roi_pool_inference.default, (plain, boxes, 3, 4, 0.7)),
        (ops.roi_align_backward.default, (g, boxes, list(x.shape), 0.7, 2, True, False, True)),
        (ops.roi_align_max_backward.default, (g, plain, boxes, 0.7, 2, True, False, True)),
        (
            ops.deform_roi_pool_backward.default,
            (g, plain, boxes, offset.detach(), 0.7, 0, 0.1, False, None, True),
        ),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align", "roi_align_max", "deform_roi_pool"])
def test_channels_last_features_get_channels_last_gradients(op, device):
    """Features in torch's channels_last format give the same values and gradients (exactly:
    deterministic sums on the GPU), the gradients stored channels last as well."""
    x, boxes, offset = data(device=device, seed=4)
    f = {
        "roi_align": lambda x: ct.roi_align(x, boxes, (3, 4), 0.7, 2, True),
        "roi_align_max": lambda x: ct.roi_align(x, boxes, (3, 4), 0.7, 2, True, "max"),
        "deform_roi_pool": lambda x: ct.deform_roi_pool(x, boxes, offset, (3, 4), 0.7, 2),
    }[op]
    x.requires_grad_()
    stored = channels_last(x)
    assert not stored.is_contiguous()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out, expected = f(stored), f(x)
        g = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, stored, g)
        (expected_grad,) = torch.autograd.grad(expected, x, g)
        compiled = torch.compile(lambda x: (f(x) * g).sum(), fullgraph=True)
        (compiled_grad,) = torch.autograd.grad(compiled(stored), stored)
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    assert expected_grad.is_contiguous()
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)
    torch.testing.assert_close(compiled_grad, expected_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_pool_on_channels_last_features(device):
    """The same values and gradients as on NCHW features; the gradient comes back NCHW, as
    torchvision's does."""
    x, boxes, _ = data(device=device, seed=5)
    x.requires_grad_()
    stored = channels_last(x)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out, expected = ct.roi_pool(stored, boxes, (3, 4), 0.7), ct.roi_pool(x, boxes, (3, 4), 0.7)
        g = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, stored, g)
        (expected_grad,) = torch.autograd.grad(expected, x, g)
        with torch.no_grad():
            inference = ct.roi_pool(stored, boxes, (3, 4), 0.7)
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(inference, expected, rtol=0, atol=0)
    assert grad.is_contiguous()
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["prroi_pool", "roi_align_rotated", "multi_scale_roi_align"])
def test_the_family_on_channels_last_features(op):
    """The same values and gradients (for the features, and for the boxes where the op gives
    one) as on NCHW features."""
    x, boxes, _ = data(seed=6)
    boxes = boxes.to(x.dtype)
    centre, size = (boxes[:, 1:3] + boxes[:, 3:5]) / 2, boxes[:, 3:5] - boxes[:, 1:3]
    rotated = torch.cat([boxes[:, :1], centre, size, torch.full_like(size[:, :1], 30)], 1)
    f = {
        "prroi_pool": lambda x, b: ct.prroi_pool(x, b, (3, 4), 0.7),
        "roi_align_rotated": lambda x, b: ct.roi_align_rotated(x, rotated, (3, 4), 0.7, 2),
        "multi_scale_roi_align": lambda x, b: ct.multi_scale_roi_align(
            [x, x[:, :, ::2, ::2]], b, (3, 4), [0.7, 0.35], 2, True
        ),
    }[op]
    x.requires_grad_()
    boxes.requires_grad_(op == "prroi_pool")
    stored = channels_last(x)
    inputs = (stored, boxes) if boxes.requires_grad else (stored,)
    out, expected = f(stored, boxes), f(x, boxes)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, g)
    expected_grads = torch.autograd.grad(expected, (x, *inputs[1:]), g)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fake_tensors_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 256, 50, 76)
        boxes = torch.empty(7, 5)
        assert ct.roi_align(x, boxes, 7, 1 / 16).shape == (7, 256, 7, 7)
        assert ct.roi_pool(x, boxes, (3, 5)).shape == (7, 256, 3, 5)
        assert ct.roi_pool(x.requires_grad_(), boxes, (3, 5)).shape == (7, 256, 3, 5)
        assert ct.deform_roi_pool(x, boxes, torch.empty(7, 2, 7, 7), 7).shape == (7, 256, 7, 7)


def test_torch_compile_without_graph_breaks():
    x, boxes, offset = data(torch.float32)
    x.requires_grad_()
    offset.requires_grad_()

    def loss(x, offset):
        return (
            ct.roi_align(x, boxes, 3, 0.7, 2, True).sum()
            + ct.roi_pool(x, boxes, 3, 0.7).sum()
            + ct.deform_roi_pool(x, boxes, offset, (3, 4), 0.7).sum()
        )

    compiled = torch.compile(loss, fullgraph=True)  # fails on any graph break
    value = compiled(x, offset)
    value.backward()
    grads = x.grad.clone(), offset.grad.clone()
    x.grad = offset.grad = None
    expected = loss(x, offset)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads, (x.grad, offset.grad))


# ---- modules ---------------------------------------------------------------------------------


def test_modules_equal_functions():
    x, boxes, offset = data()
    torch.testing.assert_close(
        ct.RoIAlign(3, 0.7, 2, True)(x, boxes), ct.roi_align(x, boxes, 3, 0.7, 2, True)
    )
    torch.testing.assert_close(
        ct.RoIPool((3, 4), 0.7)(x, boxes), ct.roi_pool(x, boxes, (3, 4), 0.7)
    )
    torch.testing.assert_close(
        ct.DeformRoIPool((3, 4), 0.7)(x, boxes, offset),
        ct.deform_roi_pool(x, boxes, offset, (3, 4), 0.7),
    )
    assert "aligned=True" in repr(ct.RoIAlign(3, 0.7, 2, True))
    torch.testing.assert_close(
        ct.RoIAlign(3, 0.7, 2, True, pool_mode="max")(x, boxes),
        ct.roi_align(x, boxes, 3, 0.7, 2, True, "max"),
    )
    assert "pool_mode='max'" in repr(ct.RoIAlign(3, 0.7, 2, pool_mode="max"))
    with pytest.raises(ValueError, match="pool_mode must be 'avg' or 'max'; got 'mean'"):
        ct.RoIAlign(3, 0.7, 2, pool_mode="mean")


@pytest.mark.parametrize("module", ["DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"])
def test_packs_start_as_plain_pooling_and_train(module):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    boxes = torch.tensor([[0, 2.0, 3.0, 12.0, 11.0], [1, 1.0, 1.0, 9.0, 14.0], [0, 5, 5, 15, 15]])
    pack = getattr(ct, module)(3, 4, deform_fc_channels=32, sampling_ratio=2)
    plain = ct.deform_roi_pool(x, boxes, None, 3, sampling_ratio=2)
    out = pack(x, boxes)
    expected = plain * 0.5 if module.startswith("Modulated") else plain
    torch.testing.assert_close(out, expected)  # zero-initialised heads
    assert pack.offset.shape == (3, 2, 3, 3) and not pack.offset.detach().any()
    target = torch.randn_like(out)
    optimizer = torch.optim.Adam(pack.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = ((pack(x, boxes) - target) ** 2).mean() + 1e-3 * (pack.offset**2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert pack.offset.detach().abs().max() > 1e-3  # the offsets moved
    with pytest.raises(ValueError, match="channels"):
        pack(torch.randn(2, 5, 16, 16), boxes)


def _mmcv_head(sizes, last):
    """mmcv's head layout: Linear, ReLU, ..., Linear, then ``last`` modules, in one Sequential."""
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1], *last)


def test_packs_load_mmcv_checkpoints():
    """The packs' parameters have mmcv's names and shapes (offset_fc: three Linear layers,
    mask_fc: two then a Sigmoid), so an mmcv state dict loads strictly, and is used."""
    c, hidden, bins = 4, 16, 6  # output (2, 3)
    mmcv = torch.nn.Module()
    mmcv.offset_fc = _mmcv_head([bins * c, hidden, hidden, bins * 2], [])
    mmcv.mask_fc = _mmcv_head([bins * c, hidden, bins], [torch.nn.Sigmoid()])
    state = mmcv.state_dict()
    assert sorted(state) == sorted(
        f"{head}.{i}.{p}"
        for head, layers in (("offset_fc", (0, 2, 4)), ("mask_fc", (0, 2)))
        for i in layers
        for p in ("weight", "bias")
    )
    plain = ct.DeformRoIPoolPack((2, 3), c, hidden)
    plain.load_state_dict({k: v for k, v in state.items() if k.startswith("offset_fc")})
    modulated = ct.ModulatedDeformRoIPoolPack((2, 3), c, hidden)
    modulated.load_state_dict(state)
    x = torch.randn(1, c, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0]])
    features = ct.deform_roi_pool(x, boxes, None, (2, 3)).flatten(1)
    with torch.no_grad():
        modulated(x, boxes)
        plain(x, boxes)
        torch.testing.assert_close(modulated.mask.flatten(1), mmcv.mask_fc(features))
        torch.testing.assert_close(modulated.offset.flatten(1), mmcv.offset_fc(features))
        torch.testing.assert_close(plain.offset, modulated.offset)


def test_import_cuproi_does_not_import_torch():
    code = "import sys, cuproi; assert 'torch' not in sys.modules and 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- CUDA ------------------------------------------------------------------------------------


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


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_gradcheck_and_stream():
    pytest.importorskip("cupy")
    x, boxes, offset = data(torch.float64, "cuda")
    x.requires_grad_()
    offset.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, o: ct.deform_roi_pool(x, boxes, o, (3, 4), 0.7, 2), (x, offset)
    )
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = x.detach() * 2  # queued on the side stream: cuproi must run after it
        out = ct.roi_align(y, boxes, 3, 0.7, 2, True)
    stream.synchronize()
    torch.testing.assert_close(out, ct.roi_align(x.detach() * 2, boxes, 3, 0.7, 2, True))
