"""cuproi.torch.deform_roi_pool (offsets, the fused mask, the boxes' gradient) and its modules
DeformRoIPool, DeformRoIPoolPack and ModulatedDeformRoIPoolPack: the checks of
tests/torch_op_tester.py, the mask against the oracle, mixed dtypes, and the packs (their
zero-initialised heads, training, mmcv's checkpoints)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oracles import deform_roi_pool as deform_oracle  # noqa: E402
from torch_op_tester import BF16, TorchOpTester  # noqa: E402

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402

ALL = ("input", "boxes", "offset", "mask")
BACKWARD = ("input", "offset", "mask")  # what cuproi.deform_roi_pool_backward returns


def zeros(t, *shape):
    """Zeros of shape (K, *shape) for the K boxes of the tensors ``t``."""
    return torch.zeros(len(t["boxes"]), *shape, dtype=t["input"].dtype)


class TestDeformRoIPool(TorchOpTester):
    function = staticmethod(ct.deform_roi_pool)
    modules = (ct.DeformRoIPool, ct.DeformRoIPoolPack, ct.ModulatedDeformRoIPoolPack)
    defaults = TorchOpTester.defaults | {"sampling_ratio": 2, "gamma": 0.1}
    cases = {  # "given": the offset and the mask of the call
        "no offset": {"sampling_ratio": 0, "given": ()},
        "offset": {"given": ("offset",), "wrt": ("input", "offset")},
        "mask, boxes": {"given": ("offset", "mask"), "wrt": ALL},
        "mask only, boxes": {"given": ("mask",), "wrt": ("input", "boxes", "mask")},
    }
    module_cases = ("no offset", "offset")  # DeformRoIPool takes no mask
    refused = [
        *TorchOpTester.refused,
        ("offset of 3 x 3 bins", lambda t: {"offset": zeros(t, 2, 3, 3)}),
        ("offset for 1 box", lambda t: {"offset": zeros(t, 2, 3, 4)[:1]}),
        ("int64 offset", lambda t: {"offset": zeros(t, 2, 3, 4).long()}),
        ("3-D mask", lambda t: {"offset": zeros(t, 2, 3, 4), "mask": zeros(t, 1, 3, 4)[0]}),
        ("int64 mask", lambda t: {"mask": zeros(t, 1, 3, 4).long()}),
        ("mask of 2 maps", lambda t: {"mask": zeros(t, 2, 3, 4)}),
    ]
    channels_last_gradient = True

    def tensors(self, case, g):
        t = super().tensors(case, g)
        k = len(t["boxes"])
        offset = torch.randn(k, 2, 3, 4, generator=g, dtype=torch.float64)
        mask = 0.2 + 0.8 * torch.rand(k, 1, 3, 4, generator=g, dtype=torch.float64)
        return t | {n: {"offset": offset, "mask": mask}[n] for n in case["given"]}

    def call(self, t, case):
        offset, mask = t.get("offset"), t.get("mask")
        return self.function(t["input"], t["boxes"], offset, mask=mask, **self.options(case))

    def expected(self, t, g, case):
        args, kw = (t["input"], t["boxes"], t.get("offset")), self.options(case)
        kw["mask"] = t.get("mask")
        grads = dict(zip(BACKWARD, cuproi.deform_roi_pool_backward(g, *args, **kw), strict=True))
        grads["boxes"] = cuproi.deform_roi_pool_box_backward(g, *args, **kw)
        return cuproi.deform_roi_pool(*args, **kw), grads

    def module_kwargs(self, module, case):
        if module is ct.DeformRoIPool:
            return self.options(case)
        return self.options(case) | {"output_channels": 3, "deform_fc_channels": 16}

    def module_call(self, module, t):
        offset = [t.get("offset")] if type(module) is ct.DeformRoIPool else []
        return module(t["input"], t["boxes"], *offset)


def test_the_mask_equals_the_oracle():
    tester, case = TestDeformRoIPool(), TestDeformRoIPool.cases["mask, boxes"]
    t = tester.inputs(case)
    want = deform_oracle.deform_roi_pool_modulated(
        *(t[n].numpy() for n in ALL), (3, 4), 0.7, 2, 0.1
    )
    np.testing.assert_allclose(tester.call(t, case).numpy(), want, rtol=1e-12, atol=1e-12)


def test_float32_features_with_bfloat16_offsets_stay_float32():
    tester, case = TestDeformRoIPool(), TestDeformRoIPool.cases["mask, boxes"]
    t = tester.inputs(case, torch.float32)
    out = tester.call(t | {n: t[n].to(BF16) for n in ALL[2:]}, case)
    assert out.dtype == torch.float32
    rounded = t | {n: t[n].to(BF16).float() for n in ALL[2:]}
    torch.testing.assert_close(out, tester.call(rounded, case), rtol=0, atol=0)


def test_the_modulated_pack_uses_the_fused_mask():
    torch.manual_seed(0)
    pack = ct.ModulatedDeformRoIPoolPack((3, 4), 3, 8, spatial_scale=0.7, sampling_ratio=2).double()
    t = TestDeformRoIPool().inputs(TestDeformRoIPool.cases["mask, boxes"])
    x = t["input"].requires_grad_()
    out = pack(x, t["boxes"])
    want = ct.deform_roi_pool(x, t["boxes"], pack.offset, (3, 4), 0.7, 2, 0.1) * pack.mask
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert x.grad is not None and pack.mask_fc[-2].weight.grad is not None


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
