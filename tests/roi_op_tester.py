"""The checks every op shares, written once: a test class per op subclasses ``RoIOpTester``.

A subclass declares its op (the public forward and backward, called through ``cuproi``), the
float64 loop oracle of ``tests/oracles``, its inputs (features, boxes from the box zoo, extra
inputs such as offsets) and its parameter grids; ``conftest.pytest_generate_tests`` hands the
grids to the checks. Every check runs on the backends of the ``on`` fixture (conftest): ``cpu``
(NumPy), ``host`` (the CUDA kernels compiled for the host) and ``cuda`` (CuPy arrays: a real GPU,
or the CuPy stand-in, which runs the same kernels through ``cuproi._cuda``).

Checks: forward and backward against the oracle for every dtype (``conftest.TOLERANCE``), the
adjoint identity ``<A x, g> == <x, A^T g>``, no boxes and no channels, ``deterministic=True``
repeating its bits, and the validation table.
"""

import types

import numpy as np
import pytest
from conftest import TOLERANCE

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
    """

    shape = SHAPE
    dtypes = (np.float32, np.float64)
    forward_cases = [{}]
    backward_cases = [{}]
    adjoint_cases = [{}]
    grids = {}
    invalid = []

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

    # ---- the checks ---------------------------------------------------------------------------

    def test_forward_matches_oracle(self, on, dtype, case):
        boxes, _, (x, rois, extras) = self.inputs(on, dtype, case)
        out = on.get(self.forward(x, rois, case, **extras))
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

    def test_deterministic_repeats_its_bits(self, on, dtype):
        """``deterministic=True`` gives the same bits on every call, and the same gradient."""
        case = self.adjoint_cases[0]
        boxes, _, (x, rois, extras) = self.inputs(on, dtype, case)
        g = on.put(self.gradient(dtype, len(boxes), case))
        first = on.get(self.backward(g, x, rois, case, deterministic=True, **extras))
        for _ in range(2):
            again = on.get(self.backward(g, x, rois, case, deterministic=True, **extras))
            np.testing.assert_array_equal(again, first)
        assert_close(first, on.get(self.backward(g, x, rois, case, **extras)), dtype)

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
