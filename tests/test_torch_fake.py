"""cuproi.torch's fake (meta) kernels, op by op, forward and backward: they refuse what the ops
refuse, with the same exception and message, and give the shapes and dtypes of the ops'
outputs. torch.export checks dynamic sizes at their example values without guards; the array
functions name a meta or fake tensor given to them (they need data) instead of failing inside
DLPack. (Each function of cuproi.torch under torch.export, torch.compile and on meta tensors:
tests/torch_op_tester.py.)"""

import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._pytree import tree_map_only  # noqa: E402
from torch_op_tester import Call, assert_same, cause, export, never_run, raised  # noqa: E402

import cuproi  # noqa: E402

OPS = torch.ops.cuproi

X = torch.rand(2, 8, 8, 8)  # 8 channels: 2 x 2 groups of position-sensitive maps
BOXES = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [1, 0.0, 2.0, 4.0, 7.0]])
ROTATED = torch.tensor([[0, 4.0, 4.0, 3.0, 2.0, 30.0], [1, 3.0, 5.0, 4.0, 2.0, -10.0]])
OFFSET = torch.zeros(2, 2, 2, 2)
MASK = torch.ones(2, 1, 2, 2)
G = torch.ones(2, 8, 2, 2)  # a gradient of an output of 2 x 2 bins
SHAPE = list(X.shape)
LEVELS = [1.0, 0.5, 0.25]
FPN = (224.0, 4)  # canonical_scale, canonical_level
BIG = 2**14  # a side of bins: three boxes of BIG**2 bins hold over 2**32 elements
F = False  # the flags that end most calls: aligned or clockwise, deterministic


class _Pool(torch.nn.Module):  # named arguments: torch.export's dynamic_shapes name them
    def forward(self, x, boxes):
        return ct.roi_align(x, boxes, 2, sampling_ratio=2)


def test_dynamic_shapes_are_checked_at_their_example_sizes_without_guards():
    pool = _Pool()
    # Refused, as in eager mode, with the example sizes in the message.
    dims = ({2: torch.export.Dim("h")}, {0: torch.export.Dim("k")})
    expected = raised(pool, X, BOXES[:, 1:])
    assert_same(raised(export, pool, (X, BOXES[:, 1:]), dynamic_shapes=dims), expected)
    x, boxes = X.long(), BOXES.clone()
    torch._dynamo.mark_dynamic(x, 2)
    torch._dynamo.mark_dynamic(boxes, 0)
    compiled = torch.compile(pool, backend=never_run, fullgraph=True)
    assert_same(cause(raised(compiled, x, boxes)), raised(pool, x, boxes))
    # Accepted: no guard narrows the sizes, so the program runs for others.
    program = torch.export.export(pool, (X, BOXES), dynamic_shapes=dims).module()
    x, boxes = torch.rand(2, 8, 13, 8), BOXES[:1]
    torch.testing.assert_close(program(x, boxes), pool(x, boxes))


def test_a_data_dependent_box_count_is_not_refused():
    def pool(x, boxes):
        kept = boxes[boxes[:, 3] > boxes[:, 1]]  # as many rows as the values say
        return ct.deform_roi_pool(x, kept, kept.new_zeros(kept.shape[0], 2, 2, 2), 2)

    program = torch.export.export(Call(pool), (X, BOXES)).module()
    torch.testing.assert_close(program(X, BOXES), pool(X, BOXES))
    assert_same(raised(export, Call(pool), (X[0], BOXES)), raised(pool, X[0], BOXES))


def fake_call(op, args):
    """``op`` called under FakeTensorMode on fakes of ``args``."""
    with FakeTensorMode() as mode:
        return op(*tree_map_only(torch.Tensor, mode.from_tensor, args))


# Calls each op refuses, by op: (id, arguments); its fake kernel must raise the same.
BAD_OPS = {
    "roi_align": [
        ("3-D input", (X[0], BOXES, 2, 2, 1.0, -1, F)),
        ("bfloat16 input", (X.bfloat16(), BOXES, 2, 2, 1.0, -1, F)),
        ("zero output size", (X, BOXES, 0, 2, 1.0, -1, F)),
        ("negative scale", (X, BOXES, 2, 2, -1.0, -1, F)),
        ("sampling ratio 2000", (X, BOXES, 2, 2, 1.0, 2000, F)),
        ("unknown pool_mode", (X, BOXES, 2, 2, 1.0, -1, F, "mean")),
        ("output of over 2**32 elements", (X, BOXES[[0, 1, 1]], BIG, BIG, 1.0, -1, F)),
    ],
    "roi_align_rotated": [
        ("output of over 2**32", (X, ROTATED[[0, 1, 1]], BIG, BIG, 1.0, 0, True, F)),
        ("axis-aligned boxes", (X, BOXES, 2, 2, 1.0, 0, True, F)),
    ],
    "roi_align_backward": [
        ("gradient for 3 boxes", (G.repeat(2, 1, 1, 1)[:3], BOXES, SHAPE, 1.0, -1, F, F)),
        ("gradient of 4 channels", (G[:, :4], BOXES, SHAPE, 1.0, -1, F, F)),
        ("3-D gradient", (G[0], BOXES, SHAPE, 1.0, -1, F, F)),
        ("int64 gradient", (G.long(), BOXES, SHAPE, 1.0, -1, F, F)),
        ("input_shape of 3", (G, BOXES, SHAPE[1:], 1.0, -1, F, F)),
        ("boxes without batch", (G, BOXES[:, 1:], SHAPE, 1.0, -1, F, F)),
    ],
    "roi_align_max_backward": [
        ("3-D input", (G, X[0], BOXES, 1.0, -1, F, F)),
        ("int64 input", (G, X.long(), BOXES, 1.0, -1, F, F)),
        ("gradient for 1 box", (G[:1], X, BOXES, 1.0, -1, F, F)),
    ],
    "roi_align_box_backward": [
        ("unknown pool_mode", (G, X, BOXES, 1.0, -1, F, "mean", F)),
        ("3-D input", (G, X[0], BOXES, 1.0, -1, F, "avg", F)),
        ("gradient for 1 box", (G[:1], X, BOXES, 1.0, -1, F, "max", F)),
        ("bool boxes", (G, X, BOXES > 1, 1.0, -1, F, "avg", F)),
    ],
    "roi_pool": [("boxes without batch", (X, BOXES[:, 1:], 2, 2, 1.0))],
    "roi_pool_inference": [("int64 input", (X.long(), BOXES, 2, 2, 1.0))],
    "roi_pool_backward": [
        ("float argmax", (G, BOXES, G, SHAPE, F)),
        ("argmax of 1 box", (G, BOXES, G[:1].int(), SHAPE, F)),
        ("gradient for 1 box", (G[:1], BOXES, G[:1].int(), SHAPE, F)),
        ("3-D gradient", (G[0], BOXES, G[0].int(), SHAPE, F)),
    ],
    "deform_roi_pool": [
        ("offset for 1 box", (X, BOXES, OFFSET[:1], 2, 2, 1.0, 0, 0.1)),
        ("nan gamma", (X, BOXES, OFFSET, 2, 2, 1.0, 0, float("nan"))),
        ("int64 mask", (X, BOXES, None, 2, 2, 1.0, 0, 0.1, MASK.long())),
    ],
    "deform_roi_pool_backward": [
        ("gradient for 1 box", (G[:1], X, BOXES, OFFSET, 1.0, 0, 0.1, F, MASK)),
        ("offset of 3 bins", (G, X, BOXES, OFFSET[..., :1], 1.0, 0, 0.1, F)),
        ("mask for 1 box", (G, X, BOXES, None, 1.0, 0, 0.1, F, MASK[:1])),
    ],
    "deform_roi_pool_box_backward": [
        ("int64 offset", (G, X, BOXES, OFFSET.long(), None, 1.0, 0, 0.1, F)),
        ("3-D input", (G, X[0], BOXES, None, None, 1.0, 0, 0.1, F)),
    ],
    "prroi_pool": [("boxes of 6 columns", (X, ROTATED, 2, 2, 1.0))],
    "prroi_pool_backward": [("gradient of 4 channels", (G[:, :4], BOXES, SHAPE, 1.0, F))],
    "prroi_pool_box_backward": [("gradient for 1 box", (G[:1], X, BOXES, 1.0, F))],
    "ps_roi_align": [("6 channels", (X[:, :6], BOXES, 2, 2, 1.0, -1))],
    "ps_roi_align_backward": [
        ("input_shape of 6 channels", (G[:, :2], BOXES, [2, 6, 8, 8], 1.0, -1, F)),
        ("gradient of 8 channels", (G, BOXES, SHAPE, 1.0, -1, F)),
    ],
    "ps_roi_pool": [("6 channels", (X[:, :6], BOXES, 2, 2, 1.0))],
    "ps_roi_pool_backward": [("gradient for 1 box", (G[:1, :2], BOXES, SHAPE, 1.0, F))],
    "roi_align_rotated_backward": [
        ("axis-aligned boxes", (G, BOXES, SHAPE, 1.0, 0, True, F, F)),
        ("gradient for 1 box", (G[:1], ROTATED, SHAPE, 1.0, 0, True, F, F)),
    ],
    "multi_scale_roi_align": [
        ("3-D level", ([X, X[0]], BOXES, 2, 2, LEVELS[:2], -1, F, *FPN)),
        ("output of over 2**32 elements", ([X], BOXES[[0, 1, 1]], BIG, BIG, [1.0], -1, F, *FPN)),
        ("scales that grow", ([X, X], BOXES, 2, 2, [0.5, 1.0], -1, F, *FPN)),
    ],
    "multi_scale_roi_align_backward": [
        ("over 2**32 elements", (G, BOXES, [2, 1, 2 * BIG, 2 * BIG] * 3, LEVELS, -1, F, *FPN, F)),
        ("levels of two batches", (G, BOXES, SHAPE + [1, 8, 4, 4], LEVELS[:2], -1, F, *FPN, F)),
        ("7 sizes", (G, BOXES, SHAPE + [2, 8, 4], LEVELS[:2], -1, F, *FPN, F)),
        ("gradient for 1 box", (G[:1], BOXES, SHAPE, [1.0], -1, F, *FPN, F)),
    ],
}


@pytest.mark.parametrize(
    ("op", "args"),
    [pytest.param(op, a, id=f"{op}: {name}") for op, rows in BAD_OPS.items() for name, a in rows],
)
def test_fake_kernels_raise_what_the_ops_raise(op, args):
    op = getattr(OPS, op)
    # The fake kernel first: where it lets a too large output through, the op is not run.
    assert_same(raised(fake_call, op, args), raised(op, *args))


# (op, arguments) the ops accept, with features, offset and mask of different dtypes.
GOOD_OPS = [
    ("roi_align", (X, BOXES.double(), 2, 3, 1.0, -1, F, "max")),
    ("roi_align_backward", (G, BOXES, SHAPE, 1.0, -1, F, F)),
    ("roi_align_max_backward", (G.double(), X, BOXES, 1.0, -1, F, F)),
    ("roi_align_box_backward", (G, X, BOXES.double(), 1.0, -1, F, "avg", F)),
    ("roi_pool", (X, BOXES, 2, 2, 1.0)),
    ("roi_pool_backward", (G, BOXES, G.int(), SHAPE, F)),
    ("deform_roi_pool", (X, BOXES, OFFSET.double(), 2, 2, 1.0, 0, 0.1, MASK.half())),
    ("deform_roi_pool_backward", (G, X, BOXES, OFFSET.double(), 1.0, 0, 0.1, F, MASK.half())),
    ("deform_roi_pool_box_backward", (G, X, BOXES, OFFSET, MASK, 1.0, 0, 0.1, F)),
    ("prroi_pool_box_backward", (G, X, BOXES, 1.0, F)),
    ("ps_roi_pool_backward", (G[:, :2], BOXES, SHAPE, 1.0, F)),
    ("roi_align_rotated_backward", (G, ROTATED, SHAPE, 1.0, 0, True, F, F)),
    ("multi_scale_roi_align", ([X, X[..., :4, :4]], BOXES, 2, 2, LEVELS[:2], -1, F, *FPN)),
    ("multi_scale_roi_align_backward", (G, BOXES, SHAPE * 2, LEVELS[:2], -1, F, *FPN, F)),
]


def test_fake_kernels_give_the_shapes_and_dtypes_of_the_ops():
    # deform_roi_pool_backward's offset and mask gradients have their tensors' dtypes.
    for op, args in GOOD_OPS:
        real, fake = getattr(OPS, op)(*args), fake_call(getattr(OPS, op), args)
        real, fake = tree_map_only(torch.Tensor, lambda t: (t.shape, t.dtype), (real, fake))
        assert fake == real, op


def test_the_multi_scale_op_names_an_empty_pyramid():
    args = ([], BOXES, 2, 2, [], -1, False, *FPN)  # was IndexError, from features[0]
    for call in (OPS.multi_scale_roi_align, lambda *a: fake_call(OPS.multi_scale_roi_align, a)):
        with pytest.raises(ValueError, match=r"^features must hold 1 to \d+ levels; got 0$"):
            call(*args)


def test_fake_kernels_refuse_tensors_on_two_devices():
    with FakeTensorMode():
        x, boxes = torch.empty(2, 8, 8, 8, device="cuda"), torch.empty(2, 5)
        with pytest.raises(ValueError) as error:
            OPS.roi_align(x, boxes, 2, 2, 1.0, -1, False)
        with pytest.raises(ValueError, match=r"got grad_output on cpu, offset on cuda:0\. "):
            OPS.deform_roi_pool_backward(
                torch.empty(2, 8, 2, 2),
                x.cpu(),
                boxes,
                torch.empty(2, 2, 2, 2, device="cuda"),
                1.0,
                0,
                0.1,
                False,
            )
    assert str(error.value) == (
        "all arrays must be on one device; got input on cuda:0, boxes on cpu. "
        "Move them to the same device first."
    )


# ---- the array functions on tensors without data ---------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: cuproi.roi_align(X.to("meta"), BOXES, 2), "input"),
        (lambda: cuproi.roi_align(X, BOXES.to("meta"), 2), "boxes"),
        (lambda: cuproi.roi_align(X, [BOXES[:1, 1:], BOXES[1:, 1:].to("meta")], 2), r"boxes\[1\]"),
        (lambda: cuproi.roi_align_backward(G.to("meta"), BOXES, SHAPE, 2), "grad_output"),
        (lambda: cuproi.multi_scale_roi_align([X.to("meta")], BOXES, 2, [1.0]), r"features\[0\]"),
        (lambda: cuproi.roi_pool(X.numpy(), BOXES.to("meta"), 2), "boxes"),
    ],
)
def test_the_array_functions_name_a_meta_tensor(call, name):
    with pytest.raises(TypeError, match=rf"^{name} is a torch tensor on the 'meta' device, which "):
        call()


def test_the_array_functions_name_a_fake_tensor():
    boxes = BOXES.numpy()
    with FakeTensorMode(), pytest.raises(TypeError, match=r"^input is a torch fake tensor \("):
        cuproi.roi_align(torch.empty(2, 8, 8, 8), boxes, 2)
