"""cuproi.torch for the op-family extensions: max-mode roi_align, the fused mask of
deform_roi_pool and ModulatedDeformRoIPoolPack, and box gradients through autograd (gradcheck,
opcheck, torch.compile)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import deform_roi_pool as deform_oracle  # noqa: E402
from oracles import roi_align as align_oracle  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402

SIZE = (2, 3)


def with_index(rois, coords):
    """(K, 5) boxes from fixed batch indices and differentiable coordinates (gradcheck must not
    perturb the batch index, which has to stay a whole number)."""
    return torch.cat([rois[:, :1].detach(), coords], 1)


def data(seed=0, k=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([6.0, 4.0]) - 1
    size = 1.3 + 4 * torch.rand(k, 2, generator=g, dtype=torch.float64)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0]])[:k], corner, corner + size], 1)
    offset = 0.3 * torch.randn(k, 2, *SIZE, generator=g, dtype=torch.float64)
    mask = 0.2 + 0.8 * torch.rand(k, 1, *SIZE, generator=g, dtype=torch.float64)
    return x, rois, offset, mask


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck_with_boxes(aligned):
    x, rois, _, _ = data()
    x.requires_grad_()
    coords = rois[:, 1:].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ct.roi_align(a, with_index(rois, b), SIZE, 0.7, 2, aligned),
        (x, coords),
        atol=1e-6,
    )


def test_roi_align_box_gradient_equals_the_array_api():
    x, rois, _, _ = data()
    rois.requires_grad_()
    out = ct.roi_align(x, rois, SIZE, 0.7, -1, True)
    g = torch.randn_like(out)
    out.backward(g)
    want = cuproi.roi_align_box_backward(
        g.numpy(), x.numpy(), rois.detach().numpy(), SIZE, 0.7, -1, True
    )
    np.testing.assert_allclose(rois.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    assert (rois.grad[:, 0] == 0).all()


def test_list_boxes_get_their_gradient():
    x, rois, _, _ = data()
    per_image = [rois[rois[:, 0] == i, 1:].clone().requires_grad_() for i in range(2)]
    out = ct.roi_align(x, per_image, SIZE, 0.7, 2, True)
    out.sum().backward()
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    want = cuproi.roi_align_box_backward(
        np.ones(out.shape), x.numpy(), ordered.numpy(), SIZE, 0.7, 2, True
    )
    np.testing.assert_allclose(
        torch.cat([b.grad for b in per_image]).numpy(), want[:, 1:], rtol=1e-12, atol=1e-12
    )


def test_roi_align_max_forward_and_gradcheck():
    x, rois, _, _ = data()
    out = ct.roi_align(x, rois, SIZE, 0.7, 2, True, pool_mode="max")
    np.testing.assert_allclose(
        out.numpy(),
        align_oracle.roi_align_max(x.numpy(), rois.numpy(), SIZE, 0.7, 2, True),
        rtol=1e-12,
    )
    x.requires_grad_()
    coords = rois[:, 1:].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ct.roi_align(a, with_index(rois, b), SIZE, 0.7, 2, True, "max"),
        (x, coords),
        atol=1e-6,
    )


@pytest.mark.parametrize("with_offset", [False, True])
def test_deform_with_mask_gradcheck(with_offset):
    x, rois, offset, mask = data()
    coords = rois[:, 1:].clone()
    tensors = [x, coords, offset, mask] if with_offset else [x, coords, mask]
    for t in tensors:
        t.requires_grad_()

    def f(*a):
        b = with_index(rois, a[1])
        if with_offset:
            return ct.deform_roi_pool(a[0], b, a[2], SIZE, 0.7, 2, 0.1, a[3])
        return ct.deform_roi_pool(a[0], b, None, SIZE, 0.7, 2, 0.1, a[2])

    assert torch.autograd.gradcheck(f, tuple(tensors), atol=1e-6)


def test_deform_forward_matches_the_oracle():
    x, rois, offset, mask = data()
    out = ct.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2, 0.1, mask)
    want = deform_oracle.deform_roi_pool_modulated(
        x.numpy(), rois.numpy(), offset.numpy(), mask.numpy(), SIZE, 0.7, 2, 0.1
    )
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)


def test_modulated_pack_uses_the_fused_mask():
    torch.manual_seed(0)
    pack = ct.ModulatedDeformRoIPoolPack(
        SIZE, 3, deform_fc_channels=8, spatial_scale=0.7, sampling_ratio=2
    ).double()
    x, rois, _, _ = data()
    x.requires_grad_()
    out = pack(x, rois)
    want = ct.deform_roi_pool(x, rois, pack.offset, SIZE, 0.7, 2, 0.1) * pack.mask
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert x.grad is not None and pack.mask_fc[-2].weight.grad is not None


def test_opcheck_of_the_new_ops():
    x, rois, offset, mask = data()
    g = torch.randn(len(rois), 3, *SIZE, dtype=torch.float64)
    ops = torch.ops.cuproi
    checks = [
        (ops.roi_align.default, (x, rois, *SIZE, 0.7, 2, True, "max")),
        (ops.roi_align_max_backward.default, (g, x, rois, 0.7, 2, True, False)),
        (ops.roi_align_box_backward.default, (g, x, rois, 0.7, 2, True, "avg", False)),
        (ops.deform_roi_pool.default, (x, rois, offset, *SIZE, 0.7, 2, 0.1, mask)),
        (ops.deform_roi_pool_backward.default, (g, x, rois, offset, 0.7, 2, 0.1, False, mask)),
        (ops.deform_roi_pool_box_backward.default, (g, x, rois, offset, mask, 0.7, 2, 0.1, False)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_compile_with_box_gradients():
    x, rois, offset, mask = data()
    rois.requires_grad_()
    mask.requires_grad_()

    def f(b, m):
        return (
            ct.roi_align(x, b, SIZE, 0.7, 2, True).sum()
            + ct.deform_roi_pool(x, b, offset, SIZE, 0.7, 2, 0.1, m).sum()
        )

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    compiled(rois, mask).backward()
    got = (rois.grad.clone(), mask.grad.clone())
    rois.grad = mask.grad = None
    f(rois, mask).backward()
    torch.testing.assert_close(got[0], rois.grad)
    torch.testing.assert_close(got[1], mask.grad)
