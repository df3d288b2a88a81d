"""ONNX export (``torch.onnx.export(..., dynamo=True)``, no other argument) run in onnxruntime.

Each exported model has a dynamic box count and runs on several box sets: random, degenerate
(zero size, a point), out of the map, and none; its output is compared with eager cuproi.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import cuproi.torch as ct  # noqa: E402


class Boxes(torch.nn.Module):
    """A model that pools (K, 5) boxes with ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, rois):
        return self.module(x, rois)


def export(module, x, rois):
    """The ONNX model of ``Boxes(module)`` with a dynamic box count."""
    boxes = torch.export.Dim("boxes", min=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Boxes(module), (x, rois), dynamo=True, dynamic_shapes=({}, {0: boxes}), verbose=False
        )
    return program.model_proto


def box_sets():
    rng = np.random.default_rng(25)
    corners = rng.uniform(-5, 20, (40, 2, 2))
    random = np.concatenate(
        [rng.integers(0, 2, (40, 1)), corners.min(axis=1), corners.max(axis=1)], axis=1
    )
    degenerate = [
        [0, 3, 3, 3, 3],  # a point
        [1, 4, 4, 4.5, 9],  # thinner than a cell
        [0, 12, 10, 12, 10],  # a point on the far corner
        [1, -5, -5, -2, -1],  # outside the map
        [0, 11, 9, 30, 40],  # mostly outside
        [0, -1, -1, 0, 0],
    ]
    return [np.asarray(b, dtype=np.float32) for b in (random, degenerate, np.zeros((0, 5)))]


@pytest.mark.parametrize(
    "module",
    [
        ct.RoIAlign((3, 4), 0.5, -1, aligned=False),
        ct.RoIAlign(2, 1.0, 2, aligned=True),
        ct.RoIAlign((3, 2), 0.75, 0, aligned=True),
        ct.RoIPool((3, 4), 0.5),
    ],
    ids=repr,
)
def test_exports_equal_eager_in_onnxruntime(module):
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    proto = export(module, x, torch.tensor([[0, 1.0, 1, 8, 9], [1, 2, 3, 5, 4]]))
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # standard only
    session = ort.InferenceSession(proto.SerializeToString())
    for rois in box_sets():
        (got,) = session.run(None, {"x": x.numpy(), "rois": rois})
        want = module(x, torch.from_numpy(rois)).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def root_cause(error):
    while error.__cause__ is not None:
        error = error.__cause__
    return error


@pytest.mark.parametrize(
    ("module", "inputs", "name"),
    [
        (ct.RoIAlign(2, 1.0, 2, pool_mode="max"), "boxes", "roi_align has no ONNX export in 'max'"),
        (ct.PSRoIAlign(2, 1.0, 2), "boxes", "ps_roi_align"),
        (ct.PSRoIPool(2, 1.0), "boxes", "ps_roi_pool"),
        (ct.PrRoIPool(2), "boxes", "prroi_pool"),
        (ct.DeformRoIPool(2), "boxes", "deform_roi_pool"),
        (ct.RoIAlignRotated(2, 1.0), "rotated", "roi_align_rotated"),
        (ct.MultiScaleRoIAlign(["p2"], 2, 2), "levels", "multi_scale_roi_align"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_ops_without_translation_refuse_by_name(module, inputs, name):
    x = torch.rand(1, 8, 10, 12)
    args = {
        "boxes": (x, torch.tensor([[0, 1.0, 1, 8, 9]])),
        "rotated": (x, torch.tensor([[0, 5.0, 5, 4, 3, 30]])),
        "levels": ({"p2": x}, [torch.tensor([[1.0, 1, 8, 9]])], [(10, 12)]),
    }[inputs]
    with pytest.raises(Exception) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, dynamo=True, verbose=False)
    cause = root_cause(caught.value)
    assert isinstance(cause, NotImplementedError)
    assert f"cuproi.torch.{name}" in str(cause)
