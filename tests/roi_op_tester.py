"""The checks every op shares, written once: a test class per op subclasses ``RoIOpTester``.

A subclass declares its op (the public forward and backward, called through ``cuproi``), the
float64 loop oracle of ``tests/oracles``, its inputs (features, boxes from the box zoo, extra
inputs such as offsets) and its parameter grids; ``conftest.pytest_generate_tests`` hands the
grids to the checks. Every check runs on the backends of the ``on`` fixture (conftest): ``cpu``
(NumPy), ``host`` (the CUDA kernels compiled for the host) and ``cuda`` (CuPy arrays: a real GPU,
or the CuPy stand-in, which runs the same kernels through ``cuproi._cuda``).

Checks: forward and backward against the oracle for every dtype (``conftest.TOLERANCE``), the
adjoint identity ``<A x, g> == <x, A^T g>``, no boxes and no channels, ``deterministic=True``
against the oracle and repeating its bits (on thousands of boxes on ``cuda``: ``cuda_on``),
per-image box lists, strided inputs left unwritten, the validation table; on the kernels
(``kernels_on``: host and cuda) the order of the boxes under ``deterministic=True``, the _i64
entry points and rows naming no image; on the NumPy backend, boxes split into many chunks.
``assert_backends_agree`` compares the NumPy backend with the host kernels on any boxes (the
hypothesis checks of ``on_random_boxes``). Mixins add the checks of a family:
``BoxGradientChecks`` (box backwards) and ``PositionSensitiveChecks`` (the R-FCN ops).
"""

import importlib
import types

import host
import numpy as np
import pytest
from conftest import STANDIN, TOLERANCE, examples, host_backend
from hypothesis import given
from hypothesis import strategies as st
from oracles import calculus

import cuproi
from cuproi import _validate
from cuproi._cpu import _cells, _sampling
from cuproi._cuda import _launch
from cuproi._validate import compute_dtype

SHAPE = (2, 3, 10, 12)  # N, C, H, W


def box_zoo(scale):
    """Boxes in image coordinates covering every case the semantics treat specially."""
    in_cells = np.array(
        [
            [0, 1.3, 2.2, 7.7, 6.1],  # inside, fractional corners
            [1, 0.0, 0.0, 11.0, 9.0],  # the whole map
            [1, -3.2, -2.5, 4.1, 5.3],  # partly outside, top left
            [0, 8.6, 6.3, 15.2, 13.7],  # partly outside, bottom right: samples in the bands
            [1, 14.0, 12.0, 20.0, 18.0],  # wholly outside
            [0, -6.0, -6.0, -2.0, -3.0],  # wholly outside, negative side
            [0, 4.0, 4.0, 4.0, 4.0],  # a point
            [1, 3.0, 2.5, 9.0, 2.5],  # zero height
            [0, 7.5, 5.5, 2.5, 1.5],  # flipped
            [1, 5.2, 3.3, 5.9, 3.8],  # smaller than a cell
            [0, -0.5, -0.5, 11.5, 9.5],  # the map's pixel edges
            [1, -40.0, -30.0, 60.0, 50.0],  # far beyond the map on every side
        ]
    )
    in_cells[:, 1:] /= scale
    return in_cells


def features(dtype, seed=0, shape=SHAPE):
    """Standard normal features of ``shape`` (N, C, H, W) in ``dtype``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def rois_for(boxes, dtype):
    """Boxes as the backends take them: (K, 5) in the compute dtype of ``dtype`` features."""
    return np.ascontiguousarray(boxes, dtype=compute_dtype(dtype))


def assert_close(actual, expected, dtype):
    """``actual`` within the tolerance of ``dtype`` (conftest.TOLERANCE) of float64 ``expected``."""
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


_COORDINATE = st.one_of(
    st.floats(-15, 25, allow_nan=False, width=32),
    st.sampled_from([0.0, 0.5, -0.5, 4.0, 9.5, 10.0, 12.0, -1.0, 1e4, -1e4]),
)


def random_boxes(max_size=6):
    """A hypothesis strategy of (K, 5) float64 boxes on 2 images of ``SHAPE``: degenerate,
    flipped, outside the map and huge ones among them."""
    row = st.tuples(st.integers(0, 1), *[_COORDINATE] * 4)
    return st.lists(row, min_size=1, max_size=max_size).map(lambda r: np.array(r, np.float64))


def on_random_boxes(**axes):
    """Make a test of ``(self, boxes, case, dtype)`` a hypothesis test: ``random_boxes``, a case
    of the strategies ``axes`` and float32 or float64, for ``assert_backends_agree`` (skipped
    without a C++ compiler)."""

    def decorate(test):
        drawn = given(
            boxes=random_boxes(),
            case=st.fixed_dictionaries(axes),
            dtype=st.sampled_from([np.float32, np.float64]),
        )(test)
        no_compiler = pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
        return no_compiler(examples(40)(drawn))

    return decorate


BOX_SIZE = (2, 3)  # (PH, PW) of the box-gradient checks


def box_gradient_inputs(dtype, seed=0, k=8):
    """Inputs of the box-gradient checks: features (2, 3, 9, 11), ``k`` random boxes of at least
    1.3 cells, the output's gradient, offsets and a mask (both (K, ., 2, 3))."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, [8, 6], (k, 2))
    size = rng.uniform(1.3, 7, (k, 2))
    rois = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
    x = rng.standard_normal((2, 3, 9, 11))
    g = rng.standard_normal((k, 3, *BOX_SIZE))
    offset = rng.normal(0, 0.3, (k, 2, *BOX_SIZE))
    mask = rng.uniform(0.2, 1, (k, 1, *BOX_SIZE))
    return [a.astype(dtype) for a in (x, rois, g, offset, mask)]


def box_tolerance(dtype, grad):
    """20 times the dtype's tolerance, the absolute part relative to the gradient's size."""
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    return {"rtol": 20 * rtol, "atol": 20 * atol * max(1.0, np.abs(grad).max())}


def case_id(case):
    """A readable test id for a grid point (a dict of parameters)."""
    return "-".join(f"{k}={v}" for k, v in case.items())


def _frozen(case):
    return tuple(sorted(case.items()))


_ORACLE_CACHE = {}


class RoIOpTester:
    """Shared checks of one op; a subclass fills in the declarations below.

    Declarations
    ------------
    shape : tuple of int
        (N, C, H, W) of the features.
    dtypes : tuple of dtype
        Feature dtypes of the oracle checks.
    forward_cases, backward_cases, adjoint_cases : list of dict
        Parameter grids (one dict a test) of the forward, backward and adjoint checks.
    grids : dict
        Grids of an op's own checks, by test name (the forward grid where none is named).
    invalid : list of (str, callable, type, str)
        The validation table: a label, a call on valid inputs made invalid (it takes a
        namespace of valid ``x``, ``boxes``, ``g`` and the extras), the exception and a regular
        expression its message matches.
    size : tuple of int
        (PH, PW) of the output.
    box_backward : method or None
        The public box backward, ``box_backward(g, x, boxes, case, **extras)``, where the op has
        one: the checks of the gradients then cover it too.
    gradients : method
        Every gradient of the backward (offsets', masks' too) for the checks that compare whole
        results; by default the features' alone.
    """

    shape = SHAPE
    dtypes = (np.float32, np.float64)
    forward_cases = [{}]
    backward_cases = [{}]
    adjoint_cases = [{}]
    grids = {}
    invalid = []
    box_backward = None

    # ---- what a subclass declares -------------------------------------------------------------

    def boxes(self, case):
        """(K, 5) float64 boxes in image coordinates for ``case``."""
        return box_zoo(case.get("scale", 1.0))

    def extras(self, boxes, case, dtype):
        """Extra inputs of the op (offsets, masks) as a dict of NumPy arrays, or {}."""
        return {}

    def forward(self, x, boxes, case, **extras):
        """The public forward on ``x`` and ``boxes`` (arrays of the backend under test)."""
        raise NotImplementedError

    def backward(self, g, x, boxes, case, **extras):
        """The public backward's gradient with respect to the features."""
        raise NotImplementedError

    def oracle(self, x, boxes, case, coord_dtype, **extras):
        """The float64 oracle's forward on NumPy inputs."""
        raise NotImplementedError

    def oracle_backward(self, g, x, boxes, case, coord_dtype, **extras):
        """The float64 oracle's gradient with respect to the features."""
        raise NotImplementedError

    def gradients(self, g, x, boxes, case, **options):
        """Every gradient of the backward (the features' first) as a tuple, for the checks that
        compare whole results: by default the features' gradient alone."""
        return (self.backward(g, x, boxes, case, **options),)

    # ---- the grids ----------------------------------------------------------------------------

    @classmethod
    def generate_tests(cls, metafunc):
        """Parametrise a check by the grids it names (called by conftest)."""
        grids = {
            "test_forward_matches_oracle": cls.forward_cases,
            "test_backward_matches_oracle": cls.backward_cases,
            "test_adjoint": cls.adjoint_cases,
            **cls.grids,
        }
        if "case" in metafunc.fixturenames:
            # An op's own checks with a case take the forward grid.
            cases = grids.get(metafunc.function.__name__, cls.forward_cases)
            metafunc.parametrize("case", cases, ids=[case_id(c) for c in cases])
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", cls.dtypes, ids=[np.dtype(d).name for d in cls.dtypes])
        if "box_case" in metafunc.fixturenames:
            cases = cls.box_cases
            metafunc.parametrize("box_case", cases, ids=[case_id(c) for c in cases])
        if "row" in metafunc.fixturenames:
            metafunc.parametrize("row", cls.invalid, ids=[r[0] for r in cls.invalid])

    # ---- inputs -------------------------------------------------------------------------------

    def inputs(self, on, dtype, case, seed=0):
        """(x, boxes, extras) as NumPy arrays and the same on the backend ``on``."""
        x = features(dtype, seed, self.input_shape(case))
        boxes = self.boxes(case)
        extras = self.extras(boxes, case, dtype)
        host = (x, rois_for(boxes, dtype), extras)
        device = (on.put(x), on.put(host[1]), {k: on.put(v) for k, v in extras.items()})
        return boxes, host, device

    def _oracle(self, name, dtype, frozen):
        """Oracle results, cached across backends and tests (the loops are slow)."""
        key = (type(self), name, np.dtype(dtype), frozen)
        if key not in _ORACLE_CACHE:
            _ORACLE_CACHE[key] = self._run_oracle(name, dtype, dict(frozen))
        return _ORACLE_CACHE[key]

    def _run_oracle(self, name, dtype, case):
        """The oracle's forward or backward on the inputs the backends see, rounded."""
        x = features(dtype, 0, self.input_shape(case)).astype(np.float64)  # rounded as fed
        boxes = self.boxes(case)
        extras = self.extras(boxes, case, dtype)
        coord = compute_dtype(dtype).type
        if name == "forward":
            return self.oracle(x, boxes, case, coord, **extras)
        g = self.gradient(dtype, len(boxes), case).astype(np.float64)
        return self.oracle_backward(g, x, boxes, case, coord, **extras)

    def gradient(self, dtype, k, case, seed=3):
        """A standard normal gradient of the output, (K, C, PH, PW)."""
        shape = (k, *self.output_tail(case))
        return np.random.default_rng(seed).standard_normal(shape).astype(dtype)

    def input_shape(self, case):
        """(N, C, H, W) of the features of ``case``."""
        return self.shape

    def output_tail(self, case):
        """(C_out, PH, PW) of the output: the case's ``size`` or the tester's."""
        return (self.shape[1], *case.get("size", self.size))

    def assert_forward(self, out, expected, dtype):
        """The forward's comparison with the oracle (a subclass may ask for exact equality)."""
        assert_close(out, expected, dtype)

    def everything(self, on, x, rois, extras, g, case, **options):
        """Every result of the op as NumPy arrays: the forward, the backward's gradients and,
        where the op has one, the box backward's. ``extras`` and the NumPy ``x``, ``rois`` and
        ``g`` are put on the backend ``on`` here."""
        x, g = on.put(x), on.put(g)
        rois = rois if isinstance(rois, list) else on.put(rois)
        extras = {k: on.put(v) for k, v in extras.items()}
        results = [
            self.forward(x, rois, case, **extras),
            self.gradients(g, x, rois, case, **options, **extras),
        ]
        if self.box_backward is not None:
            results.append(self.box_backward(g, x, rois, case, **options, **extras))
        flat = []
        for r in results:
            flat.extend(r if isinstance(r, tuple) else (r,))
        return [on.get(r) for r in flat]

    def host_inputs(self, dtype, case, boxes=None):
        """NumPy (x, rois, extras, g) of ``case`` for ``boxes`` (by default the box zoo)."""
        boxes = self.boxes(case) if boxes is None else boxes
        x = features(dtype, 0, self.input_shape(case))
        extras = self.extras(boxes, case, dtype)
        return x, rois_for(boxes, dtype), extras, self.gradient(dtype, len(boxes), case)

    def backend_results(self, boxes, case, dtype):
        """The NumPy (x, rois, extras, g) of ``boxes``, then every result of the op on them on
        the NumPy backend and on the host kernels."""
        inputs = self.host_inputs(dtype, case, boxes)
        cpu = self.everything(On_CPU, *inputs, case)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cuproi, "_cpu", host_backend())
            kernels = self.everything(On_CPU, *inputs, case)
        return inputs, cpu, kernels

    def assert_backends_agree(self, boxes, case, dtype):
        """Every result of the op on ``boxes`` is finite on the NumPy backend and within the
        tolerance of ``dtype`` of the host kernels' (the checks of random boxes)."""
        _, cpu, kernels = self.backend_results(boxes, case, dtype)
        for a, b in zip(cpu, kernels, strict=True):
            assert np.isfinite(a).all()
            assert_close(a, b.astype(np.float64), dtype)

    # ---- the checks ---------------------------------------------------------------------------

    def test_forward_matches_oracle(self, on, dtype, case):
        boxes, _, (x, rois, extras) = self.inputs(on, dtype, case)
        raw = self.forward(x, rois, case, **extras)
        assert type(raw) is type(x)  # CuPy in, CuPy out
        out = on.get(raw)
        assert out.dtype == dtype and out.shape == (len(boxes), *self.output_tail(case))
        self.assert_forward(out, self._oracle("forward", dtype, _frozen(case)), dtype)

    def test_backward_matches_oracle(self, on, dtype, case):
        boxes, _, (x, rois, extras) = self.inputs(on, dtype, case)
        g = on.put(self.gradient(dtype, len(boxes), case))
        grad = on.get(self.backward(g, x, rois, case, **extras))
        assert grad.dtype == dtype and grad.shape == self.input_shape(case)
        assert_close(grad, self._oracle("backward", dtype, _frozen(case)), dtype)

    def test_adjoint(self, on, case):
        """<A x, g> == <x, A^T g>: the backward is the exact transpose of the forward."""
        rng = np.random.default_rng(4)
        _, (x, _, _), (xd, rois, extras) = self.inputs(on, np.float64, case, seed=4)
        out = on.get(self.forward(xd, rois, case, **extras))
        g = rng.standard_normal(out.shape)
        grad = on.get(self.backward(on.put(g), xd, rois, case, **extras))
        assert np.vdot(out, g) == pytest.approx(np.vdot(x, grad), rel=1e-12)

    @pytest.mark.parametrize("k, no_channels", [(0, False), (3, True)])
    def test_no_boxes_or_no_channels(self, on, k, no_channels):
        case = self.adjoint_cases[0]
        full = self.input_shape(case)
        shape = (full[0], 0 if no_channels else full[1], *full[2:])
        x = np.ones(shape, np.float32)
        boxes = self.boxes(case)[:k]
        extras = {n: on.put(v) for n, v in self.extras(boxes, case, np.float32).items()}
        rois = on.put(rois_for(boxes, np.float32))
        out = on.get(self.forward(on.put(x), rois, case, **extras))
        c_out, *size = self.output_tail(case)
        assert out.shape == (k, 0 if no_channels else c_out, *size)
        g = on.put(np.ones(out.shape, np.float32))
        grad = on.get(self.backward(g, on.put(x), rois, case, **extras))
        assert grad.shape == shape and not grad.any()
        if self.box_backward is not None:
            box = on.get(self.box_backward(g, on.put(x), rois, case, **extras))
            assert box.shape == (k, 5) and not box.any()

    def test_deterministic_repeats_its_bits(self, on, dtype):
        """``deterministic=True`` gives the same bits on every call, the oracle's gradient."""
        case = self.adjoint_cases[0]
        boxes, _, (x, rois, extras) = self.inputs(on, dtype, case)
        g = on.put(self.gradient(dtype, len(boxes), case))
        first = on.get(self.backward(g, x, rois, case, deterministic=True, **extras))
        for _ in range(2):
            again = on.get(self.backward(g, x, rois, case, deterministic=True, **extras))
            np.testing.assert_array_equal(again, first)
        assert_close(first, self._oracle("backward", dtype, _frozen(case)), dtype)

    def test_deterministic_repeats_its_bits_on_many_boxes(self, cuda_on, dtype):
        """On a GPU, thousands of atomic adds land on every cell in another order on each run:
        ``deterministic=True`` keeps its bits. (The stand-in runs one host thread, with no
        order to vary: a few boxes cover the same code.)"""
        case = self.adjoint_cases[0]
        zoo = self.boxes(case)
        k = 256 if STANDIN else 4096
        jitter = np.random.default_rng(2).uniform(-0.5, 0.5, (k, zoo.shape[1]))
        jitter[:, 0] = 0  # the batch index
        boxes = np.tile(zoo, (-(-k // len(zoo)), 1))[:k] + jitter
        inputs = self.host_inputs(dtype, case, boxes)
        first = self.everything(cuda_on, *inputs, case, deterministic=True)
        for _ in range(2):
            again = self.everything(cuda_on, *inputs, case, deterministic=True)
            for a, b in zip(first, again, strict=True):
                np.testing.assert_array_equal(a, b)

    def test_validation(self, row):
        """Each row of the table: a call on otherwise valid inputs, its exception and message."""
        _, call, error, message = row
        case = self.adjoint_cases[0]
        boxes = self.boxes(case)
        valid = types.SimpleNamespace(
            x=features(np.float64, 0, self.input_shape(case)),
            boxes=boxes,
            g=self.gradient(np.float64, len(boxes), case),
            **self.extras(boxes, case, np.float64),
        )
        with pytest.raises(error, match=message):
            call(valid)

    def test_deterministic_ignores_the_order_of_boxes(self, kernels_on, dtype):
        """Permuting the boxes reorders the kernels' atomic sums: ``deterministic=True`` keeps
        its bits. On the host kernels the default sums change with the order (so the check can
        fail). (The NumPy backend sums in box order, the same on every run.)"""
        on = kernels_on
        case = self.adjoint_cases[0]
        zoo = self.boxes(case)
        boxes = np.vstack([zoo, zoo + np.r_[0, np.full(zoo.shape[1] - 1, 0.3)]])  # overlapping
        x, rois, extras, g = self.host_inputs(dtype, case, boxes)
        order = np.random.default_rng(1).permutation(len(rois))

        def run(rows, deterministic):
            rest = {k: v[rows] for k, v in extras.items()}
            results = self.everything(on, x, rois[rows], rest, g[rows], case, **deterministic)
            # The gradients; those of each box (offsets, boxes) back in the first order.
            back = np.argsort(rows)
            return [r[back] if len(r) == len(rows) else r for r in results[1:]]

        for det in (True, False):
            first = run(np.arange(len(rois)), {"deterministic": det})
            again = run(order, {"deterministic": det})
            same = [np.array_equal(a, b) for a, b in zip(first, again, strict=True)]
            if det:
                assert all(same)
            elif on.name == "host":
                assert not all(same)

    def test_box_list_equals_the_array(self, on):
        """A list of per-image (L, .) arrays is the (K, .) array of their rows, image by image."""
        case = self.adjoint_cases[0]
        x, rois, extras, g = self.host_inputs(np.float32, case)
        rows = np.argsort(rois[:, 0], kind="stable")
        rois, g = rois[rows], g[rows]
        extras = {k: v[rows] for k, v in extras.items()}
        per_image = [on.put(rois[rois[:, 0] == i, 1:]) for i in range(len(x))]
        whole = self.everything(on, x, rois, extras, g, case)
        listed = self.everything(on, x, per_image, extras, g, case)
        for a, b in zip(whole, listed, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_strided_inputs_are_read_and_not_written(self, on):
        """Fortran-ordered features and strided boxes, gradients and extras: the same results
        as contiguous ones, and no input written."""
        case = self.adjoint_cases[0]
        inputs = self.host_inputs(np.float64, case)
        x, rois, extras, g = inputs

        def strided(a):
            wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
            wide[..., ::2] = a
            return wide[..., ::2]

        before = [a.copy() for a in (x, rois, g, *extras.values())]
        views = {k: strided(v) for k, v in extras.items()}
        odd = self.everything(on, np.asfortranarray(x), strided(rois), views, strided(g), case)
        for a, b in zip(odd, self.everything(on, *inputs, case), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(before, (x, rois, g, *extras.values()), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_int64_entry_points(self, kernels_on, monkeypatch):
        """With every array counted as large, every launch takes its _i64 entry point: the same
        bits."""
        case = self.adjoint_cases[0]
        inputs = self.host_inputs(np.float64, case)
        narrow = self.everything(kernels_on, *inputs, case)
        narrow += self.everything(kernels_on, *inputs, case, deterministic=True)[1:]
        entries = []
        run = _launch.Device.run

        def recording(device, *args, **kwargs):
            def launch(name, entry, *rest, **options):
                entries.append(entry)
                return device.launch(name, entry, *rest, **options)

            return run(types.SimpleNamespace(launch=launch), *args, **kwargs)

        monkeypatch.setattr(_launch, "LARGE", 0)
        monkeypatch.setattr(_launch.Device, "run", recording)
        wide = self.everything(kernels_on, *inputs, case)
        wide += self.everything(kernels_on, *inputs, case, deterministic=True)[1:]
        assert entries and all(entry.endswith("_i64") for entry in entries)
        for a, b in zip(narrow, wide, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_rows_naming_no_image_give_zeros(self, kernels_on, monkeypatch):
        """Unchecked (as on a GPU without eager checks), a row whose batch index names no image
        reaches the kernels, which read nothing for it and write zeros."""
        case = self.adjoint_cases[0]
        x, rois, extras, g = self.host_inputs(np.float32, case)
        bad = np.vstack([rois[:2], rois[:2]])
        bad[:2, 0] = (len(x) + 3, -1)
        g2 = np.vstack([g[:2], g[:2]])
        extras2 = {k: np.concatenate([v[:2], v[:2]]) for k, v in extras.items()}
        good = self.everything(
            kernels_on, x, rois[:2], {k: v[:2] for k, v in extras.items()}, g[:2], case
        )
        monkeypatch.setattr(_validate, "_eager", lambda xp: False)
        monkeypatch.setattr(_validate, "_disable_bad_rows", lambda xp, rois, ok: rois)
        out, grad, *per_box = self.everything(kernels_on, x, bad, extras2, g2, case)
        assert not out[:2].any()
        np.testing.assert_array_equal(out[2:], good[0])
        np.testing.assert_allclose(grad, good[1], rtol=1e-6, atol=1e-6)
        for a, b in zip(per_box, good[2:], strict=True):  # offset, mask and box gradients
            assert not a[:2].any()
            np.testing.assert_allclose(a[2:], b, rtol=1e-6, atol=1e-6)

    def test_cpu_chunks_give_the_same_result(self, monkeypatch):
        """A tiny budget splits the boxes into many chunks on the NumPy backend: the same
        values. So do the products with the features by pieces of a box (_sampling.APPLY)."""
        case = self.adjoint_cases[0]
        inputs = self.host_inputs(np.float64, case)
        whole = self.everything(On_CPU, *inputs, case)
        # RoI Align's few bins take no chunks: here they do, against its few-bin path above.
        monkeypatch.setattr(importlib.import_module("cuproi._cpu.roi_align"), "FEW_BINS", 0)
        monkeypatch.setattr(_sampling, "APPLY", 1)  # a piece per box
        apply, boxes = _sampling.apply, []
        monkeypatch.setattr(_sampling, "apply", lambda *a: boxes.append(len(a[2])) or apply(*a))
        chunks, seen = _sampling.chunks, []

        def small(cost, budget=None):
            parts = list(chunks(cost, 40))
            seen.append(len(parts))
            return iter(parts)

        for change in (None, small):
            if change is not None:
                monkeypatch.setattr(_sampling, "chunks", change)
            split = self.everything(On_CPU, *inputs, case)
            for a, b in zip(whole, split, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
        assert seen and max(seen) > 3
        assert not boxes or max(boxes) > 1  # where the op has products by pieces


class BoxGradientChecks:
    """The checks of an op's box backward, for a ``RoIOpTester`` whose op has one: a base before
    ``RoIOpTester``, with ``box_backward`` and ``oracle_box_backward`` declared.

    The boxes are random, at least 1.3 cells wide and high, where the box gradient is smooth:
    against the oracle on every backend (with ``deterministic=True`` too, within
    ``box_oracle_tolerance``), and against central differences of the oracle's forward on the
    NumPy backend.
    """

    box_cases = [{}]

    def oracle_box_backward(self, g, x, boxes, case, coord_dtype, **extras):
        """The float64 oracle's (K, 5) gradient with respect to the boxes."""
        raise NotImplementedError

    def smooth_inputs(self, dtype, case, seed=0, k=8):
        """NumPy (x, rois, extras, g) of ``case`` for ``k`` random boxes of at least 1.3 cells."""
        rng = np.random.default_rng(seed)
        corner = rng.uniform(-2, [8, 6], (k, 2)) / case.get("scale", 1.0)
        size = rng.uniform(1.3, 7, (k, 2)) / case.get("scale", 1.0)
        boxes = np.column_stack([rng.integers(0, 2, k), corner, corner + size])
        return self.host_inputs(dtype, case, boxes)

    def box_oracle_tolerance(self, dtype, want):
        """``assert_allclose``'s tolerance of the box backward against the oracle's ``want``."""
        return box_tolerance(dtype, want)

    def test_box_backward_matches_oracle(self, on, dtype, box_case):
        """The box backward, with and without ``deterministic=True``, against the oracle."""
        x, rois, extras, g = self.smooth_inputs(dtype, box_case)
        wide = {k: None if v is None else v.astype(np.float64) for k, v in extras.items()}
        coord = compute_dtype(dtype).type
        args = (g.astype(np.float64), x.astype(np.float64), rois.astype(np.float64))
        want = self.oracle_box_backward(*args, box_case, coord, **wide)
        put = {k: on.put(v) for k, v in extras.items()}
        for options in ({}, {"deterministic": True}):
            raw = self.box_backward(on.put(g), on.put(x), on.put(rois), box_case, **options, **put)
            got = on.get(raw)
            assert got.dtype == compute_dtype(dtype) and got.shape == rois.shape
            assert not got[:, 0].any()  # the batch index has no gradient
            np.testing.assert_allclose(got, want, **self.box_oracle_tolerance(dtype, want))

    def test_box_backward_central_differences(self, box_case):
        x, rois, extras, g = self.smooth_inputs(np.float64, box_case, seed=1)
        grad = self.box_backward(g, x, rois, box_case, **extras)

        def forward(r):
            return self.oracle(x, r, box_case, np.float64, **extras)

        numeric = calculus.numeric_box_grad(forward, g, rois)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


class PositionSensitiveChecks:
    """The checks of a position-sensitive op (R-FCN), for its ``RoIOpTester`` (a base before it),
    with ``op`` its public forward's name and cases naming a ``size`` (PH, PW).

    Bin (ph, pw) of output channel c reads input channel (c * PH + ph) * PW + pw, so the features
    of a case take ``c_out * PH * PW`` channels. Checks: the channel map; the channels a multiple
    of the bins (of an int ``output_size`` n too: n * n), forward and backward, on every backend;
    float16 features against the oracle, deterministic sums included, and the CPU backward
    writing its gradient in runs of pixels (each on the cases ``grids`` names for it).
    """

    c_out = 2
    op = None
    test_validation = None  # its checks are test_channels_are_a_multiple_of_the_bins

    def input_shape(self, case):
        n, _, h, w = self.shape
        ph, pw = case["size"]
        return (n, self.c_out * ph * pw, h, w)

    def output_tail(self, case):
        return (self.c_out, *case["size"])

    def public(self, suffix=""):
        """The public forward, or with ``suffix="_backward"`` the backward (looked up on each
        call: conftest wraps the public functions of GPU tests)."""
        return getattr(cuproi, self.op + suffix)

    def test_channel_mapping(self, on):
        """Output channel c, bin (ph, pw) reads input channel (c * PH + ph) * PW + pw."""
        channels = np.arange(3 * 2 * 3, dtype=np.float32)
        x = np.broadcast_to(channels[None, :, None, None], (1, 18, 5, 7)).copy()
        rois = np.array([[0, 0.0, 0.0, 7.0, 5.0]], np.float32)
        out = on.get(self.public()(on.put(x), on.put(rois), (2, 3)))
        np.testing.assert_allclose(out, channels.reshape(1, 3, 2, 3), rtol=1e-6)

    def test_an_int_output_size_is_square(self, on):
        """output_size n is (n, n): n * n bins to a group of channels (and the defaults:
        spatial_scale 1, adaptive sampling)."""
        x = on.put(features(np.float32, shape=(2, 8, 10, 12)))
        rois = on.put(rois_for(box_zoo(1.0), np.float32))
        out = on.get(self.public()(x, rois, 2))
        assert out.shape == (12, 2, 2, 2)
        explicit = {"size": (2, 2), "scale": 1.0, "ratio": -1}
        np.testing.assert_array_equal(out, on.get(self.forward(x, rois, explicit)))
        with pytest.raises(ValueError, match="8 channels, .* not a multiple of output_size 3 x 3"):
            self.public()(x, rois, 3)

    @pytest.mark.parametrize("channels", [5, 7, 13])
    def test_channels_are_a_multiple_of_the_bins(self, on, channels):
        """C_out groups of PH * PW score maps, else a ValueError naming the counts; the backward
        checks the channels of input_shape, and a grad_output of C (not C_out) channels."""
        x = on.put(features(np.float32, shape=(2, channels, 10, 12)))
        rois = on.put(rois_for(box_zoo(1.0), np.float32))
        message = rf"{channels} channels, which is not a multiple of output_size 2 x 3 = 6"
        with pytest.raises(ValueError, match="input has " + message):
            self.public()(x, rois, (2, 3))
        backward = self.public("_backward")
        g = on.put(np.ones((12, 2, 2, 3), np.float32))
        with pytest.raises(ValueError, match="input_shape has " + message):
            backward(g, rois, (2, channels, 10, 12), (2, 3))
        g = on.put(np.ones((12, 12, 2, 3), np.float32))  # the input's channels
        with pytest.raises(ValueError, match=r"grad_output must have shape \(12, 2, 2, 3\)"):
            backward(g, rois, (2, 12, 10, 12), (2, 3))

    def test_float16(self, on, case):
        """float16 features, float32 coordinates and accumulation: the oracle on the same
        halves, with and without deterministic sums (which repeat their bits)."""
        x, rois, _, g = self.host_inputs(np.float16, case)
        assert rois.dtype == np.float32  # boxes are never rounded to half
        boxes, x64 = self.boxes(case), x.astype(np.float64)
        out = on.get(self.forward(on.put(x), on.put(rois), case))
        assert out.dtype == np.float16
        assert_close(out, self.oracle(x64, boxes, case, np.float32), np.float16)
        want = self.oracle_backward(g.astype(np.float64), x64, boxes, case, np.float32)
        grads = [
            on.get(self.backward(on.put(g), x, on.put(rois), case, deterministic=det))
            for det in (False, True, True)
        ]
        np.testing.assert_array_equal(grads[1], grads[2])
        for grad in grads:
            assert grad.dtype == np.float16
            np.testing.assert_allclose(grad.astype(np.float64), want, rtol=4e-3, atol=1e-2)

    def test_cpu_backward_in_runs_of_pixels(self, monkeypatch, case):
        """The CPU backward writes its gradient a run of pixels at a time: many runs, one short."""
        monkeypatch.setattr(_cells, "BLOCK", 7)  # 120 pixels: 17 runs of 7, then 1
        x, rois, _, g = self.host_inputs(np.float64, case)
        want = self.oracle_backward(g, x, self.boxes(case), case, np.float64)
        assert_close(self.backward(g, x, rois, case), want, np.float64)


On_CPU = types.SimpleNamespace(name="cpu", put=lambda a: a, get=np.asarray)
