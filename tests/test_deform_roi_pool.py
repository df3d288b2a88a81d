"""Deformable RoI Pool (mmcv.ops.deform_roi_pool) on every backend against the float64 loop
oracle of tests/oracles/deform_roi_pool.py: the shared checks of roi_op_tester with and without
offsets, then what is particular to the offsets (their gradient against the oracle and against
finite differences, half precision, no boxes)."""

import numpy as np
import pytest
from conftest import TOLERANCE, host_backend
from oracles import deform_roi_pool as deform_oracle
from roi_op_tester import SHAPE, RoIOpTester, assert_close, box_zoo, features, rois_for

import cuproi
from cuproi._validate import compute_dtype

SIZE = (3, 4)


class TestDeformRoIPool(RoIOpTester):
    size = SIZE
    forward_cases = [
        {"scale": scale, "ratio": ratio, "offset": offset}
        for scale in (1.0, 0.7)
        for ratio in (0, 1, 2)
        for offset in (False, True)
    ]
    backward_cases = [{"scale": 0.7, "ratio": ratio, "offset": True} for ratio in (0, 2)]
    adjoint_cases = backward_cases
    grids = {"test_grad_offset_matches_oracle": backward_cases}
    test_validation = None  # test_validation.py checks the offsets with every op's arguments

    def extras(self, boxes, case, dtype):
        if not case["offset"]:
            return {"offset": None}
        offset = np.random.default_rng(1).normal(0, 2, (len(boxes), 2, *SIZE))
        return {"offset": offset.astype(compute_dtype(dtype))}

    def forward(self, x, boxes, case, offset, **options):
        return cuproi.deform_roi_pool(
            x, boxes, offset, SIZE, case["scale"], case["ratio"], 0.1, **options
        )

    def backward(self, g, x, boxes, case, offset, **options):
        return self.backwards(g, x, boxes, case, offset, **options)[0]

    def backwards(self, g, x, boxes, case, offset, **options):
        args = (SIZE, case["scale"], case["ratio"], 0.1)
        return cuproi.deform_roi_pool_backward(g, x, boxes, offset, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype, offset):
        args = (SIZE, case["scale"], case["ratio"], 0.1)
        return deform_oracle.deform_roi_pool(x, boxes, offset, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype, offset):
        args = (SIZE, case["scale"], case["ratio"], 0.1)
        return deform_oracle.deform_roi_pool_backward(
            g, x, boxes, offset, *args, coord_dtype=coord_dtype
        )[0]

    def test_grad_offset_matches_oracle(self, on, dtype, case):
        """The offsets' gradient within 10 times the dtype's tolerance; None without offsets."""
        boxes, (x, _, extras), (xd, rois, extras_d) = self.inputs(on, dtype, case)
        g = self.gradient(dtype, len(boxes), case)
        _, grad_offset, _ = self.backwards(on.put(g), xd, rois, case, **extras_d)
        _, expected = deform_oracle.deform_roi_pool_backward(
            g.astype(np.float64),
            x.astype(np.float64),
            boxes,
            extras["offset"],
            SIZE,
            case["scale"],
            case["ratio"],
            0.1,
            coord_dtype=compute_dtype(dtype).type,
        )
        rtol, atol = TOLERANCE[np.dtype(dtype)]
        np.testing.assert_allclose(on.get(grad_offset), expected, rtol=10 * rtol, atol=10 * atol)
        _, none, _ = self.backwards(on.put(g), xd, rois, case, None)
        assert none is None


def test_float16(on):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves."""
    x = features(np.float16)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    x64 = x.astype(np.float64)
    f32 = np.float32
    out = on.get(cuproi.deform_roi_pool(on.put(x), on.put(rois), None, SIZE, 0.5, 0, 0.1))
    assert_close(
        out,
        deform_oracle.deform_roi_pool(x64, boxes, None, (3, 4), 0.5, 0, 0.1, coord_dtype=f32),
        np.float16,
    )


def smooth_offsets(boxes, scale, ratio, gamma, seed, pooled=(3, 4), margin=1e-3):
    """Offsets for which no sample sits within `margin` of a kink of the bilinear surface (an
    integer position, or the -1 / size edges), so central differences are exact enough."""
    rng = np.random.default_rng(seed)
    _, _, h, w = SHAPE
    ph_, pw_ = pooled
    for _ in range(1000):
        offset = rng.normal(0, 1.5, (len(boxes), 2, ph_, pw_))
        ok = True
        for k, (_, x1, y1, x2, y2) in enumerate(boxes):
            sx, sy = x1 * scale - 0.5, y1 * scale - 0.5
            rw, rh = x2 * scale - 0.5 - sx, y2 * scale - 0.5 - sy
            gh = ratio if ratio > 0 else int(np.ceil(rh / ph_))
            gw = ratio if ratio > 0 else int(np.ceil(rw / pw_))
            for p in range(ph_):
                for q in range(pw_):
                    ys = (
                        sy
                        + gamma * rh * offset[k, 1, p, q]
                        + (p + (np.arange(gh) + 0.5) / gh) * rh / ph_
                    )
                    xs = (
                        sx
                        + gamma * rw * offset[k, 0, p, q]
                        + (q + (np.arange(gw) + 0.5) / gw) * rw / pw_
                    )
                    for v, size in ((ys, h), (xs, w)):
                        kinks = np.concatenate([np.round(v), [-1.0, size]])
                        if (np.abs(v[:, None] - kinks[None, :]).min(1) < margin).any():
                            ok = False
        if ok:
            return offset
    raise RuntimeError("no smooth offsets found")


@pytest.mark.parametrize("ratio", [0, 2])
def test_grad_offset_finite_differences(backend, ratio):
    """grad_offset is the derivative of the backend's own forward (float64, smooth points,
    including samples in the edge bands of boxes that straddle the map's border)."""
    boxes = box_zoo(1.0)[[0, 2, 3, 9, 10]]
    rois = rois_for(boxes, np.float64)
    rng = np.random.default_rng(9)
    x = rng.standard_normal(SHAPE)
    g = rng.standard_normal((len(boxes), 3, 3, 4))
    offset = smooth_offsets(boxes, 1.0, ratio, 0.1, seed=10)
    _, grad_offset, _ = backend.deform_roi_pool_backward(g, x, rois, offset, 1.0, ratio, 0.1)
    eps = 1e-7
    numeric = np.zeros_like(offset)
    for i in np.ndindex(offset.shape):
        plus, minus = offset.copy(), offset.copy()
        plus[i] += eps
        minus[i] -= eps
        f = [
            np.vdot(g, backend.deform_roi_pool(x, rois, o, (3, 4), 1.0, ratio, 0.1))
            for o in (plus, minus)
        ]
        numeric[i] = (f[0] - f[1]) / (2 * eps)
    np.testing.assert_allclose(grad_offset, numeric, rtol=1e-5, atol=1e-7)
    assert np.abs(grad_offset).max() > 0.1  # the check is not vacuous


@pytest.mark.parametrize("shape, k", [((2, 3, 5, 6), 0), ((2, 0, 5, 6), 3)])
def test_empty_boxes_or_channels(backend, shape, k):
    x = np.ones(shape, np.float32)
    rois = rois_for(box_zoo(1.0)[:k], np.float32)
    offset = np.zeros((k, 2, 2, 3), np.float32)
    bins = (k, shape[1], 2, 3)
    g = np.ones(bins, np.float32)
    assert backend.deform_roi_pool(x, rois, offset, (2, 3), 1.0, 0, 0.1).shape == bins
    grad, grad_offset, _ = backend.deform_roi_pool_backward(g, x, rois, offset, 1.0, 0, 0.1)
    assert grad.shape == shape and not grad.any()
    assert grad_offset.shape == offset.shape and not grad_offset.any()


def test_backwards_that_read_the_features_take_a_gradient_of_another_dtype(monkeypatch):
    """The kernels read grad_output and the features as one type: a float32 gradient for
    float64 features is cast first, not misread (the public layer on the host-run kernels)."""
    x = features(np.float64)
    boxes = box_zoo(0.7)
    rng = np.random.default_rng(5)
    offset = rng.normal(0, 0.5, (len(boxes), 2, 3, 4))
    g = rng.standard_normal((len(boxes), SHAPE[1], 3, 4)).astype(np.float32)

    def calls():
        return [
            *cuproi.deform_roi_pool_backward(g, x, boxes, offset, (3, 4), 0.7, 2)[:2],
            cuproi.deform_roi_pool_box_backward(g, x, boxes, offset, (3, 4), 0.7, 2),
            cuproi.roi_align_box_backward(g, x, boxes, (3, 4), 0.7, 2, True),
            cuproi.roi_align_backward(
                g, boxes, x.shape, (3, 4), 0.7, 2, True, pool_mode="max", input=x
            ),
            cuproi.prroi_pool_box_backward(g, x, boxes, (3, 4), 0.7),
        ]

    expected = calls()  # the NumPy backend
    monkeypatch.setattr(cuproi, "_cpu", host_backend())
    for got, want in zip(calls(), expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
