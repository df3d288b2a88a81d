"""cuproi against torchvision.ops on the same inputs (optional: skipped where torchvision's ops do
not load, e.g. with torch's CPU-only build; ../shared/tools/torchvision-env builds an
environment where they do)."""

import numpy as np
import pytest
from roi_op_tester import SHAPE, box_zoo, features

import cuproi

torch = pytest.importorskip("torch")
ops = pytest.importorskip("torchvision.ops")
try:
    ops.roi_align(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), 1)
except (RuntimeError, NotImplementedError) as error:  # pragma: no cover
    pytest.skip(f"torchvision ops unavailable: {error}", allow_module_level=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.7, 1 / 16])
@pytest.mark.parametrize("size", [(3, 4), (7, 7)])
def test_roi_align(dtype, aligned, ratio, scale, size):
    x, boxes = features(dtype), box_zoo(scale).astype(dtype)
    ours = cuproi.roi_align(x, boxes, size, scale, ratio, aligned)
    theirs = ops.roi_align(
        torch.from_numpy(x), torch.from_numpy(boxes), size, scale, ratio, aligned
    ).numpy()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)
    g = np.random.default_rng(0).standard_normal(ours.shape).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_()
    ops.roi_align(xt, torch.from_numpy(boxes), size, scale, ratio, aligned).backward(
        torch.from_numpy(g)
    )
    grad = cuproi.roi_align_backward(g, boxes, x.shape, size, scale, ratio, aligned)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.7, 1 / 16])
@pytest.mark.parametrize("size", [(3, 4), (7, 7), (1, 1)])
def test_roi_pool(dtype, scale, size):
    x, boxes = features(dtype), box_zoo(scale).astype(dtype)
    ours, argmax = cuproi.roi_pool(x, boxes, size, scale, return_argmax=True)
    xt = torch.from_numpy(x).requires_grad_()
    theirs = ops.roi_pool(xt, torch.from_numpy(boxes), size, scale)
    np.testing.assert_array_equal(ours, theirs.detach().numpy())
    g = np.random.default_rng(0).standard_normal(ours.shape).astype(dtype)
    theirs.backward(torch.from_numpy(g))
    grad = cuproi.roi_pool_backward(g, boxes, argmax, x.shape)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_cuproi_torch_is_a_drop_in(aligned, ratio):
    """cuproi.torch in place of torchvision.ops: same values and gradients through autograd,
    with torchvision's list-of-boxes convention."""
    import cuproi.torch

    x = torch.from_numpy(features(np.float64)).requires_grad_()
    zoo = torch.from_numpy(box_zoo(0.5))
    boxes = [zoo[zoo[:, 0] == i, 1:] for i in range(2)]
    results = []
    for fn in (ops.roi_align, cuproi.torch.roi_align):
        x.grad = None
        out = fn(x, boxes, (7, 5), 0.5, ratio, aligned)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
    x.grad = None
    pooled = [f(x, boxes, 3, 0.5) for f in (ops.roi_pool, cuproi.torch.roi_pool)]
    torch.testing.assert_close(pooled[0], pooled[1], rtol=0, atol=0)


def test_cuproi_torch_is_a_drop_in_under_bfloat16_autocast():
    """Under torch.autocast with bfloat16 (the CPU's default) torchvision's roi_align computes
    in float32 and returns bfloat16; so does cuproi.torch's. The values may differ by one
    bfloat16 rounding of float32 results that differ in the last bits (torch's default bfloat16
    tolerance). (torchvision's roi_pool and ps ops have no autocast path and fail there.)

    The convolution's weights are seeded: where an output differs by that one rounding, the
    weight gradient, which sums the outputs' squares, differs by more than float32's tolerance
    (for 4 of the seeds 0 to 59)."""
    import cuproi.torch

    x = torch.from_numpy(features(np.float32))
    zoo = torch.from_numpy(box_zoo(0.5).astype(np.float32))
    boxes = [zoo[zoo[:, 0] == i, 1:] for i in range(2)]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(x.shape[1], 4, 1)
    results = []
    for pool in (ops.roi_align, cuproi.torch.roi_align):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pool(conv(x), boxes, (7, 5), 0.5, 2, True)
        out.float().square().sum().backward()
        assert out.dtype == torch.bfloat16
        results.append((out, conv.weight.grad.clone()))
    torch.testing.assert_close(results[1], results[0])


def _regular(scale):
    """The box zoo without the boxes where cuproi deliberately differs from torchvision's
    position-sensitive ops: zero-size boxes (NaN there) and boxes reaching the last row or
    column (its ps_roi_pool forward never reads them)."""
    zoo = box_zoo(scale)
    cells = zoo[:, 1:] * scale
    keep = (cells[:, 2] > cells[:, 0] + 1) & (cells[:, 3] > cells[:, 1] + 1)
    keep &= (cells[:, 2] < SHAPE[3] - 2) & (cells[:, 3] < SHAPE[2] - 2)
    return zoo[keep]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_ps_roi_align_and_pool(dtype, ratio, scale):
    size = (2, 3)
    x = np.random.default_rng(0).standard_normal((2, 4 * 6, 10, 12)).astype(dtype)
    boxes = _regular(scale).astype(dtype)
    assert len(boxes) >= 3
    g = np.random.default_rng(1).standard_normal((len(boxes), 4, *size)).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for ours, theirs, backward in (
        (
            lambda: cuproi.ps_roi_align(x, boxes, size, scale, ratio),
            lambda xt: ops.ps_roi_align(xt, torch.from_numpy(boxes), size, scale, ratio),
            lambda: cuproi.ps_roi_align_backward(g, boxes, x.shape, size, scale, ratio),
        ),
        (
            lambda: cuproi.ps_roi_pool(x, boxes, size, scale),
            lambda xt: ops.ps_roi_pool(xt, torch.from_numpy(boxes), size, scale),
            lambda: cuproi.ps_roi_pool_backward(g, boxes, x.shape, size, scale),
        ),
    ):
        xt = torch.from_numpy(x).requires_grad_()
        out = theirs(xt)
        np.testing.assert_allclose(ours(), out.detach().numpy(), rtol=tol, atol=tol)
        out.backward(torch.from_numpy(g))
        np.testing.assert_allclose(backward(), xt.grad.numpy(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("ratio", [-1, 2])
def test_multi_scale_roi_align(ratio):
    """The levels torchvision's MultiScaleRoIAlign picks, and its values, on P2 to P5."""
    rng = np.random.default_rng(0)
    levels = {
        f"p{i}": torch.from_numpy(rng.standard_normal((2, 3, 256 >> i, 384 >> i)))
        for i in range(2, 6)
    }
    extent = rng.uniform(8, 400, (200, 2))
    corner = rng.uniform(0, [384, 256], (200, 2))
    boxes = np.column_stack([rng.integers(0, 2, 200), corner, corner + extent])
    per_image = [torch.from_numpy(boxes[boxes[:, 0] == i, 1:]) for i in range(2)]
    pooler = ops.MultiScaleRoIAlign(list(levels), (7, 7), ratio)
    theirs = pooler(levels, per_image, [(256, 384)] * 2).numpy()
    # torchvision returns the boxes grouped by image: put cuproi's in the same order.
    order = np.concatenate([np.flatnonzero(boxes[:, 0] == i) for i in range(2)])
    ours = cuproi.multi_scale_roi_align(
        [t.numpy() for t in levels.values()], boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], ratio
    )
    np.testing.assert_allclose(ours[order], theirs, rtol=1e-12, atol=1e-12)


def _random_problem(rng):
    """Features of a random small size, some boxes (flipped, points, partly or wholly off the
    map, half-pixel corners), an output size, a scale and a dtype."""
    dtype = (np.float32, np.float64)[rng.integers(2)]
    n, h, w = rng.integers(1, 3), rng.integers(1, 12), rng.integers(1, 12)
    scale = float(rng.choice([1.0, 0.5, 0.25, 0.7, 2.0]))
    k = int(rng.integers(0, 6))
    corners = rng.uniform(-4, max(h, w) / scale + 4, (k, 4))
    if rng.random() < 0.5:
        corners[:, 2:] = np.maximum(corners[:, 2:], corners[:, :2])
    if rng.random() < 0.3:
        corners = np.round(corners * 2) / 2
    boxes = np.column_stack([rng.integers(0, n, k), corners]).astype(dtype)
    size = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    return (int(n), int(h), int(w)), boxes, size, scale, dtype


def _negative_grid(boxes, size, scale):
    """Boxes whose adaptive sample grid (``ceil(box_h / PH) x ceil(box_w / PW)``, aligned) has
    one side negative and the other positive: torchvision's CPU roi_align sizes a vector by
    that negative count and raises, where its CUDA kernel and cuproi give zeros."""
    w, h = (boxes[:, 3] - boxes[:, 1]) * scale, (boxes[:, 4] - boxes[:, 2]) * scale
    return np.ceil(h / size[0]) * np.ceil(w / size[1]) < 0


@pytest.mark.parametrize("seed", range(8))
def test_random_problems(seed):
    """RoI Align, RoI Pool and PS RoI Align, forward and backward, on 40 random problems each:
    map sizes down to 1 x 1, boxes of every kind, scales above and below 1."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        (n, h, w), boxes, size, scale, dtype = _random_problem(rng)
        c = int(rng.integers(1, 4))
        x = rng.standard_normal((n, c * size[0] * size[1], h, w)).astype(dtype)
        g = rng.standard_normal((len(boxes), c * size[0] * size[1], *size)).astype(dtype)
        ratio, aligned = int(rng.integers(-1, 4)), bool(rng.integers(2))
        tol = 1e-5 if dtype == np.float32 else 1e-12
        b = torch.from_numpy(boxes)
        xt = torch.from_numpy(x).requires_grad_()
        ours = cuproi.roi_align(x, boxes, size, scale, ratio, aligned)
        negative = _negative_grid(boxes, size, scale)
        if aligned and ratio <= 0 and negative.any():
            with pytest.raises(ValueError, match="vector"):
                ops.roi_align(xt, b, size, scale, ratio, aligned)
            assert not ours[negative].any()
            continue
        out = ops.roi_align(xt, b, size, scale, ratio, aligned)
        np.testing.assert_allclose(ours, out.detach().numpy(), rtol=tol, atol=tol)
        out.backward(torch.from_numpy(g))
        grad = cuproi.roi_align_backward(g, boxes, x.shape, size, scale, ratio, aligned)
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=10 * tol, atol=10 * tol)

        xt.grad = None
        out = ops.roi_pool(xt, b, size, scale)
        ours, argmax = cuproi.roi_pool(x, boxes, size, scale, return_argmax=True)
        np.testing.assert_array_equal(ours, out.detach().numpy())
        out.backward(torch.from_numpy(g))
        grad = cuproi.roi_pool_backward(g, boxes, argmax, x.shape)
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=10 * tol, atol=10 * tol)

        xt.grad = None
        out = ops.ps_roi_align(xt, b, size, scale, ratio)
        theirs = out.detach().numpy().copy()
        if ratio <= 0:  # a zero-size or flipped box: torchvision's 0 / 0, cuproi's 0 (documented)
            empty = (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2])
            theirs[empty] = np.nan_to_num(theirs[empty], nan=0.0)
        ours = cuproi.ps_roi_align(x, boxes, size, scale, ratio)
        np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)
        gs = g[:, :c]
        out.backward(torch.from_numpy(gs))
        grad = cuproi.ps_roi_align_backward(gs, boxes, x.shape, size, scale, ratio)
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("seed", range(2))
def test_multi_scale_module_on_random_problems(seed):
    """cuproi.torch.MultiScaleRoIAlign in place of torchvision's on 40 random pyramids each: 1
    to 4 consecutive levels of images padded to a multiple of 64, images of several sizes (the
    largest sets the scales, by rounding its ratio to each level's height), other maps in the
    dict, boxes of every size, partly off the image."""
    import cuproi.torch

    rng = np.random.default_rng(seed)

    def maps(n, height, width):
        return torch.from_numpy(rng.standard_normal((n, 2, height, width)))

    for _ in range(40):
        image = tuple(int(v) for v in rng.integers(40, 400, 2))  # the largest image
        height, width = (-(-v // 64) * 64 for v in image)  # padded: its levels halve exactly
        first = int(rng.integers(2, 6))
        names = [f"p{i}" for i in range(first, min(first + int(rng.integers(1, 5)), 7))]
        n = int(rng.integers(1, 3))
        x = {name: maps(n, height >> int(name[1]), width >> int(name[1])) for name in names}
        x["other"] = maps(n, 5, 5)
        sizes = [image] + [tuple(int(v) for v in rng.integers(33, image)) for _ in range(n - 1)]
        boxes = []
        for _ in range(n):
            corner = rng.uniform(-10, [width, height], (int(rng.integers(0, 6)), 2))
            extent = rng.uniform(0, 500, corner.shape)
            boxes.append(torch.from_numpy(np.hstack([corner, corner + extent])))
        size, ratio = int(rng.integers(1, 8)), int(rng.integers(-1, 3))
        theirs = ops.MultiScaleRoIAlign(names, size, ratio)(x, boxes, sizes)
        ours = cuproi.torch.MultiScaleRoIAlign(names, size, ratio)(x, boxes, sizes)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name",
    ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"]
    + ["RoIAlign", "RoIPool", "PSRoIAlign", "PSRoIPool", "MultiScaleRoIAlign"],
)
def test_cuproi_torch_takes_torchvision_signatures(name):
    """Every parameter of torchvision's function or module (and its forward) is cuproi.torch's,
    in the same place, with the same default: calls by position or keyword carry over."""
    import inspect

    import cuproi.torch

    theirs, ours = getattr(ops, name), getattr(cuproi.torch, name)
    pairs = [(theirs, ours)]
    if isinstance(theirs, type):
        pairs = [(theirs.__init__, ours.__init__), (theirs.forward, ours.forward)]
    for a, b in pairs:
        expected = [(p.name, p.default) for p in inspect.signature(a).parameters.values()]
        given = [(p.name, p.default) for p in inspect.signature(b).parameters.values()]
        assert given[: len(expected)] == expected


def test_mask_rcnn_detects_and_trains_alike_with_cuproi_poolers():
    """torchvision's Mask R-CNN (random weights, seeded) with cuproi.torch's MultiScaleRoIAlign
    as its box and mask poolers: the same detections to float32 rounding, the same losses."""
    import copy

    from torchvision.models import detection

    import cuproi.torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=3, min_size=200, max_size=333
        )
    theirs.roi_heads.score_thresh = 0.0  # random weights: keep every detection
    ours = copy.deepcopy(theirs)
    ours.roi_heads.box_roi_pool = cuproi.torch.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ours.roi_heads.mask_roi_pool = cuproi.torch.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 220, 300, generator=g), torch.rand(3, 180, 333, generator=g)]
    with torch.no_grad():
        found = [model.eval()(images) for model in (theirs, ours)]
    for want, got in zip(*found, strict=True):
        assert len(want["boxes"]) > 0
        torch.testing.assert_close(got["labels"], want["labels"], rtol=0, atol=0)
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-3)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 40.0, 200.0, 150.0]]), "labels": torch.tensor([2])},
    ]
    for target, image in zip(targets, images, strict=True):
        target["masks"] = torch.zeros(1, *image.shape[1:], dtype=torch.uint8)
        target["masks"][0, 30:100, 20:90] = 1
    losses = []
    for model in (theirs, ours):
        with torch.random.fork_rng():
            torch.manual_seed(5)  # the sampling of proposals
            losses.append(model.train()(images, targets))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
