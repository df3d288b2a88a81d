"""The backends mirror the public API: cuproi._cpu and cuproi._cuda export exactly the op
functions of cuproi, each with the public parameters in the public order, as validated (see
the cuproi._cpu docstring for the few that differ)."""

import inspect

import pytest

import cuproi
from cuproi import _cpu, _cuda

# Public names that are not ops.
NOT_OPS = {"__version__", "set_eager_checks", "quantization_error"}
OPS = sorted(set(cuproi.__all__) - NOT_OPS)
# The documented differences: `boxes` arrives validated as `rois`; the backwards that read the
# output size from grad_output leave output_size out; the multi-level ops take the level
# thresholds the public layer derives from canonical_scale and canonical_level.
RENAMED = {"boxes": "rois"}
OMITTED = {"output_size"}
DERIVED = {("canonical_scale", "canonical_level"): "thresholds"}


def expected_parameters(op):
    """The backend's parameter names of the public function ``op``."""
    names = [RENAMED.get(p, p) for p in inspect.signature(getattr(cuproi, op)).parameters]
    if op.endswith("_backward") and op != "roi_pool_backward":
        names = [n for n in names if n not in OMITTED]
    for public, backend in DERIVED.items():
        if public[0] in names:
            at = names.index(public[0])
            names = [*names[:at], backend, *(n for n in names[at:] if n not in public)]
    return names


@pytest.mark.parametrize("backend", [_cpu, _cuda], ids=["cpu", "cuda"])
def test_the_backends_export_the_public_ops(backend):
    assert sorted(backend.__all__) == OPS
    assert all(callable(getattr(backend, op)) for op in OPS)


@pytest.mark.parametrize("backend", [_cpu, _cuda], ids=["cpu", "cuda"])
@pytest.mark.parametrize("op", OPS)
def test_parameters_follow_the_public_function(backend, op):
    public = inspect.signature(getattr(cuproi, op)).parameters
    got = inspect.signature(getattr(backend, op)).parameters
    assert list(got) == expected_parameters(op)
    for name, p in got.items():  # keyword-only stays keyword-only, and the reverse
        public_name = {v: k for k, v in RENAMED.items()}.get(name, name)
        if public_name in public:
            assert p.kind == public[public_name].kind, name


def test_both_backends_have_the_same_signatures():
    for op in OPS:
        assert inspect.signature(getattr(_cpu, op)) == inspect.signature(getattr(_cuda, op)), op
