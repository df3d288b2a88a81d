"""ONNX export (``torch.onnx.export(..., dynamo=True)``, no other argument) run in onnxruntime;
torch's legacy exporter (``dynamo=False``) too.

Each exported model has a dynamic box count and runs on several box sets: random, degenerate
(zero size, a point), out of the map, and none; its output is compared with eager cuproi.
"""

import io
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import cuproi.torch as ct  # noqa: E402

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])


class Boxes(torch.nn.Module):
    """A model that pools (K, 5) boxes with ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, rois):
        return self.module(x, rois)


def export(model, *args, per_box=1, dynamo=True):
    """The ONNX model of ``model(*args)`` with a dynamic box count K.

    The last ``per_box`` arguments (the boxes last) have K rows. ``dynamo=False``: by torch's
    legacy exporter (deprecated: its warning is ignored), whose box count is a dynamic axis.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            boxes = torch.export.Dim("boxes", min=0)
            dynamic = ({},) * (len(args) - per_box) + ({0: boxes},) * per_box
            program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic)
            proto = program.model_proto
        else:
            names = [f"input{i}" for i in range(len(args))]
            axes = {name: {0: "boxes"} for name in names[len(args) - per_box :]}
            buffer = io.BytesIO()
            torch.onnx.export(model, args, buffer, dynamo=False, input_names=names,
                              dynamic_axes=axes)  # fmt: skip
            proto = onnx.load_from_string(buffer.getvalue())
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # standard only
    return proto


def assert_runs_as_eager(proto, model, inputs, box_sets):
    """``proto`` in onnxruntime equals eager ``model(*inputs, *boxes)`` on every box set.

    A box set is an array of boxes, or a tuple of per-box arrays (the boxes last).
    """
    session = ort.InferenceSession(proto.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    for boxes in box_sets:
        boxes = boxes if isinstance(boxes, tuple) else (boxes,)
        feeds = [t.numpy() for t in inputs] + list(boxes)
        (got,) = session.run(None, dict(zip(names, feeds, strict=True)))
        want = model(*inputs, *map(torch.from_numpy, boxes)).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def non_finite(x):
    """``x`` with NaN and infinite cells on a corner, an edge and inside (every image)."""
    x = x.clone()
    x[:, 0, 0, 1], x[:, 1, 0, 0], x[:, 2, 3, 7] = float("nan"), float("inf"), float("nan")
    x[:, 1, -1, -1], x[:, 0, 5, 5] = -float("inf"), float("inf")
    return x


def random_boxes(seed, count, low, high):
    """``count`` (K, 5) boxes in two images with corners in [low, high)."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(low, high, (count, 2, 2))
    images = rng.integers(0, 2, (count, 1))
    return np.concatenate([images, corners.min(axis=1), corners.max(axis=1)], axis=1)


def box_sets():
    random = random_boxes(25, 40, -5, 20)
    degenerate = [
        [0, 3, 3, 3, 3],  # a point
        [1, 4, 4, 4.5, 9],  # thinner than a cell
        [0, 12, 10, 12, 10],  # a point on the far corner
        [1, -5, -5, -2, -1],  # outside the map
        [0, 11, 9, 30, 40],  # mostly outside
        [0, -1, -1, 0, 0],
        [1, 8, 2, 3, 7],  # flipped: x2 < x1
        [0, 2, 9, 7, 1],  # flipped: y2 < y1
    ]
    return [np.asarray(b, dtype=np.float32) for b in (random, degenerate, np.zeros((0, 5)))]


@pytest.mark.parametrize(
    "module",
    [
        ct.RoIAlign((3, 4), 0.5, -1, aligned=False),
        ct.RoIAlign(2, 1.0, 2, aligned=True),
        ct.RoIAlign((3, 2), 0.75, 0, aligned=True),
        ct.RoIPool((3, 4), 0.5),
        ct.DeformRoIPool((3, 2), 0.5, 0),  # no offsets
        ct.RoIAlign((3, 2), 0.5, 2, aligned=False, pool_mode="max"),
        ct.RoIAlign(2, 1.0, 0, aligned=True, pool_mode="max"),
        ct.PSRoIAlign((3, 2), 0.5, 2),  # 12 channels: 2 per bin
        ct.PSRoIAlign(2, 1.0, -1),
        ct.PSRoIPool((3, 2), 0.5),
        ct.PSRoIPool(2, 1.0),
        ct.PrRoIPool((3, 2), 0.5),
        ct.PrRoIPool(2, 1.0),
    ],
    ids=repr,
)
@EXPORTERS
def test_exports_equal_eager_in_onnxruntime(module, dynamo):
    x = torch.rand(2, 12, 10, 12, generator=torch.Generator().manual_seed(0))
    model = Boxes(module)
    proto = export(model, x, torch.tensor([[0, 1.0, 1, 8, 9], [1, 2, 3, 5, 4]]), dynamo=dynamo)
    assert_runs_as_eager(proto, model, [x], box_sets())
    native = isinstance(module, ct.RoIPool) or getattr(module, "pool_mode", "") == "avg"
    if not native:  # compositions: equal to eager on non-finite features too (not RoiAlign)
        assert_runs_as_eager(proto, model, [non_finite(x)], box_sets())


class Pyramid(torch.nn.Module):
    """A model that pools (K, 5) boxes from three levels with multi_scale_roi_align."""

    def __init__(self, *options):
        super().__init__()
        self.options = options

    def forward(self, p2, p3, p4, rois):
        return ct.multi_scale_roi_align([p2, p3, p4], rois, (3, 2), [1 / 4, 1 / 8, 1 / 16],
                                        *self.options)  # fmt: skip


def pyramid_box_sets():
    """Boxes of every level, on the level steps (sides 56 and 112), degenerate and none."""
    random = random_boxes(7, 60, -20, 200)
    edges = [
        [0, 0, 0, 56, 56],  # on the step to level 3
        [1, 10, 10, 66, 65.99],  # just below it
        [0, 4, 4, 116, 116],  # on the step to level 4
        [1, 3, 3, 3, 3],  # a point: the finest level
        [0, 50, 40, 10, 200],  # flipped: negative area, the finest level
        [1, 150, 130, 400, 300],  # mostly outside the image
    ]
    return [np.asarray(b, dtype=np.float32) for b in (random, edges, np.zeros((0, 5)))]


@pytest.mark.parametrize("options", [(2, False), (-1, True)], ids=repr)
@EXPORTERS
def test_multi_scale_exports_equal_eager_in_onnxruntime(options, dynamo):
    g = torch.Generator().manual_seed(1)
    levels = [torch.rand(2, 3, 32 // 2**i, 40 // 2**i, generator=g) for i in range(3)]
    model = Pyramid(*options)
    rois = torch.tensor([[0, 1.0, 1, 30, 40], [1, 2, 3, 150, 120]])
    proto = export(model, *levels, rois, dynamo=dynamo)
    assert_runs_as_eager(proto, model, levels, pyramid_box_sets())


class Deformed(torch.nn.Module):
    """A model that pools (K, 5) boxes with (K, 2, 3, 2) offsets and a (K, 1, 3, 2) mask."""

    def __init__(self, sampling_ratio, gamma, masked):
        super().__init__()
        self.options = sampling_ratio, gamma, masked

    def forward(self, x, offset, mask, rois):
        ratio, gamma, masked = self.options
        mask = mask if masked else None
        return ct.deform_roi_pool(x, rois, offset, (3, 2), 0.5, ratio, gamma, mask)


def deform_sets():
    """(offset, mask, boxes) of box_sets(), with offsets of several cells; some not finite."""
    rng = np.random.default_rng(4)
    sets = []
    for rois in box_sets():
        offset = rng.normal(0, 3, (len(rois), 2, 3, 2)).astype(np.float32)
        if len(rois) > 2:  # bins without a place on the map: NaN
            offset[1, 0, 1, 1], offset[2, 1, 0, 0] = np.nan, -np.inf
        mask = rng.uniform(0, 1, (len(rois), 1, 3, 2)).astype(np.float32)
        sets.append((offset, mask, rois))
    return sets


@pytest.mark.parametrize(
    ("options", "dynamo"),
    # The legacy exporter drops an unused input: without a mask, its graph takes one less.
    [((2, 0.1, True), True), ((0, 0.3, False), True), ((0, 0.3, True), False)],
    ids=lambda v: ("dynamo" if v else "legacy") if isinstance(v, bool) else repr(v),
)
def test_deform_roi_pool_exports_equal_eager_in_onnxruntime(options, dynamo):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 10, 12, generator=g)
    model = Deformed(*options)
    rois = torch.tensor([[0, 1.0, 1, 8, 9], [1, 2, 3, 5, 4]])
    offset, mask = torch.rand(2, 2, 3, 2, generator=g), torch.rand(2, 1, 3, 2, generator=g)
    proto = export(model, x, offset, mask, rois, per_box=3, dynamo=dynamo)
    for features in (x, non_finite(x)):
        assert_runs_as_eager(proto, model, [features], deform_sets())


def rotated_box_sets():
    """Rotated boxes: random (any angle), degenerate, on quarter turns, outside, and none."""
    rng = np.random.default_rng(9)
    n = 40
    columns = [(0, 2), (-8, 30), (-8, 26), (0, 20), (0, 20), (-400, 400)]
    random = np.stack([rng.uniform(lo, hi, n) for lo, hi in columns], axis=1)
    random[:, 0] = np.floor(random[:, 0])
    degenerate = [
        [0, 5, 5, 0, 0, 10],  # a point
        [1, 3, 4, 0, 5, 90],  # a line
        [0, 6, 6, 8, 4, 180],
        [1, -30, -30, 4, 4, 45],  # outside the map
        [0, 12, 10, 30, 40, -90],  # mostly outside
        [1, 0, 0, 2, 2, 270],  # on the corner
        [0, 6, 5, -4, 3, 30],  # negative width
    ]
    return [np.asarray(b, dtype=np.float32) for b in (random, degenerate, np.zeros((0, 6)))]


@pytest.mark.parametrize(
    "module",
    [
        ct.RoIAlignRotated((3, 2), 0.5, 2, aligned=True),
        ct.RoIAlignRotated((2, 3), 1.0, 0, aligned=False, clockwise=True),
        ct.RoIAlignRotated(2, 0.75, -1, aligned=True),
    ],
    ids=repr,
)
@EXPORTERS
def test_rotated_exports_equal_eager_in_onnxruntime(module, dynamo):
    x = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    model = Boxes(module)
    rois = torch.tensor([[0, 5.0, 5, 4, 3, 30], [1, 2, 3, 5, 4, 0]])
    proto = export(model, x, rois, dynamo=dynamo)
    for features in (x, non_finite(x)):
        assert_runs_as_eager(proto, model, [features], rotated_box_sets())


def test_import_registers_translations_once_an_exporter_is_imported():
    """``import cuproi.torch`` spends no time on either exporter, until it is imported."""
    code = (
        "import sys, cuproi.torch\n"
        "assert not {'torch.onnx', 'onnxscript'} & set(sys.modules)\n"
        "import torch.onnx\n"
        "assert 'cuproi.torch._onnx_legacy' in sys.modules\n"  # the symbolics registered
        "assert 'onnxscript' not in sys.modules\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
