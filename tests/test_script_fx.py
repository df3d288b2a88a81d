"""TorchScript and torch.fx: every module and function scripts, every module fx-traces.

The scripted and traced forms must equal eager (the same ops on the same arguments), keep the
attributes the modules set, and save and load (after ``import cuproi.torch``).
"""

import io

import pytest

torch = pytest.importorskip("torch")

import cuproi.torch as ct  # noqa: E402


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 8, 16, 16, generator=g)
    boxes = [torch.tensor([[1.0, 1, 9, 12], [0, 0, 3, 3]]), torch.tensor([[2.0, 3, 15, 15]])]
    rotated = [torch.tensor([[8.0, 8, 6, 4, 30]]), torch.tensor([[5.0, 5, 4, 4, -10]])]
    scores = torch.rand(2, 8 * 4, 16, 16, generator=g)
    levels = {
        "p2": torch.rand(2, 8, 16, 16, generator=g),
        "p3": torch.rand(2, 8, 8, 8, generator=g),
    }
    return x, boxes, rotated, scores, levels


X, BOXES, ROTATED, SCORES, LEVELS = _inputs()
IMAGE = [(b * 4) for b in BOXES]
ROIS = torch.tensor([[0, 1.0, 1, 9, 12], [0, 0, 0, 3, 3], [1, 2, 3, 15, 15]])  # BOXES as (K, 5)

MODULES = [
    (ct.RoIAlign(3, 0.5, 2, True), (X, BOXES)),
    (ct.RoIAlign((2, 3), 1.0, -1, False, "max"), (X, ROIS)),
    (ct.RoIPool(3, 1.0), (X, BOXES)),
    (ct.PSRoIAlign(2, 1.0, 2), (SCORES, BOXES)),
    (ct.PSRoIPool(2, 1.0), (SCORES, BOXES)),
    (ct.PrRoIPool(3), (X, BOXES)),
    (ct.RoIAlignRotated(3, 1.0), (X, ROTATED)),
    (ct.DeformRoIPool(3), (X, BOXES)),
    (ct.DeformRoIPoolPack(3, 8, 16), (X, BOXES)),
    (ct.ModulatedDeformRoIPoolPack(3, 8, 16), (X, BOXES)),
    (ct.MultiScaleRoIAlign(["p2", "p3"], 3, 2), (LEVELS, IMAGE, [(64, 64), (60, 50)])),
]
IDS = [f"{type(m).__name__}{i}" for i, (m, _) in enumerate(MODULES)]


def _trained(module):
    """The module with non-zero heads, so that offsets and masks are not all zero."""
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.01)
    return module


@pytest.mark.parametrize(("module", "args"), MODULES, ids=IDS)
def test_module_scripts_and_saves(module, args):
    module = _trained(module)
    want = module(*args)
    scripted = torch.jit.script(module)
    torch.testing.assert_close(scripted(*args), want, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(*args), want, rtol=0, atol=0)


@pytest.mark.parametrize(("module", "args"), MODULES, ids=IDS)
def test_module_fx_traces_to_a_leaf(module, args):
    module = _trained(module)
    for name in ("offset", "mask", "scales"):
        if hasattr(module, name):
            setattr(module, name, None)
    graph = torch.fx.symbolic_trace(module)
    for name in ("offset", "mask", "scales"):  # a trace keeps no proxy on the module
        assert getattr(module, name, None) is None
    ops = {n.target.__name__ for n in graph.graph.nodes if n.op == "call_function"}
    assert ops & {"roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "prroi_pool",
                  "roi_align_rotated", "deform_roi_pool", "multi_scale_roi_align"}  # fmt: skip
    torch.testing.assert_close(graph(*args), module(*args), rtol=0, atol=0)


def test_module_attributes_set_in_script_as_in_eager():
    pack = _trained(ct.ModulatedDeformRoIPoolPack(3, 8, 16))
    scripted = torch.jit.script(pack)
    scripted(X, BOXES)
    pack(X, BOXES)
    torch.testing.assert_close(scripted.offset, pack.offset)
    torch.testing.assert_close(scripted.mask, pack.mask)
    pooler = ct.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    scripted = torch.jit.script(pooler)
    scripted(LEVELS, IMAGE, [(64, 64), (60, 50)])
    pooler(LEVELS, IMAGE, [(64, 64), (60, 50)])
    assert scripted.scales == pooler.scales == [0.25, 0.125]


FUNCTIONS = [
    (ct.roi_align, (X, BOXES, 3, 0.5, 2, True)),
    (ct.roi_align, (X, BOXES, [2, 3], 1.0, -1, False, "max")),
    (ct.roi_pool, (X, ROIS, [2, 2])),
    (ct.ps_roi_align, (SCORES, BOXES, 2, 1.0, 2)),
    (ct.ps_roi_pool, (SCORES, BOXES, 2)),
    (ct.prroi_pool, (X, BOXES, 3)),
    (ct.roi_align_rotated, (X, ROTATED, 3)),
    (
        ct.deform_roi_pool,
        (X, BOXES, torch.rand(3, 2, 3, 3), 3, 1.0, 2, 0.1, torch.rand(3, 1, 3, 3)),
    ),
    (ct.multi_scale_roi_align, ([LEVELS["p2"], LEVELS["p3"]], IMAGE, 3, [0.25, 0.125])),
]


@pytest.mark.parametrize(
    ("function", "args"), FUNCTIONS, ids=[f"{f.__name__}{i}" for i, (f, _) in enumerate(FUNCTIONS)]
)
def test_function_scripts(function, args):
    torch.testing.assert_close(torch.jit.script(function)(*args), function(*args), rtol=0, atol=0)


def test_scripted_bfloat16_as_eager():
    x = X.to(torch.bfloat16)
    scripted = torch.jit.script(ct.roi_align)
    got = scripted(x, BOXES, 3, 0.5, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ct.roi_align(x, BOXES, 3, 0.5, 2), rtol=0, atol=0)


def test_function_inside_a_scripted_module():
    class Head(torch.nn.Module):
        def forward(self, x, boxes: list[torch.Tensor]):
            return ct.roi_align(x, boxes, (3, 3), 0.5, 2, True).flatten(1)

    torch.testing.assert_close(torch.jit.script(Head())(X, BOXES), Head()(X, BOXES))


def test_eager_checks_unchanged_by_the_twins():
    # The eager function still checks its arguments in Python, before the op.
    with pytest.raises(ValueError, match="output_size"):
        ct.roi_align(X, BOXES, 0)
    with pytest.raises(ValueError, match="channels"):
        ct.DeformRoIPoolPack(3, 4, 16)(X, BOXES)
    with pytest.raises(torch.jit.Error, match="channels"):
        torch.jit.script(ct.DeformRoIPoolPack(3, 4, 16))(X, BOXES)


def _torchvision_ops():
    """torchvision.models.detection where its ops run (a CUDA build of torch), else a skip."""
    detection = pytest.importorskip("torchvision.models.detection")
    try:
        torch.ops.torchvision.nms  # noqa: B018 (loaded with torchvision's C++ ops only)
    except (AttributeError, RuntimeError):
        pytest.skip("torchvision's C++ ops are not loaded (they need torch's CUDA build)")
    return detection


def test_mask_rcnn_with_cuproi_poolers_scripts_equal_to_eager():
    """torchvision's Mask R-CNN with cuproi's poolers: scripted, it detects what eager does.

    Optional (torchvision's ops load with a CUDA build of torch only; see README's tools).
    """
    detection = _torchvision_ops()
    torch.manual_seed(0)
    model = detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=128
    )
    levels = ["0", "1", "2", "3"]
    model.roi_heads.box_roi_pool = ct.MultiScaleRoIAlign(levels, 7, 2)
    model.roi_heads.mask_roi_pool = ct.MultiScaleRoIAlign(levels, 14, 2)
    model.roi_heads.score_thresh = 0.0  # random weights: keep every detection
    model.eval()
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want = model(images)[0]
        _, got = torch.jit.script(model)(images)
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(got[0][key], want[key], rtol=0, atol=0)
