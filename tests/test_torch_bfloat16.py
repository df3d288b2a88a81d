"""bfloat16 tensors in cuproi.torch: computed in float32 and returned (and differentiated) in
bfloat16, as torchvision's ops do under torch.autocast. CUDA variants need a GPU."""

import pytest

torch = pytest.importorskip("torch")

import cuproi  # noqa: E402
import cuproi.torch as ct  # noqa: E402

SIZE = (3, 4)
BF16 = torch.bfloat16
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


def data(device, seed=0):
    """Features (12 = 1 x 3 x 4 channels, for the position-sensitive ops), boxes, rotated boxes,
    offsets and a mask, all float32 and exactly representable in bfloat16."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 12, 9, 11, generator=g)
    corner = torch.rand(5, 2, generator=g) * torch.tensor([7.0, 5.0]) - 1
    size = 1.5 + 5 * torch.rand(5, 2, generator=g)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0]]), corner, corner + size], 1)
    angle = 60 * torch.rand(5, 1, generator=g) - 30
    rotated = torch.cat([rois[:, :1], corner + size / 2, size, angle], 1)
    offset = 0.5 * torch.randn(5, 2, *SIZE, generator=g)
    mask = torch.rand(5, 1, *SIZE, generator=g)
    arrays = (x, rois.to(BF16).float(), rotated, offset, mask)
    return [a.to(BF16).float().to(device) for a in arrays]


# name -> call(features, offset, mask, boxes, rotated boxes); every one differentiable in its
# tensor arguments (the features, and the offset and mask where it takes them).
OPS = {
    "roi_align": lambda x, o, m, b, r: ct.roi_align(x, b, SIZE, 0.7, 2, True),
    "roi_align_max": lambda x, o, m, b, r: ct.roi_align(x, b, SIZE, 0.7, 2, True, "max"),
    "roi_pool": lambda x, o, m, b, r: ct.roi_pool(x, b, SIZE, 0.7),
    "deform_roi_pool": lambda x, o, m, b, r: ct.deform_roi_pool(x, b, o, SIZE, 0.7, 2, mask=m),
    "ps_roi_align": lambda x, o, m, b, r: ct.ps_roi_align(x, b, SIZE, 0.7, 2),
    "ps_roi_pool": lambda x, o, m, b, r: ct.ps_roi_pool(x, b, SIZE, 0.7),
    "prroi_pool": lambda x, o, m, b, r: ct.prroi_pool(x, b, SIZE, 0.7),
    "roi_align_rotated": lambda x, o, m, b, r: ct.roi_align_rotated(x, r, SIZE, 0.7, 2, True),
    "multi_scale_roi_align": lambda x, o, m, b, r: ct.multi_scale_roi_align(
        [x, x[..., ::2, ::2]], b, SIZE, [0.7, 0.35], 2, True, canonical_scale=6
    ),
}


@pytest.fixture
def deterministic():
    """Deterministic GPU sums, so that the two runs compared round to the same bfloat16."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_bfloat16_is_float32_rounded(op, device):
    """Values and gradients of bfloat16 tensors are those of their float32 values, rounded to
    bfloat16; the gradients are bfloat16 tensors."""
    x, rois, rotated, offset, mask = data(device)
    wide = [t.clone().requires_grad_() for t in (x, offset, mask)]
    narrow = [t.to(BF16).requires_grad_() for t in (x, offset, mask)]
    want = OPS[op](*wide, rois, rotated)
    got = OPS[op](*narrow, rois, rotated)
    assert got.dtype == BF16 and got.device == x.device
    torch.testing.assert_close(got, want.to(BF16), rtol=0, atol=0)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(BF16).to(device)
    want.backward(g.float())
    got.backward(g)
    used = [i for i, t in enumerate(wide) if t.grad is not None]
    assert used == ([0, 1, 2] if op == "deform_roi_pool" else [0])
    for i in used:
        assert narrow[i].grad.dtype == BF16
        torch.testing.assert_close(narrow[i].grad, wide[i].grad.to(BF16), rtol=0, atol=0)
    assert narrow[0].grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_boxes_are_read_as_float32(device):
    x, rois, _, _, _ = data(device)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    for boxes in (rois, per_image):
        narrow = rois.to(BF16) if boxes is rois else [b.to(BF16) for b in boxes]
        torch.testing.assert_close(
            ct.roi_align(x, narrow, SIZE, 0.7, 2, True),
            ct.roi_align(x, boxes, SIZE, 0.7, 2, True),
            rtol=0,
            atol=0,
        )


def test_float32_features_with_bfloat16_offsets_stay_float32():
    x, rois, _, offset, mask = data("cpu")
    out = ct.deform_roi_pool(x, rois, offset.to(BF16), SIZE, 0.7, 2, mask=mask.to(BF16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, ct.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2, mask=mask), rtol=0, atol=0
    )


@pytest.mark.parametrize("device", DEVICES)
def test_a_head_trains_under_autocast(device):
    """torch.autocast with bfloat16 (the CPU's default) makes bfloat16 features and offsets: the
    modules run, return bfloat16, and every parameter gets a finite gradient."""
    x, rois, _, _, _ = data(device)
    conv = torch.nn.Conv2d(12, 8, 1).to(device)
    pack = ct.ModulatedDeformRoIPoolPack(SIZE, 8, deform_fc_channels=16).to(device)
    with torch.autocast(device, dtype=BF16):
        features = conv(x)
        assert features.dtype == BF16
        outs = [
            ct.RoIAlign(SIZE, 1.0, 2, True)(features, rois),
            ct.RoIPool(SIZE, 1.0)(features, rois),
            pack(features, rois),
        ]
    assert [o.dtype for o in outs] == [BF16] * 3
    sum(o.float().square().sum() for o in outs).backward()
    for parameter in [*conv.parameters(), *pack.parameters()]:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_torch_compile_without_graph_breaks():
    x, rois, _, offset, _ = data("cpu")
    x, offset = (t.to(BF16).requires_grad_() for t in (x, offset))

    def loss(x, offset):
        return ct.deform_roi_pool(x, rois, offset, SIZE, 0.7, 2).float().square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(x, offset), (x, offset))
    want = torch.autograd.grad(loss(x, offset), (x, offset))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == BF16
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_array_api_points_to_the_adapter():
    """NumPy and CuPy have no bfloat16: cuproi's array functions refuse it with a clear error."""
    x, rois, _, _, _ = data("cpu")
    with pytest.raises(TypeError, match=r"bfloat16.*cuproi\.torch"):
        cuproi.roi_align(x.to(BF16), rois, SIZE)
