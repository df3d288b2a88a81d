"""cuproi._workloads: seeded problems of the stated shapes, calls that reach every public
function, and one asv benchmark module per op whose timed calls exist."""

import importlib
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

import cuproi
from cuproi import _workloads

sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
import benchmarks  # noqa: E402


def tiny(op, **kw):
    """A problem small enough to run every call in milliseconds."""
    return _workloads.problem(op, 6, 3, channels=2, stride=16, **kw)


@pytest.mark.parametrize("op", _workloads.OPS)
def test_problem_shapes_and_seed(op):
    p = tiny(op)
    assert p.boxes.shape == (6, 6 if op == "roi_align_rotated" else 5)
    assert p.boxes.dtype == np.float32 and np.isin(p.boxes[:, 0], [0, 1]).all()
    assert p.grad.shape == (6, 2, 3, 3) and p.output_size == (3, 3)
    levels = p.x if isinstance(p.x, list) else [p.x]
    channels = 2 * 9 if op.startswith("ps_") else 2
    assert levels[0].shape == (2, channels, 50, 76)
    again, other = tiny(op), tiny(op, seed=1)
    for name in ("x", "boxes", "grad", "offset", "mask"):
        a, b, c = getattr(p, name), getattr(again, name), getattr(other, name)
        if a is not None:
            np.testing.assert_array_equal(np.concatenate(a, None), np.concatenate(b, None))
            assert not np.array_equal(np.concatenate(a, None), np.concatenate(c, None))


def test_reference_sizes():
    x = _workloads.problem("roi_align", **_workloads.HEADS["box head"]).x
    assert x.shape == (2, 256, 100, 152)
    levels = _workloads.problem("multi_scale_roi_align", 4, **_workloads.PYRAMID).x
    assert [level.shape[2:] for level in levels] == [(200, 304), (100, 152), (50, 76), (25, 38)]
    assert np.array_equal(levels[0], _workloads.features(4))  # the finest level alone
    sides = np.diff(_workloads.boxes(1000, (16, 300))[:, 1:].reshape(-1, 2, 2), axis=1)
    assert 16 <= sides.min() and sides.max() <= 300


def test_offsets_and_dtypes():
    p = _workloads.problem("deform_roi_pool", 4, 7, channels=2, offset_sigma=0, dtype="float16")
    assert p.offset.shape == (4, 2, 7, 7) and not p.offset.any()
    assert p.mask.shape == (4, 1, 7, 7) and 0 <= p.mask.min() and p.mask.max() < 1
    assert p.x.dtype == p.grad.dtype == p.offset.dtype == np.float16
    assert p.boxes.dtype == np.float32


def test_calls_reach_every_public_function(monkeypatch):
    """Together the calls of the ops run every public function of every op."""
    ops = [
        name
        for name in cuproi.__all__
        if any(name == op or name.startswith(f"{op}_") for op in _workloads.OPS)
    ]
    called = set()

    def recorded(name, function):
        def call(*args, **kwargs):
            called.add(name)
            return function(*args, **kwargs)

        return call

    for name in ops:
        monkeypatch.setattr(cuproi, name, recorded(name, getattr(cuproi, name)))
    for op in _workloads.OPS:
        for call in _workloads.calls(op, tiny(op)).values():
            call()
    assert called == set(ops)


def bench_classes():
    for info in pkgutil.iter_modules(benchmarks.__path__):
        module = importlib.import_module(f"benchmarks.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                yield info.name, value


def test_one_benchmark_module_per_op_and_its_calls_exist():
    timed = {}
    for module, cls in bench_classes():
        if getattr(cls, "op", None) is None:
            continue
        assert module == f"bench_{cls.op}", (module, cls.__name__)
        names = set(_workloads.calls(cls.op, tiny(cls.op)))
        assert cls.timed and set(cls.timed) <= names, (module, cls.__name__)
        prefix = "track" if "DeviceTime" in [c.__name__ for c in cls.__mro__] else "time"
        assert all(callable(getattr(cls, f"{prefix}_{name}")) for name in cls.timed)
        timed.setdefault(cls.op, set()).update(cls.timed)
    assert set(timed) == set(_workloads.OPS)
