"""The checks every op of cuproi.torch shares, written once: tests/test_torch_<op>.py subclasses
``TorchOpTester`` per op with its function, modules, tensors and cases.

Checks: values and gradients equal the array functions' bit for bit; gradcheck on the CPU and
CUDA; ``torch.library.opcheck`` of every custom op the function calls (forward, backward and
without gradients; NCHW and channels-last features); ``torch.compile(fullgraph=True)`` gives
eager's values and gradients; a ``torch.export`` program of every case saves, loads and gives
eager's values; forward mode is the adjoint of the gradient; the fake kernels refuse what
eager mode refuses (torch.export, torch.compile, meta tensors) and give the output's shape and
dtype;
``torch.use_deterministic_algorithms`` reaches the backward; per-image box lists; float16,
bfloat16 (computed in float32) and channels-last features; CUDA tensors on torch's stream; the
modules (equal to the function, their repr and defaults, under autocast); the docstring's
Examples; and the validation of every option, box list and input, with the array API's messages.
"""

import contextlib
import doctest
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # skips the test files that import this module

from roi_op_tester import box_zoo  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map_only  # noqa: E402

import cuproi  # noqa: E402

BF16 = torch.bfloat16
CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=GPU)]

# A bad value of an option, the error and the start of its message (the array API's): a row
# applies to the function and to every module that take the option.
BAD = [
    ("output_size", 2.5, TypeError, r"output_size must be an int; got 2\.5"),
    ("output_size", (2, "3"), TypeError, r"output_size must be an int; got '3'"),
    ("output_size", 0, ValueError, r"output_size must be positive"),
    ("spatial_scale", "0.5", TypeError, r"spatial_scale must be a real number; got '0\.5'"),
    ("spatial_scale", -1.0, ValueError, r"spatial_scale must be positive; got -1\.0"),
    ("spatial_scale", float("nan"), ValueError, r"spatial_scale must be finite; got nan"),
    ("sampling_ratio", 2.5, TypeError, r"sampling_ratio must be an int; got 2\.5 of type float"),
    ("sampling_ratio", "2", TypeError, r"sampling_ratio must be an int; got '2' of type str"),
    ("gamma", "0.1", TypeError, r"gamma must be a real number; got '0\.1'"),
    ("aligned", "False", TypeError, r"aligned must be a bool; got 'False' of type str"),
    ("aligned", 0, TypeError, r"aligned must be a bool; got 0 of type int"),
    ("clockwise", "True", TypeError, r"clockwise must be a bool; got 'True' of type str"),
    ("pool_mode", "mean", ValueError, r"pool_mode must be 'avg' or 'max'; got 'mean'"),
    ("spatial_scales", 0.25, TypeError, r"spatial_scales must be a sequence of floats"),
    ("spatial_scales", ["1"] * 3, TypeError, r"spatial_scales\[0\] must be a real number; got '1'"),
    ("spatial_scales", [1.0, 0.5], ValueError, r"spatial_scales must hold one scale per level"),
    ("canonical_scale", "224", TypeError, r"canonical_scale must be a real number; got '224'"),
    ("canonical_scale", 0, ValueError, r"canonical_scale must be positive; got 0\.0"),
    ("canonical_level", 4.5, TypeError, r"canonical_level must be an int; got 4\.5"),
    ("canonical_level", "4", TypeError, r"canonical_level must be an int; got '4'"),
    ("output_channels", 2.5, TypeError, r"output_channels must be an int; got 2\.5"),
    ("output_channels", 0, ValueError, r"output_channels must be positive; got 0"),
    ("deform_fc_channels", "16", TypeError, r"deform_fc_channels must be an int; got '16'"),
    ("deform_fc_channels", -1, ValueError, r"deform_fc_channels must be positive; got -1"),
]
MISSHAPEN = [torch.tensor([]), torch.zeros(1, 3), torch.zeros(2, 6), torch.zeros(1, 4, 1)]
NOT_A_TENSOR = r"input must be a torch.Tensor \(multi_scale.* got a (list holding a )?"
NUMPY = {bool: np.bool_, int: np.int64, float: np.float64}  # NumPy scalars of Python ones


@contextlib.contextmanager
def deterministic(enabled=True):
    """``torch.use_deterministic_algorithms(enabled)`` inside the block."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def smooth_boxes(g, k=6):
    """(K, 5) float64 boxes of positive size, inside and across the edges of a 10 x 12 map:
    the box gradient is smooth around them, as gradcheck's finite differences need."""
    corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([9.0, 7.0]) - 2
    size = 1.3 + 5 * torch.rand(k, 2, generator=g, dtype=torch.float64)
    return torch.cat([(torch.arange(k) % 2).double()[:, None], corner, corner + size], 1)


def export(*args, **kwargs):
    """torch.export.export, non-strict (torch's default from 2.8: 2.7 traced strictly, and
    wrapped a fake kernel's exception in its own)."""
    return torch.export.export(*args, strict=False, **kwargs)


def weighed(y):
    """``sum(y * w)``, the weights ``w`` multiples of 1/8 in [-1, 1]: exact in bfloat16, so the
    op's output gradient is the same whether a compiler rounds at its dtype casts or not
    (torch 2.7 and 2.8's Inductor let a bfloat16 result cast back to float32 keep its float32
    value, and an output gradient that depends on it, as a square's does, then differed)."""
    w = torch.arange(y.numel(), device=y.device).reshape(y.shape) % 17 - 8
    return (y * w / 8).sum()


def raised(call, *args, **kwargs):
    """The exception ``call(*args, **kwargs)`` raises."""
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    return info.value


def assert_same(error, expected):
    assert type(error) is type(expected), (error, expected)
    assert str(error) == str(expected)


def cause(error):
    """The exception at the root of the chain ``error`` ends (its causes, or its contexts)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def never_run(graph, example_inputs):
    """A torch.compile backend for calls that must fail while they are traced."""
    raise AssertionError("a graph was compiled: its fake kernels accepted the call")


class Call(torch.nn.Module):
    """``function`` as a module (what torch.export takes)."""

    def __init__(self, function):
        super().__init__()
        self.forward = function


class _Recorder(TorchDispatchMode):
    """Records the first call of each of cuproi's custom ops made inside it."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "cuproi":
            self.calls.setdefault(func, (args, kwargs or {}))
        return func(*args, **(kwargs or {}))


class TorchOpTester:
    """Shared checks of one op of cuproi.torch; a subclass fills in the declarations below.

    Declarations
    ------------
    function, modules : callable, tuple of type
        The op's function in cuproi.torch (a staticmethod) and its modules (the one that calls
        the function first).
    defaults, cases : dict
        Options of every case, and the cases by id: options of the op after the defaults, in
        the order of the modules' reprs, and ``wrt``, the names of the tensors differentiated
        (the boxes: their coordinates, on smooth boxes).
    features, channels : tuple of str, int
        The names of the features among the tensors, and their channels in ``tensors``.
    gradcheck_part : (int, int or None)
        The images and channels of the features gradcheck takes (None: all).
    channels_last_gradient : bool or None
        Whether the features' gradient is stored channels last when they are (None: the op
        has no channels-last kernels, and the layout is not checked).
    invalid, refused : list of tuple
        Calls refused in eager mode: an id, a change of the first case (see ``first``), the
        exception and a regular expression its message starts with; and calls refused alike
        in eager mode, by torch.export, torch.compile and on meta tensors: an id and a change.
    """

    function = None
    modules = ()
    defaults = {"output_size": (3, 4), "spatial_scale": 0.7}
    cases = {}
    features = ("input",)
    channels = 3
    gradcheck_part = (2, None)  # all
    channels_last_gradient = None
    module_cases = None  # the cases the first module can express (None: all)
    invalid = [  # torch's dispatcher raised RuntimeError "Expected a value of type 'Tensor'"
        ("input a list", lambda t: {"input": [1.0, 2.0]}, TypeError, NOT_A_TENSOR + "list"),
        ("input an array", lambda t: {"input": t["input"].numpy()}, TypeError, NOT_A_TENSOR + "nd"),
        ("input an int", lambda t: {"input": 3}, TypeError, NOT_A_TENSOR + "int"),
    ]
    refused = [
        ("boxes without batch column", lambda t: {"boxes": t["boxes"][:, 1:]}),
        ("3-D input", lambda t: {"input": t["input"][0]}),
        ("int64 input", lambda t: {"input": t["input"].long()}),
        ("bool boxes", lambda t: {"boxes": t["boxes"] > 2}),
        ("no rows in the plane", lambda t: {"input": t["input"][:, :, :0]}),
    ]

    # ---- what a subclass declares -------------------------------------------------------------

    def tensors(self, case, g):
        """The tensors of a call, float64 on the CPU, from the generator ``g``: features of
        ``channels``, and the box zoo (smooth boxes where the boxes' gradient is taken)."""
        x = torch.randn(2, self.channels, 10, 12, generator=g, dtype=torch.float64)
        boxes = smooth_boxes(g) if "boxes" in self.wrt(case) else torch.tensor(box_zoo(0.7))
        return {"input": x, "boxes": boxes}

    def call(self, t, case):
        """The function on the tensors ``t`` with the case's options."""
        return self.function(t["input"], t["boxes"], **self.options(case))

    def expected(self, t, g, case):
        """The array functions' output and gradients by name, on NumPy ``t`` and ``g``: by
        default the op's forward, its ``_backward`` (from the boxes and the features' shape)
        and its ``_box_backward``."""
        name, x, boxes, options = self.function.__name__, t["input"], t["boxes"], self.options(case)
        grads = {"input": getattr(cuproi, f"{name}_backward")(g, boxes, x.shape, **options)}
        if "boxes" in self.wrt(case):
            grads["boxes"] = getattr(cuproi, f"{name}_box_backward")(g, x, boxes, **options)
        return getattr(cuproi, name)(x, boxes, **options), grads

    def module_kwargs(self, module, case):
        """Valid keywords of ``module`` for the options of ``case``."""
        return self.options(case)

    def module_call(self, module, t):
        """``module`` on the tensors ``t``."""
        return module(t["input"], t["boxes"])

    # ---- helpers ------------------------------------------------------------------------------

    @classmethod
    def generate_tests(cls, metafunc):
        """Parametrise the checks by the cases, layouts and tables (called by conftest)."""
        channels_last = ["channels_last"] * (cls.channels_last_gradient is not None)
        rows = [r for r in BAD if cls._takes(r[0], cls.function, *cls.modules)]
        grids = {
            "case": (list(cls.cases.values()), list(cls.cases)),
            "layout": (["contiguous", *channels_last], None),
            "form": (["float32", "bfloat16", *channels_last], None),  # of torch.compile's inputs
            "row": (rows, [f"{r[0]}={r[1]!r}" for r in rows]),
            "invalid": (cls.invalid, [r[0] for r in cls.invalid]),
            "refused": (cls.refused, [r[0] for r in cls.refused]),
        }
        for name, (values, ids) in grids.items():
            if name in metafunc.fixturenames:
                metafunc.parametrize(name, values, ids=ids)

    @staticmethod
    def _takes(name, *callables):
        return any(name in inspect.signature(c).parameters for c in callables)

    def options(self, case):
        """The op's options in ``case`` after the defaults (not ``wrt``, nor a subclass's
        ``given``)."""
        return {k: v for k, v in {**self.defaults, **case}.items() if k not in ("wrt", "given")}

    def wrt(self, case):
        """The names of the tensors differentiated in ``case``."""
        return case.get("wrt", self.features)

    def inputs(self, case, dtype=torch.float64, device="cpu", seed=0, grad=False, layout=None):
        """The tensors of ``case`` in ``dtype`` (the boxes float64 with float64 features, float32
        otherwise) on ``device``, the features in ``layout``, those of ``wrt`` needing a
        gradient if ``grad``."""
        t = self.tensors(case, torch.Generator().manual_seed(seed))
        boxes = torch.float64 if dtype == torch.float64 else torch.float32
        t = {k: v.to(device, boxes if k == "boxes" else dtype) for k, v in t.items()}
        if layout == "channels_last":
            t |= {n: t[n].contiguous(memory_format=torch.channels_last) for n in self.features}
        for name in self.wrt(case) if grad else ():
            t[name].requires_grad_()
        return t

    def first(self, change=None):
        """The tensors of the first case and the case (validation and the modules use them),
        changed by ``change``: a function of the tensors that gives tensors to replace or add
        (``input``: the first features, whatever their name) and options."""
        case = next(iter(self.cases.values()))
        t, x = self.inputs(case, torch.float32), self.features[0]
        for k, v in (change(t | {"input": t[x]}) if change else {}).items():
            if k in t or k == "input" or isinstance(v, torch.Tensor):
                t[x if k == "input" else k] = v
            else:
                case = case | {k: v}
        return t, case

    def gradients(self, out, t, case, g):
        """The gradients of ``(out * g).sum()`` with respect to the case's ``wrt``."""
        return torch.autograd.grad(out, [t[n] for n in self.wrt(case)], g)

    def module(self, module, case):
        return module(**self.module_kwargs(module, case))

    def backwards(self):
        """The names of the backward functions of ``cuproi`` that the op's autograd calls."""
        name = self.function.__name__
        boxes = any("boxes" in self.wrt(case) for case in self.cases.values())
        return (f"{name}_backward", *[f"{name}_box_backward"] * boxes)

    # ---- values and gradients -----------------------------------------------------------------

    def test_values_and_gradients_equal_the_array_api(self, case):
        t = self.inputs(case, grad=True)
        out = self.call(t, case)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        grads = self.gradients(out, t, case, g)
        arrays = tree_map_only(torch.Tensor, lambda v: v.detach().numpy(), t)
        value, expected = self.expected(arrays, g.numpy(), case)
        np.testing.assert_array_equal(out.detach().numpy(), value)
        for name, grad in zip(self.wrt(case), grads, strict=True):
            np.testing.assert_array_equal(grad.numpy(), expected[name], err_msg=name)
            assert name != "boxes" or not grad[:, 0].any()  # the batch index gets none

    @pytest.mark.parametrize("device", DEVICES)
    def test_gradcheck(self, case, device):
        """On the images and channels of ``gradcheck_part`` (the full Jacobian costs a forward
        per element)."""
        t = self.inputs(case, device=device, seed=1)
        images, channels = self.gradcheck_part
        kept = t["boxes"][:, 0] < images
        t = {k: v[:images, :channels] if k in self.features else v[kept] for k, v in t.items()}
        wrt, index = self.wrt(case), t["boxes"][:, :1]

        def f(*values):
            u = t | dict(zip(wrt, values, strict=True))
            if "boxes" in wrt:  # the batch index stays whole: only the coordinates move
                u["boxes"] = torch.cat([index, u["boxes"]], 1)
            return self.call(u, case)

        values = [t[n][:, 1:] if n == "boxes" else t[n] for n in wrt]
        assert torch.autograd.gradcheck(f, [v.clone().requires_grad_() for v in values], atol=1e-6)

    @pytest.mark.parametrize("device", DEVICES)
    def test_forward_mode_is_the_adjoint_of_the_gradient(self, case, device):
        """``torch.func.jvp`` in the features gives the call's value and the tangent ``J u``
        with ``<J u, g> == <u, J^T g>``, ``J^T g`` the reverse-mode gradient (equal to the array
        API's above), for random ``u`` and ``g``: torch would drop the tangent and give 0."""
        t, g = self.inputs(case, device=device, seed=2), torch.Generator().manual_seed(3)
        names = self.features
        primals = tuple(t[n] for n in names)
        tangents = tuple(
            torch.randn(x.shape, generator=g, dtype=x.dtype).to(device) for x in primals
        )

        def f(*xs):
            return self.call(t | dict(zip(names, xs, strict=True)), case)

        if self.forward_mode_refused(case):
            with pytest.raises(NotImplementedError, match="forward-mode derivatives of roi_align"):
                torch.func.jvp(f, primals, tangents)
            return
        out, tangent = torch.func.jvp(f, primals, tangents)
        torch.testing.assert_close(out, f(*primals), rtol=0, atol=0)
        weights = torch.randn(out.shape, generator=g, dtype=out.dtype).to(device)
        xs = [x.clone().requires_grad_() for x in primals]
        grads = torch.autograd.grad(f(*xs), xs, weights)
        reverse = sum((u * grad).sum() for u, grad in zip(tangents, grads, strict=True))
        assert tangent.abs().sum() > 0
        torch.testing.assert_close((tangent * weights).sum(), reverse, rtol=1e-12, atol=1e-12)

    def test_forward_mode_refuses_tangents_of_the_other_tensors(self, case):
        """A tangent of the boxes, an offset or a mask raises: it would be dropped."""
        t = self.inputs(case)
        others = [n for n, v in t.items() if n not in self.features and v.is_floating_point()]
        for name in others:

            def f(value, name=name):
                return self.call(t | {name: value}, case)

            with pytest.raises(NotImplementedError, match="forward-mode derivatives of cuproi::"):
                torch.func.jvp(f, (t[name],), (torch.ones_like(t[name]),))
        assert "boxes" in others

    def forward_mode_refused(self, case):
        """Whether ``case`` has no forward-mode derivative in the features (max mode)."""
        return False

    @pytest.mark.parametrize("enabled", [False, True])
    def test_deterministic_algorithms_reach_the_backward(self, monkeypatch, enabled):
        seen = {}
        for name, original in ((n, getattr(cuproi, n)) for n in self.backwards()):

            def spy(*args, original=original, name=name, **kwargs):
                seen.setdefault(name, set()).add(kwargs["deterministic"])
                return original(*args, **kwargs)

            monkeypatch.setattr(cuproi, name, spy)
        with deterministic(enabled):
            for case in self.cases.values():
                self.call(self.inputs(case, grad=True), case).sum().backward()
        assert seen == dict.fromkeys(self.backwards(), {enabled})

    @pytest.mark.parametrize("device", DEVICES)
    def test_channels_last_features(self, device):
        """Features stored channels last give the same values and gradients, exactly (the
        GPU's sums deterministic), the features' gradient in the declared layout."""
        for case in self.cases.values():
            stored = self.inputs(case, device=device, seed=4, grad=True, layout="channels_last")
            t = self.inputs(case, device=device, seed=4, grad=True)
            assert not stored[self.features[0]].is_contiguous()
            with deterministic():
                out, expected = self.call(stored, case), self.call(t, case)
                g = torch.randn_like(out)
                grads = self.gradients(out, stored, case, g)
                want = self.gradients(expected, t, case, g)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
            for name, grad, other in zip(self.wrt(case), grads, want, strict=True):
                torch.testing.assert_close(grad, other, rtol=0, atol=0)
                if name in self.features and self.channels_last_gradient is not None:
                    assert grad.is_contiguous() != self.channels_last_gradient
                    assert other.is_contiguous()

    # ---- torch: custom ops, compile, fake tensors ---------------------------------------------

    def test_opcheck(self, case, layout):
        """Every custom op the function calls: forward with gradients, backward and forward
        without gradients (the last two on tensors that need none: they have no autograd)."""
        t = self.inputs(case, grad=True, layout=layout)
        with _Recorder() as forward:
            out = self.call(t, case)
        with _Recorder() as rest:
            out.backward(torch.ones_like(out))
            with torch.no_grad():
                self.call(t, case)
        calls = tree_map_only(torch.Tensor, torch.Tensor.detach, rest.calls) | forward.calls
        assert len(calls) > len(forward.calls)  # the backward's ops were seen
        for op, (args, kwargs) in calls.items():
            torch.library.opcheck(op, args, kwargs)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_without_graph_breaks(self, form, device):
        """One graph (any break fails) of every case, whose values and gradients are eager's."""
        dtype = BF16 if form == "bfloat16" else torch.float32
        cases = list(self.cases.values())
        ts = [self.inputs(c, dtype, device, grad=True, layout=form) for c in cases]
        leaves = [t[n] for t, c in zip(ts, cases, strict=True) for n in self.wrt(c)]

        def loss(ts):
            calls = zip(ts, cases, strict=True)
            return sum(weighed(self.call(t, c).float()) for t, c in calls)

        torch._dynamo.reset()  # a fresh cache: the cases of every op trace the same function
        value = torch.compile(loss, fullgraph=True)(ts)
        grads = torch.autograd.grad(value, leaves)
        expected = loss(ts)
        torch.testing.assert_close(value.to(dtype), expected.to(dtype))  # to the dtype's rounding
        for grad, want in zip(grads, torch.autograd.grad(expected, leaves), strict=True):
            assert grad.dtype == want.dtype
            torch.testing.assert_close(grad, want, rtol=0, atol=0)

    def test_exported_program_saves_and_loads(self, tmp_path):
        """One torch.export program of every case, saved and loaded: eager's values, bit for
        bit (a fresh process: tests/test_torch_export.py)."""
        cases = list(self.cases.values())
        ts = [self.inputs(c, torch.float32) for c in cases]

        def every_case(ts):
            return [self.call(t, c) for t, c in zip(ts, cases, strict=True)]

        torch.export.save(torch.export.export(Call(every_case), (ts,)), tmp_path / "cases.pt2")
        loaded = torch.export.load(tmp_path / "cases.pt2").module()
        for got, want in zip(loaded(ts), every_case(ts), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    def test_fake_tensors_give_the_shape_and_dtype(self):
        """Of the function, and of the first module."""
        for case in self.cases.values():
            t = self.inputs(case, torch.float32, grad=True)
            real, module = self.call(t, case), self.module(self.modules[0], case)
            with FakeTensorMode() as mode:
                fakes = tree_map_only(torch.Tensor, mode.from_tensor, t)
                outs = [self.call(fakes, case), self.module_call(module, fakes)]
            assert [(o.shape, o.dtype) for o in outs] == [(real.shape, real.dtype)] * 2

    # ---- boxes and dtypes ---------------------------------------------------------------------

    @pytest.mark.parametrize("device", DEVICES)
    def test_per_image_boxes(self, device):
        """Per-image (L, 4) tensors, float32 or bfloat16, give what (K, 5) boxes give, and get
        their gradient through the concatenation."""
        for case in self.cases.values():
            t = self.inputs(case, device=device)
            boxes = t["boxes"].to(BF16).to(t["boxes"].dtype)  # exact in bfloat16
            order = torch.argsort(boxes[:, 0], stable=True)  # image by image, as a list gives
            per_box = {k: v[order] for k, v in t.items() if k not in (*self.features, "boxes")}
            flat = (boxes[order]).requires_grad_("boxes" in self.wrt(case))
            out = self.call(t | per_box | {"boxes": flat}, case)
            per_image = [flat[flat[:, 0] == i, 1:].detach().requires_grad_() for i in range(2)]
            for given in (per_image, [b.to(BF16) for b in per_image], flat.to(BF16)):
                got = self.call(t | per_box | {"boxes": given}, case)
                torch.testing.assert_close(got, out, rtol=0, atol=0)
            if flat.requires_grad:
                out.sum().backward()
                self.call(t | per_box | {"boxes": per_image}, case).sum().backward()
                got = torch.cat([b.grad for b in per_image])
                torch.testing.assert_close(got, flat.grad[:, 1:], rtol=0, atol=0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
    def test_float16_and_float32_tensors(self, dtype):
        """The output in the features' dtype; the gradients in their tensors' (float32 for
        the boxes)."""
        for case in self.cases.values():
            t = self.inputs(case, dtype, grad=True)
            out = self.call(t, case)
            assert out.dtype == dtype and out.shape == self.call(self.inputs(case), case).shape
            for name, grad in zip(self.wrt(case), self.gradients(out, t, case, out), strict=True):
                assert grad.dtype == (torch.float32 if name == "boxes" else dtype)

    @pytest.mark.parametrize("device", DEVICES)
    def test_bfloat16_is_float32_rounded(self, device):
        """Values and gradients of bfloat16 tensors are those of their float32 values, rounded to
        bfloat16 (as torchvision's ops under autocast); the gradients are bfloat16 tensors."""
        for case in self.cases.values():
            narrow = self.inputs(case, BF16, device, grad=True)
            wrt = [n for n in self.wrt(case) if n != "boxes"]  # the boxes stay float32
            wide = {k: v.detach().float().requires_grad_(k in wrt) for k, v in narrow.items()}
            with deterministic():  # the two runs' GPU sums round alike
                got, want = self.call(narrow, case), self.call(wide, case)
                g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(BF16)
                grads = torch.autograd.grad(got, [narrow[n] for n in wrt], g.to(device))
                wants = torch.autograd.grad(want, [wide[n] for n in wrt], g.float().to(device))
            assert got.dtype == BF16 and got.device == narrow["boxes"].device
            torch.testing.assert_close(got, want.to(BF16), rtol=0, atol=0)
            for grad, other in zip(grads, wants, strict=True):
                assert grad.dtype == BF16
                torch.testing.assert_close(grad, other.to(BF16), rtol=0, atol=0)
            assert grads[0].abs().sum() > 0

    @pytest.mark.gpu
    @pytest.mark.skipif(not CUDA, reason="no CUDA device")
    def test_cuda_tensors_on_torch_stream(self):
        """The op runs on torch's current stream, after the work queued there (the doubling of
        the features), gives what the CPU gives, and its backward runs."""
        for case in self.cases.values():
            t, stream = self.inputs(case, torch.float32), torch.cuda.Stream()
            with torch.cuda.stream(stream):
                cuda = self.inputs(case, torch.float32, "cuda", grad=True)
                cuda |= {n: cuda[n] * 2 for n in self.features}
                out = self.call(cuda, case)
                self.gradients(out, cuda, case, torch.ones_like(out))
            stream.synchronize()
            doubled = t | {n: t[n] * 2 for n in self.features}
            torch.testing.assert_close(out.cpu(), self.call(doubled, case), rtol=1e-5, atol=1e-5)

    # ---- modules ------------------------------------------------------------------------------

    def test_module_equals_function(self):
        """The first module gives the function's values; its repr shows its options."""
        for name, case in self.cases.items():
            if self.module_cases is None or name in self.module_cases:
                t, kw = self.inputs(case), self.module_kwargs(self.modules[0], case)
                module = self.module(self.modules[0], case)
                out = self.module_call(module, t)
                torch.testing.assert_close(out, self.call(t, case), rtol=0, atol=0)
                shown = ", ".join(f"{k}={v!r}" for k, v in kw.items())
                assert repr(module) == f"{type(module).__name__}({shown})"
        function = inspect.signature(self.function).parameters
        for cls in self.modules:  # an option left out means what it means to the function
            for name, p in inspect.signature(cls).parameters.items():
                if p.default is not p.empty and name in function:
                    assert p.default == function[name].default, (cls, name)

    @pytest.mark.parametrize("device", DEVICES)
    def test_modules_train_under_autocast(self, device):
        """torch.autocast with bfloat16 (the CPU's default) makes bfloat16 features: every
        module runs, returns bfloat16, and every parameter gets a finite gradient."""
        t, case = self.first()
        t = {k: v.to(device) for k, v in t.items()}
        for cls in self.modules:
            module = self.module(cls, case).to(device)
            convs = {n: torch.nn.Conv2d(t[n].shape[1], t[n].shape[1], 1) for n in self.features}
            convs = torch.nn.ModuleDict(convs).to(device)
            with torch.autocast(device, dtype=BF16):
                out = self.module_call(module, t | {n: convs[n](t[n]) for n in self.features})
            assert out.dtype == BF16
            out.float().square().sum().backward()
            for parameter in [*convs.parameters(), *module.parameters()]:
                assert parameter.grad is not None and torch.isfinite(parameter.grad).all()

    def test_docstring_examples_run(self, doctest_namespace):
        """The Examples of the function, where it has some, run."""
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        globs = doctest_namespace | {"torch": torch}
        for test in doctest.DocTestFinder().find(self.function, globs=globs):
            runner.run(test)
        assert runner.failures == 0
        assert (runner.tries > 0) == ("Examples\n" in self.function.__doc__)

    # ---- validation ---------------------------------------------------------------------------

    def test_options_are_checked_as_in_the_array_api(self, row):
        """By the function before it builds the op's arguments, and by the modules when built."""
        name, value, error, message = row
        t, case = self.first()
        for cls in (self.function, *self.modules):
            if self._takes(name, cls):
                with pytest.raises(error, match=f"^{message}"):
                    if cls is self.function:
                        self.call(t, case | {name: value})
                    else:
                        cls(**self.module_kwargs(cls, case) | {name: value})

    def test_numpy_scalars_and_bools_are_taken(self):
        t, case = self.first()
        scalars = {k: NUMPY[type(v)](v) for k, v in self.options(case).items() if type(v) in NUMPY}
        assert scalars
        torch.testing.assert_close(self.call(t, case | scalars), self.call(t, case), rtol=0, atol=0)

    def test_invalid_calls_are_refused(self, invalid):
        _, change, error, message = invalid
        t, case = self.first(change)
        with pytest.raises(error, match=f"^{message}"):
            self.call(t, case)

    def test_fake_kernels_refuse_what_eager_refuses(self, refused):
        """torch.export (non-strict) and meta tensors raise eager's exception; torch.compile
        raises it at trace time, before any graph is built, as the cause of the
        TorchRuntimeError with which Dynamo reports every exception of a fake kernel."""
        t, case = self.first(refused[1])

        def call(*tensors):
            return self.call(dict(zip(t, tensors, strict=True)), case)

        expected = raised(call, *t.values())
        assert_same(raised(export, Call(call), tuple(t.values())), expected)
        torch._dynamo.reset()  # each case compiles the same function: no recompile limit
        compiled = torch.compile(call, backend=never_run, fullgraph=True, dynamic=False)
        error = raised(compiled, *t.values())
        assert_same(cause(error), expected)
        assert repr(expected) in str(error)  # Dynamo's message quotes it
        assert_same(raised(call, *(v.detach().to("meta") for v in t.values())), expected)

    def test_per_image_boxes_are_checked(self):
        """A misshapen per-image tensor is named by the shape given, before the batch column is
        added; per-image boxes and (K, 5) boxes must be tensors; no boxes give no rows."""
        t, case = self.first()
        width = t["boxes"].shape[1] - 1
        for given in MISSHAPEN:
            with pytest.raises(ValueError) as info:
                self.call(t | {"boxes": [torch.zeros(0, width), given]}, case)
            text = str(info.value)
            assert text.startswith(f"boxes[1] must be an (L, {width}) tensor ["), text
            assert text.endswith(f"; got shape {tuple(given.shape)}"), text
        for given in ([[0.0] * width], np.zeros((1, width), np.float32)):
            with pytest.raises(TypeError, match=rf"^boxes\[0\] must be an \(L, {width}\) tensor "):
                self.call(t | {"boxes": [given]}, case)
        with pytest.raises(
            TypeError, match=rf"^boxes must be a \(K, {width + 1}\) tensor .*; got "
        ):
            self.call(t | {"boxes": t["boxes"].numpy()}, case)
        for boxes in ([], [torch.zeros(0, width)] * 2):
            out = self.call(t | {"boxes": boxes}, case)
            assert out.shape[0] == 0 and out.shape[2:] == self.options(case)["output_size"]


class PositionSensitiveTester(TorchOpTester):
    """The position-sensitive ops: features of two groups of 3 x 4 maps (gradcheck: one, of one
    image); channels that are not a multiple of the bins are refused."""

    channels, gradcheck_part = 24, (1, 12)
    not_a_multiple = r"input has 10 channels, which is not a multiple of output_size"
    invalid = [
        *TorchOpTester.invalid,
        ("10 channels", lambda t: {"input": t["input"][:, :10]}, ValueError, not_a_multiple),
    ]
