"""cuproi.torch's fake (meta) kernels refuse what its ops refuse, with the same exception and
message: under torch.export (non-strict, its default) as it is; under torch.compile at trace
time, before any graph is built, as the cause of the TorchRuntimeError with which Dynamo reports
every exception of a fake kernel; under FakeTensorMode and on the meta device. Their outputs
have the shapes and dtypes of the op's. The array functions name a meta or fake tensor given
to them (they need data) instead of failing inside DLPack."""

import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._pytree import tree_map_only  # noqa: E402

import cuproi  # noqa: E402

OPS = torch.ops.cuproi

X = torch.rand(2, 8, 8, 8)  # 8 channels: 2 x 2 groups of position-sensitive maps
BOXES = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [1, 0.0, 2.0, 4.0, 7.0]])
ROTATED = torch.tensor([[0, 4.0, 4.0, 3.0, 2.0, 30.0], [1, 3.0, 5.0, 4.0, 2.0, -10.0]])
OFFSET = torch.zeros(2, 2, 2, 2)
MASK = torch.ones(2, 1, 2, 2)
G = torch.ones(2, 8, 2, 2)  # a gradient of an output of 2 x 2 bins
SHAPE = list(X.shape)


def raised(call, *args, **kw):
    """The exception ``call(*args, **kw)`` raises."""
    with pytest.raises(Exception) as info:
        call(*args, **kw)
    return info.value


def assert_same(error, expected):
    assert type(error) is type(expected), (error, expected)
    assert str(error) == str(expected)


def cause(error):
    """The exception at the root of the chain ``error`` ends (its causes, or its contexts)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


# ---- the functions of cuproi.torch: eager, torch.export, torch.compile, meta -----------------

# Each function with its tensors as positional arguments (the inputs of a traced graph) and
# its other arguments as keywords.
FUNCTIONS = {
    "roi_align": lambda x, b, size=2, **kw: ct.roi_align(x, b, size, **kw),
    "roi_pool": lambda x, b, size=2, **kw: ct.roi_pool(x, b, size, **kw),
    "deform_roi_pool": lambda x, b, offset=None, mask=None, size=2, **kw: ct.deform_roi_pool(
        x, b, offset, size, mask=mask, **kw
    ),
    "ps_roi_align": lambda x, b, size=2, **kw: ct.ps_roi_align(x, b, size, **kw),
    "ps_roi_pool": lambda x, b, size=2, **kw: ct.ps_roi_pool(x, b, size, **kw),
    "prroi_pool": lambda x, b, size=2, **kw: ct.prroi_pool(x, b, size, **kw),
    "roi_align_rotated": lambda x, b, size=2, **kw: ct.roi_align_rotated(x, b, size, **kw),
    "multi_scale_roi_align": lambda levels, b, size=2, scales=(1.0,), **kw: (
        ct.multi_scale_roi_align(levels, b, size, list(scales), **kw)
    ),
}


def arguments(op, x=X, boxes=None):
    """The tensors of a call of ``op`` on features ``x`` (one level for multi-scale)."""
    if boxes is None:
        boxes = ROTATED if op == "roi_align_rotated" else BOXES
    return ([x] if op == "multi_scale_roi_align" else x, boxes)


def _without_batch(op):
    return (ROTATED if op == "roi_align_rotated" else BOXES)[:, 1:]


# Bad inputs every function refuses: (id, tensors of the call from the op's name, keywords).
COMMON = [
    ("boxes without batch column", lambda op: arguments(op, boxes=_without_batch(op)), {}),
    ("3-D input", lambda op: arguments(op, X[0]), {}),
    ("int64 input", lambda op: arguments(op, X.long()), {}),
    ("bool boxes", lambda op: arguments(op, boxes=arguments(op)[1] > 2), {}),
    ("no rows in the plane", lambda op: arguments(op, X[:, :, :0]), {}),
]
TWO = {"scales": (1.0, 0.5)}  # the scales of two levels
SPECIFIC = [
    ("roi_align", "max mode, 3-D input", lambda: (X[0], BOXES), {"pool_mode": "max"}),
    ("roi_align", "unknown pool_mode", lambda: (X, BOXES), {"pool_mode": "mean"}),
    ("roi_align", "boxes with a gradient", lambda: (X.long(), BOXES.clone().requires_grad_()), {}),
    ("roi_align", "scale below float32", lambda: (X, BOXES), {"spatial_scale": 1e-300}),
    ("roi_pool", "input with a gradient", lambda: (X.clone().requires_grad_(), BOXES[:, 1:]), {}),
    ("deform_roi_pool", "offset of 3 x 3 bins", lambda: (X, BOXES, torch.zeros(2, 2, 3, 3)), {}),
    ("deform_roi_pool", "offset for 1 box", lambda: (X, BOXES, OFFSET[:1]), {}),
    ("deform_roi_pool", "int64 offset", lambda: (X, BOXES, OFFSET.long()), {}),
    ("deform_roi_pool", "3-D mask", lambda: (X, BOXES, OFFSET, MASK[0]), {}),
    ("deform_roi_pool", "int64 mask", lambda: (X, BOXES, OFFSET, MASK.long()), {}),
    ("deform_roi_pool", "mask of 2 maps", lambda: (X, BOXES, None, MASK.expand(2, 2, 2, 2)), {}),
    ("multi_scale_roi_align", "levels of two dtypes", lambda: ([X, X.double()], BOXES), TWO),
    ("multi_scale_roi_align", "levels of two widths", lambda: ([X, X[:, :4]], BOXES), TWO),
    (
        "multi_scale_roi_align",
        "scales that do not halve",
        lambda: ([X, X], BOXES),
        {"scales": (1.0, 1.0)},
    ),
    ("prroi_pool", "scale below float32", lambda: (X, BOXES), {"spatial_scale": 1e-300}),
]
CASES = [
    pytest.param(op, make, kw, id=f"{op}: {name}")
    for op in FUNCTIONS
    for name, make, kw in COMMON
    if not (op == "roi_align_rotated" and name == "bool boxes")  # the same as roi_align's
] + [
    pytest.param(op, lambda op, make=make: make(), kw, id=f"{op}: {name}")
    for op, name, make, kw in SPECIFIC
]


def case(op, make, kw):
    """The function, its tensors and the exception eager mode raises for them."""
    args = make(op)
    function = FUNCTIONS[op]
    return function, args, kw, raised(function, *args, **kw)


class _Call(torch.nn.Module):
    def __init__(self, function, kw):
        super().__init__()
        self.function, self.kw = function, kw

    def forward(self, *args):
        return self.function(*args, **self.kw)


@pytest.mark.parametrize(("op", "make", "kw"), CASES)
def test_export_raises_what_eager_raises(op, make, kw):
    function, args, kw, expected = case(op, make, kw)
    assert_same(raised(torch.export.export, _Call(function, kw), tuple(args)), expected)


def _never_run(graph, example_inputs):
    """A torch.compile backend for calls that must fail while they are traced."""

    def run(*args):
        raise AssertionError("a graph was compiled: its fake kernels accepted the call")

    return run


@pytest.mark.parametrize(("op", "make", "kw"), CASES)
def test_compile_fails_at_trace_time_with_what_eager_raises(op, make, kw):
    function, args, kw, expected = case(op, make, kw)
    torch._dynamo.reset()  # each case compiles the same lambda: no cache, no recompile limit
    compiled = torch.compile(
        lambda *a: function(*a, **kw), backend=_never_run, fullgraph=True, dynamic=False
    )
    error = raised(compiled, *args)
    assert_same(cause(error), expected)
    assert repr(expected) in str(error)  # Dynamo's message quotes it


def _meta(value):
    return tree_map_only(torch.Tensor, lambda t: t.detach().to("meta"), value)


@pytest.mark.parametrize(("op", "make", "kw"), CASES)
def test_meta_tensors_raise_what_eager_raises(op, make, kw):
    function, args, kw, expected = case(op, make, kw)
    assert_same(raised(function, *_meta(args), **kw), expected)


class _Pool(torch.nn.Module):
    def forward(self, x, boxes):
        return ct.roi_align(x, boxes, 2, sampling_ratio=2)


def test_dynamic_shapes_are_checked_at_their_example_sizes_without_guards():
    pool = _Pool()
    # Refused, as in eager mode, with the example sizes in the message.
    dims = ({2: torch.export.Dim("h")}, {0: torch.export.Dim("k")})
    expected = raised(pool, X, BOXES[:, 1:])
    assert_same(raised(torch.export.export, pool, (X, BOXES[:, 1:]), dynamic_shapes=dims), expected)
    x, boxes = X.long(), BOXES.clone()
    torch._dynamo.mark_dynamic(x, 2)
    torch._dynamo.mark_dynamic(boxes, 0)
    compiled = torch.compile(pool, backend=_never_run, fullgraph=True)
    assert_same(cause(raised(compiled, x, boxes)), raised(pool, x, boxes))
    # Accepted: no guard narrows the sizes, so the program runs for others.
    program = torch.export.export(pool, (X, BOXES), dynamic_shapes=dims).module()
    x, boxes = torch.rand(2, 8, 13, 8), BOXES[:1]
    torch.testing.assert_close(program(x, boxes), pool(x, boxes))


def test_a_data_dependent_box_count_is_not_refused():
    def pool(x, boxes):
        kept = boxes[boxes[:, 3] > boxes[:, 1]]  # as many rows as the values say
        return ct.deform_roi_pool(x, kept, kept.new_zeros(kept.shape[0], 2, 2, 2), 2)

    program = torch.export.export(_Call(pool, {}), (X, BOXES)).module()
    torch.testing.assert_close(program(X, BOXES), pool(X, BOXES))
    assert_same(
        raised(torch.export.export, _Call(pool, {}), (X[0], BOXES)), raised(pool, X[0], BOXES)
    )


# ---- the ops, forward and backward, on fake tensors ------------------------------------------


def fake_call(op, args):
    """``op`` called under FakeTensorMode on fakes of ``args``."""
    with FakeTensorMode() as mode:
        return op(*tree_map_only(torch.Tensor, mode.from_tensor, args))


# (op, id, arguments): each is refused by the op; its fake kernel must raise the same.
BAD_OPS = [
    ("roi_align", "3-D input", (X[0], BOXES, 2, 2, 1.0, -1, False)),
    ("roi_align", "bfloat16 input", (X.bfloat16(), BOXES, 2, 2, 1.0, -1, False)),
    ("roi_align", "zero output size", (X, BOXES, 0, 2, 1.0, -1, False)),
    ("roi_align", "negative scale", (X, BOXES, 2, 2, -1.0, -1, False)),
    ("roi_align", "sampling ratio 2000", (X, BOXES, 2, 2, 1.0, 2000, False)),
    ("roi_align", "unknown pool_mode", (X, BOXES, 2, 2, 1.0, -1, False, "mean")),
    (
        "roi_align",
        "output of over 2**32 elements",
        (X, BOXES[[0, 1, 1]], 2**14, 2**14, 1.0, -1, False),
    ),
    (
        "roi_align_rotated",
        "output of over 2**32",
        (X, ROTATED[[0, 1, 1]], 2**14, 2**14, 1.0, 0, True, False),
    ),
    (
        "roi_align_backward",
        "gradient for 3 boxes",
        (G.repeat(2, 1, 1, 1)[:3], BOXES, SHAPE, 1.0, -1, False, False),
    ),
    (
        "roi_align_backward",
        "gradient of 4 channels",
        (G[:, :4], BOXES, SHAPE, 1.0, -1, False, False),
    ),
    ("roi_align_backward", "3-D gradient", (G[0], BOXES, SHAPE, 1.0, -1, False, False)),
    ("roi_align_backward", "int64 gradient", (G.long(), BOXES, SHAPE, 1.0, -1, False, False)),
    ("roi_align_backward", "input_shape of 3", (G, BOXES, SHAPE[1:], 1.0, -1, False, False)),
    (
        "roi_align_backward",
        "boxes without batch",
        (G, BOXES[:, 1:], SHAPE, 1.0, -1, False, False),
    ),
    ("roi_align_max_backward", "3-D input", (G, X[0], BOXES, 1.0, -1, False, False)),
    ("roi_align_max_backward", "int64 input", (G, X.long(), BOXES, 1.0, -1, False, False)),
    ("roi_align_max_backward", "gradient for 1 box", (G[:1], X, BOXES, 1.0, -1, False, False)),
    ("roi_align_box_backward", "unknown pool_mode", (G, X, BOXES, 1.0, -1, False, "mean", False)),
    ("roi_align_box_backward", "3-D input", (G, X[0], BOXES, 1.0, -1, False, "avg", False)),
    (
        "roi_align_box_backward",
        "gradient for 1 box",
        (G[:1], X, BOXES, 1.0, -1, False, "max", False),
    ),
    ("roi_align_box_backward", "bool boxes", (G, X, BOXES > 1, 1.0, -1, False, "avg", False)),
    ("roi_pool", "boxes without batch", (X, BOXES[:, 1:], 2, 2, 1.0)),
    ("roi_pool_inference", "int64 input", (X.long(), BOXES, 2, 2, 1.0)),
    ("roi_pool_backward", "float argmax", (G, BOXES, G, SHAPE, False)),
    ("roi_pool_backward", "argmax of 1 box", (G, BOXES, G[:1].int(), SHAPE, False)),
    ("roi_pool_backward", "gradient for 1 box", (G[:1], BOXES, G[:1].int(), SHAPE, False)),
    ("roi_pool_backward", "3-D gradient", (G[0], BOXES, G[0].int(), SHAPE, False)),
    ("deform_roi_pool", "offset for 1 box", (X, BOXES, OFFSET[:1], 2, 2, 1.0, 0, 0.1)),
    ("deform_roi_pool", "nan gamma", (X, BOXES, OFFSET, 2, 2, 1.0, 0, float("nan"))),
    ("deform_roi_pool", "int64 mask", (X, BOXES, None, 2, 2, 1.0, 0, 0.1, MASK.long())),
    (
        "deform_roi_pool_backward",
        "gradient for 1 box",
        (G[:1], X, BOXES, OFFSET, 1.0, 0, 0.1, False, MASK),
    ),
    (
        "deform_roi_pool_backward",
        "offset of 3 bins",
        (G, X, BOXES, OFFSET[..., :1], 1.0, 0, 0.1, False),
    ),
    (
        "deform_roi_pool_backward",
        "mask for 1 box",
        (G, X, BOXES, None, 1.0, 0, 0.1, False, MASK[:1]),
    ),
    (
        "deform_roi_pool_box_backward",
        "int64 offset",
        (G, X, BOXES, OFFSET.long(), None, 1.0, 0, 0.1, False),
    ),
    (
        "deform_roi_pool_box_backward",
        "3-D input",
        (G, X[0], BOXES, None, None, 1.0, 0, 0.1, False),
    ),
    ("prroi_pool", "boxes of 6 columns", (X, ROTATED, 2, 2, 1.0)),
    ("prroi_pool_backward", "gradient of 4 channels", (G[:, :4], BOXES, SHAPE, 1.0, False)),
    ("prroi_pool_box_backward", "gradient for 1 box", (G[:1], X, BOXES, 1.0, False)),
    ("ps_roi_align", "6 channels", (X[:, :6], BOXES, 2, 2, 1.0, -1)),
    (
        "ps_roi_align_backward",
        "input_shape of 6 channels",
        (G[:, :2], BOXES, [2, 6, 8, 8], 1.0, -1, False),
    ),
    ("ps_roi_align_backward", "gradient of 8 channels", (G, BOXES, SHAPE, 1.0, -1, False)),
    ("ps_roi_pool", "6 channels", (X[:, :6], BOXES, 2, 2, 1.0)),
    ("ps_roi_pool_backward", "gradient for 1 box", (G[:1, :2], BOXES, SHAPE, 1.0, False)),
    ("roi_align_rotated", "axis-aligned boxes", (X, BOXES, 2, 2, 1.0, 0, True, False)),
    (
        "roi_align_rotated_backward",
        "axis-aligned boxes",
        (G, BOXES, SHAPE, 1.0, 0, True, False, False),
    ),
    (
        "roi_align_rotated_backward",
        "gradient for 1 box",
        (G[:1], ROTATED, SHAPE, 1.0, 0, True, False, False),
    ),
    (
        "multi_scale_roi_align",
        "3-D level",
        ([X, X[0]], BOXES, 2, 2, [1.0, 0.5], -1, False, 224.0, 4),
    ),
    (
        "multi_scale_roi_align",
        "output of over 2**32 elements",
        ([X], BOXES[[0, 1, 1]], 2**14, 2**14, [1.0], -1, False, 224.0, 4),
    ),
    (
        "multi_scale_roi_align_backward",
        "gradients of over 2**32 elements",
        (G, BOXES, [2, 1, 2**15, 2**15] * 3, [1.0, 0.5, 0.25], -1, False, 224.0, 4, False),
    ),
    (
        "multi_scale_roi_align",
        "scales that grow",
        ([X, X], BOXES, 2, 2, [0.5, 1.0], -1, False, 224.0, 4),
    ),
    (
        "multi_scale_roi_align_backward",
        "levels of two batches",
        (G, BOXES, SHAPE + [1, 8, 4, 4], [1.0, 0.5], -1, False, 224.0, 4, False),
    ),
    (
        "multi_scale_roi_align_backward",
        "7 sizes",
        (G, BOXES, SHAPE + [2, 8, 4], [1.0, 0.5], -1, False, 224.0, 4, False),
    ),
    (
        "multi_scale_roi_align_backward",
        "gradient for 1 box",
        (G[:1], BOXES, SHAPE, [1.0], -1, False, 224.0, 4, False),
    ),
]


@pytest.mark.parametrize(
    ("op", "args"), [pytest.param(op, args, id=f"{op}: {name}") for op, name, args in BAD_OPS]
)
def test_fake_kernels_raise_what_the_ops_raise(op, args):
    op = getattr(OPS, op)
    # The fake kernel first: where it lets a too large output through, the op is not run.
    assert_same(raised(fake_call, op, args), raised(op, *args))


# (op, arguments) the ops accept, with features, offset and mask of different dtypes.
GOOD_OPS = [
    ("roi_align", (X, BOXES.double(), 2, 3, 1.0, -1, False, "max")),
    ("roi_align_backward", (G, BOXES, SHAPE, 1.0, -1, False, False)),
    ("roi_align_max_backward", (G.double(), X, BOXES, 1.0, -1, False, False)),
    ("roi_align_box_backward", (G, X, BOXES.double(), 1.0, -1, False, "avg", False)),
    ("roi_pool", (X, BOXES, 2, 2, 1.0)),
    ("roi_pool_backward", (G, BOXES, G.int(), SHAPE, False)),
    ("deform_roi_pool", (X, BOXES, OFFSET.double(), 2, 2, 1.0, 0, 0.1, MASK.half())),
    ("deform_roi_pool_backward", (G, X, BOXES, OFFSET.double(), 1.0, 0, 0.1, False, MASK.half())),
    ("deform_roi_pool_box_backward", (G, X, BOXES, OFFSET, MASK, 1.0, 0, 0.1, False)),
    ("prroi_pool_box_backward", (G, X, BOXES, 1.0, False)),
    ("ps_roi_pool_backward", (G[:, :2], BOXES, SHAPE, 1.0, False)),
    ("roi_align_rotated_backward", (G, ROTATED, SHAPE, 1.0, 0, True, False, False)),
    (
        "multi_scale_roi_align",
        ([X, X[..., :4, :4]], BOXES, 2, 2, [1.0, 0.5], -1, False, 224.0, 4),
    ),
    (
        "multi_scale_roi_align_backward",
        (G, BOXES, SHAPE * 2, [1.0, 0.5], -1, False, 224.0, 4, False),
    ),
]


def test_fake_kernels_give_the_shapes_and_dtypes_of_the_ops():
    # deform_roi_pool_backward's offset and mask gradients have their tensors' dtypes.
    for op, args in GOOD_OPS:
        real, fake = getattr(OPS, op)(*args), fake_call(getattr(OPS, op), args)
        real, fake = tree_map_only(torch.Tensor, lambda t: (t.shape, t.dtype), (real, fake))
        assert fake == real, op


def test_the_multi_scale_op_names_an_empty_pyramid():
    args = ([], BOXES, 2, 2, [], -1, False, 224.0, 4)  # was IndexError, from features[0]
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
