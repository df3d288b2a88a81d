"""Position-sensitive RoI Align (R-FCN, torchvision.ops.ps_roi_align) on every backend against the
float64 loop oracle of tests/oracles/ps_roi_align.py: the shared checks of roi_op_tester and of
its position-sensitive ops (channel map and counts, half precision, the CPU backward's runs of
pixels), then what is particular to it: a zero-size box gives 0 where torchvision divides 0 by 0,
and the backends agree on random boxes."""

import numpy as np
from hypothesis import strategies as st
from oracles import ps_roi_align as ps_align_oracle
from roi_op_tester import (
    PositionSensitiveChecks,
    RoIOpTester,
    assert_close,
    features,
    on_random_boxes,
    rois_for,
)

import cuproi


class TestPSRoIAlign(PositionSensitiveChecks, RoIOpTester):
    op = "ps_roi_align"
    forward_cases = [
        {"size": size, "scale": scale, "ratio": ratio}
        for size in ((3, 4), (1, 1), (2, 2))
        for scale in (1.0, 0.5, 0.7)
        for ratio in (-1, 0, 1, 2)
    ]
    backward_cases = [
        {"size": size, "scale": scale, "ratio": ratio}
        for size in ((3, 4), (2, 2))
        for scale in (1.0, 0.7)
        for ratio in (-1, 2)
    ]
    adjoint_cases = [
        {"size": size, "scale": 0.7, "ratio": ratio}
        for size in ((3, 4), (2, 2))
        for ratio in (-1, 1, 2)
    ]
    grids = {
        "test_float16": [{"size": (3, 4), "scale": 0.5, "ratio": 2}],
        "test_cpu_backward_in_runs_of_pixels": [{"size": (3, 4), "scale": 0.7, "ratio": 2}],
    }

    def forward(self, x, boxes, case):
        return cuproi.ps_roi_align(x, boxes, case["size"], case["scale"], case["ratio"])

    def backward(self, g, x, boxes, case, **options):
        args = (x.shape, case["size"], case["scale"], case["ratio"])
        return cuproi.ps_roi_align_backward(g, boxes, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        args = (case["size"], case["scale"], case["ratio"])
        return ps_align_oracle.ps_roi_align(x, boxes, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (x.shape, case["size"], case["scale"], case["ratio"])
        return ps_align_oracle.ps_roi_align_backward(g, boxes, *args, coord_dtype=coord_dtype)

    def assert_forward(self, out, expected, dtype):
        assert np.isfinite(out).all()  # no 0 / 0
        assert_close(out, expected, dtype)

    def test_a_zero_size_box_gives_zero_not_nan(self, on, dtype):
        """torchvision divides by gh * gw = 0 here (NaN); cuproi divides by max(gh * gw, 1)."""
        case = {"size": (2, 2), "scale": 1.0, "ratio": -1}
        x = features(dtype, shape=self.input_shape(case))
        degenerate = [[0, 4.0, 4.0, 4.0, 4.0], [1, 3.0, 2.5, 9.0, 2.5], [0, 7.5, 5.5, 2.5, 1.5]]
        rois = on.put(rois_for(degenerate, dtype))
        out = on.get(self.forward(on.put(x), rois, case))
        np.testing.assert_array_equal(out, 0)
        grad = self.backward(on.put(np.ones_like(out)), x, rois, case)
        np.testing.assert_array_equal(on.get(grad), 0)
        # With a fixed sampling_ratio the samples collapse onto one point: its value.
        point = on.get(self.forward(on.put(x), rois[:1], {**case, "ratio": 2}))
        np.testing.assert_allclose(point[0, 0, 0, 0], x[0, 0, 3:5, 3:5].mean(), rtol=1e-6)

    @on_random_boxes(
        size=st.sampled_from([(1, 1), (2, 3), (3, 2)]),
        scale=st.sampled_from([1.0, 0.5, 0.25]),
        ratio=st.integers(-1, 3),
    )
    def test_backends_agree_on_random_boxes(self, boxes, case, dtype):
        """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
        self.assert_backends_agree(boxes, case, dtype)
