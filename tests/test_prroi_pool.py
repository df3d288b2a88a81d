"""Precise RoI Pooling (PreciseRoIPooling, mmcv's PrRoIPool) on every backend against the float64
cell-by-cell oracle of tests/oracles/prroi_pool.py: the shared checks of roi_op_tester (the box
gradient against the oracle's Leibniz rule), then what is particular to the exact
integral (half precision, bilinear and linear surfaces, zero-area bins, tiny and subnormal
bins), and the backends on random boxes."""

import numpy as np
import pytest
from conftest import TOLERANCE
from hypothesis import strategies as st
from oracles import prroi_pool as prroi_oracle
from roi_op_tester import (
    SHAPE,
    BoxGradientChecks,
    RoIOpTester,
    assert_close,
    box_zoo,
    features,
    on_random_boxes,
    rois_for,
)

import cuproi
from cuproi._validate import compute_dtype

SIZE = (3, 4)


def grid(scales, sizes):
    """Every (scale, output size) pair, as dicts."""
    return [{"scale": scale, "size": size} for scale in scales for size in sizes]


class TestPrRoIPool(BoxGradientChecks, RoIOpTester):
    """The forward, both backwards and the box backward against the float64 oracle."""

    size = SIZE
    forward_cases = grid((1.0, 0.5, 0.7), (SIZE, (1, 1), (2, 2)))
    backward_cases = grid((1.0, 0.7), (SIZE, (2, 2)))
    adjoint_cases = backward_cases
    box_cases = grid((1.0, 0.7), ((2, 3), (1, 1)))
    test_validation = None  # nothing of its own: test_validation.py checks every op

    def forward(self, x, boxes, case, **options):
        return cuproi.prroi_pool(x, boxes, case["size"], case["scale"], **options)

    def backward(self, g, x, boxes, case, **options):
        return cuproi.prroi_pool_backward(g, boxes, x.shape, case["size"], case["scale"], **options)

    def box_backward(self, g, x, boxes, case, **options):
        return cuproi.prroi_pool_box_backward(g, x, boxes, case["size"], case["scale"], **options)

    def oracle(self, x, boxes, case, coord_dtype):
        return prroi_oracle.prroi_pool(x, boxes, case["size"], case["scale"], coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (x.shape, case["size"], case["scale"], coord_dtype)
        return prroi_oracle.prroi_pool_backward(g, boxes, *args)

    def oracle_box_backward(self, g, x, boxes, case, coord_dtype):
        """The oracle's Leibniz rule (tests/test_reference.py checks it by differences)."""
        return prroi_oracle.prroi_pool_box_backward(g, x, boxes, case["size"], case["scale"])

    @on_random_boxes(
        size=st.sampled_from([(1, 1), (2, 3), (3, 2)]), scale=st.sampled_from([1.0, 0.5, 0.25])
    )
    def test_backends_agree_on_random_boxes(self, boxes, case, dtype):
        """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels (the
        box gradient on bins of 0.05 cells or more, relative to the largest)."""
        (_, rois, _, _), cpu, kernels = self.backend_results(boxes, case, dtype)
        # The box gradient divides differences of averages by the bin size: in float32 its
        # rounding error grows like eps / bin size.
        scale = rois.dtype.type(case["scale"])
        extent = (rois[:, 3:] - rois[:, 1:3]) * scale / np.array(case["size"][::-1])
        wide = (extent >= 0.05).all(1) | (extent <= 0).any(1)
        cpu[2], kernels[2] = cpu[2][wide], kernels[2][wide]
        rtol, atol = TOLERANCE[np.dtype(dtype)]
        for i, (a, b) in enumerate(zip(cpu, kernels, strict=True)):
            assert np.isfinite(a).all()
            # Box gradients scale like features / bin size: relative to the largest.
            largest = max(1.0, np.abs(a).max()) if i == 2 and a.size else 1.0
            np.testing.assert_allclose(a, b.astype(np.float64), rtol=rtol, atol=atol * largest)


# ---- half precision --------------------------------------------------------------------------


def test_float16(on):
    """float16 features, float32 coordinates and accumulation: the oracle on the same halves;
    the box gradient in float32, as from float32 features and gradient."""
    x = features(np.float16)
    boxes = box_zoo(0.5)
    rois = rois_for(boxes, np.float16)
    assert rois.dtype == np.float32  # boxes are never rounded to half
    xd, rd = on.put(x), on.put(rois)
    out = on.get(cuproi.prroi_pool(xd, rd, SIZE, 0.5))
    assert out.dtype == np.float16
    x64 = x.astype(np.float64)
    assert_close(out, prroi_oracle.prroi_pool(x64, boxes, SIZE, 0.5, np.float32), np.float16)
    g = np.random.default_rng(3).standard_normal(out.shape).astype(np.float16)
    want = prroi_oracle.prroi_pool_backward(
        g.astype(np.float64), boxes, SHAPE, SIZE, 0.5, np.float32
    )
    for deterministic in (False, True):
        grad = cuproi.prroi_pool_backward(
            on.put(g), rd, SHAPE, SIZE, 0.5, deterministic=deterministic
        )
        grad = on.get(grad)
        assert grad.dtype == np.float16
        np.testing.assert_allclose(grad.astype(np.float64), want, rtol=4e-3, atol=1e-2)
    box = on.get(cuproi.prroi_pool_box_backward(on.put(g), xd, rd, SIZE, 0.5))
    assert box.dtype == np.float32 and box.shape == (len(boxes), 5)
    single = [on.put(a.astype(np.float32)) for a in (g, x)]
    want = on.get(cuproi.prroi_pool_box_backward(single[0], single[1], rd, SIZE, 0.5))
    np.testing.assert_allclose(box, want, rtol=1e-5, atol=1e-5)


# ---- the exact integral ----------------------------------------------------------------------


def test_exact_integral_of_a_bilinear_surface(on):
    """On x * y the average over [a, b] x [c, d] inside the map is ((a + b) / 2) ((c + d) / 2);
    in the last cell the surface falls to 0 at x = W (zero padding, no clamping)."""
    h, w = 6, 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (yy * xx)[None, None]
    rois = np.array([[0, 0.3, 1.2, 5.4, 4.7], [0, 7.0, 0.0, 8.0, 2.0]])
    out = on.get(cuproi.prroi_pool(on.put(x), on.put(rois), (1, 1), 1.0))
    np.testing.assert_allclose(out[0, 0, 0, 0], (0.3 + 5.4) / 2 * (1.2 + 4.7) / 2, rtol=1e-13)
    # Column 7 holds 7 * y; over x in [7, 8] the surface is 7 * y * (8 - x): half of it.
    np.testing.assert_allclose(out[1, 0, 0, 0], 7 * 1.0 * 0.5, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_area_bins_give_zero(on, dtype):
    """A point, a zero height, a flipped box and one flipped along x only (its width is
    max(x2 - x1, 0) = 0): every output and every gradient is exactly 0."""
    x = on.put(features(dtype))
    boxes = [
        [0, 4.0, 4.0, 4.0, 4.0],
        [1, 3.0, 2.5, 9.0, 2.5],
        [0, 7.5, 5.5, 2.5, 1.5],
        [1, 7.5, 1.5, 2.5, 5.5],
    ]
    rois = on.put(rois_for(boxes, dtype))
    out = on.get(cuproi.prroi_pool(x, rois, (2, 2), 1.0))
    np.testing.assert_array_equal(out, 0)
    g = on.put(np.ones_like(out))
    np.testing.assert_array_equal(on.get(cuproi.prroi_pool_backward(g, rois, SHAPE, 2)), 0)
    np.testing.assert_array_equal(on.get(cuproi.prroi_pool_box_backward(g, x, rois, 2)), 0)


@pytest.mark.parametrize(
    "dtype, corner, size",
    [
        (np.float64, (2.3, 1.5), (5.6, 4.7)),
        (np.float32, (2.3, 1.5), (5.6, 4.7)),
        # Tiny boxes: the derivatives are differences of edge and bin averages over the bin
        # size, which lost every digit when computed as such (1e261 at 1e-200).
        (np.float32, (2.3, 1.5), (1e-6, 2e-6)),
        (np.float64, (2.3, 1.5), (1e-12, 1e-13)),
        (np.float64, (1e-190, 1e-190), (1e-200, 3e-200)),  # on the first pixel's falling hat
    ],
)
def test_ramp_and_its_box_gradient(on, dtype, corner, size):
    """On f = x + 2 y the average is f at the bin centre, whatever the bin's size: summed over
    a 2 x 3 grid of bins, d / d x1 = d / d x2 = 3 and d / d y1 = d / d y2 = 2 * 3."""
    y, x = np.mgrid[:10, :12]
    f = (x + 2.0 * y)[None, None].astype(dtype)
    (x1, y1), (w, h) = corner, size
    rois = np.array([[0, x1, y1, x1 + w, y1 + h]], compute_dtype(dtype))
    assert (rois[0, 3:] > rois[0, 1:3]).all()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    box = rois[0].astype(np.float64)
    cy = box[2] + (np.arange(2) + 0.5) / 2 * (box[4] - box[2])
    cx = box[1] + (np.arange(3) + 0.5) / 3 * (box[3] - box[1])
    out = on.get(cuproi.prroi_pool(on.put(f), on.put(rois), (2, 3), 1.0))
    np.testing.assert_allclose(out[0, 0], cx + 2 * cy[:, None], rtol=tol, atol=tol)
    g = on.put(np.ones((1, 1, 2, 3), dtype))
    got = on.get(cuproi.prroi_pool_box_backward(g, on.put(f), on.put(rois), (2, 3), 1.0))
    np.testing.assert_allclose(got, [[0, 3.0, 6.0, 3.0, 6.0]], rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "dtype, y1, y2", [(np.float32, -1e-40, 2e-40), (np.float64, -1e-309, 2e-309)]
)
def test_subnormal_bins_across_a_peak(backend, dtype, y1, y2):
    """Bins of subnormal height across the first row's peak: their shares of the hat's pieces
    were computed times 1 / height, which overflows (the output was inf), and are now divided
    by it. The oracle's (float64) area of a bin stays a nonzero number here. (On the NumPy
    backend and the host kernels: a GPU flushes float32 subnormals to zero, test_cuda_path.py.)"""
    ct = compute_dtype(dtype).type
    rois = np.array([[1, 0.5, y1, 3.5, y2]], ct)
    x = features(dtype)
    g = np.random.default_rng(3).standard_normal((1, SHAPE[1], 2, 3)).astype(dtype)
    out = backend.prroi_pool(x, rois, (2, 3), 1.0)
    assert np.isfinite(out).all()
    assert_close(out, prroi_oracle.prroi_pool(x, rois, (2, 3), 1.0, coord_dtype=ct), dtype)
    got = backend.prroi_pool_backward(g, rois, SHAPE, 1.0)
    want = prroi_oracle.prroi_pool_backward(g, rois, SHAPE, (2, 3), coord_dtype=ct)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_bin_at_the_foot_of_a_hat(on, dtype):
    """A bin [d, 3d/2]^2 with d half an ulp of 1: pixels (0, 0) to (1, 1) share it with weights
    1 - c and c along each axis, c = 5d/4 its centre, to float precision. For pixel 1 the bin
    lies at the foot of the hat, t = d - 1; its end t + d/2 is not a float, and the weight,
    computed from that rounded end, was off by 1.5 times itself."""
    ct = compute_dtype(dtype).type
    d = float(np.finfo(ct).eps) / 2
    rois = on.put(np.array([[0, d, d, 1.5 * d, 1.5 * d]], ct))
    c = 1.25 * d
    g = on.put(np.ones((1, 1, 1, 1), dtype))
    got = on.get(cuproi.prroi_pool_backward(g, rois, (1, 1, 4, 5), 1, 1.0))
    want = np.zeros((4, 5))
    want[:2, :2] = np.outer([1 - c, c], [1 - c, c])
    np.testing.assert_allclose(got[0, 0], want, rtol=4 * d, atol=0)


def test_defaults():
    """spatial_scale defaults to 1 and an int output_size means (n, n)."""
    x = features(np.float32)
    rois = rois_for(box_zoo(1.0), np.float32)
    g = np.ones((len(rois), SHAPE[1], 2, 2), np.float32)
    pairs = [
        (cuproi.prroi_pool(x, rois, 2), cuproi.prroi_pool(x, rois, (2, 2), 1.0)),
        (
            cuproi.prroi_pool_backward(g, rois, SHAPE, 2),
            cuproi.prroi_pool_backward(g, rois, SHAPE, (2, 2), 1.0),
        ),
        (
            cuproi.prroi_pool_box_backward(g, x, rois, 2),
            cuproi.prroi_pool_box_backward(g, x, rois, (2, 2), 1.0),
        ),
    ]
    for a, b in pairs:
        np.testing.assert_array_equal(a, b)
