"""Position-sensitive RoI Pool (R-FCN, torchvision.ops.ps_roi_pool) on every backend against the
float64 loop oracle of tests/oracles/ps_roi_pool.py: the shared checks of roi_op_tester and of
its position-sensitive ops (channel map and counts, half precision, the CPU backward's runs of
pixels), then what is particular to it: the bins that reach the last row and column (where
torchvision's forward stops one short), and the backends agree on random boxes."""

import numpy as np
from hypothesis import strategies as st
from oracles import ps_roi_pool as ps_pool_oracle
from roi_op_tester import PositionSensitiveChecks, RoIOpTester, on_random_boxes

import cuproi


class TestPSRoIPool(PositionSensitiveChecks, RoIOpTester):
    op = "ps_roi_pool"
    forward_cases = [
        {"size": size, "scale": scale}
        for size in ((3, 4), (1, 1), (2, 2), (7, 5))
        for scale in (1.0, 0.5, 0.7)
    ]
    backward_cases = [
        {"size": size, "scale": scale} for size in ((3, 4), (2, 2)) for scale in (1.0, 0.7)
    ]
    # Also in the bins that reach the last row and column (one clipping for both).
    adjoint_cases = [
        {"size": size, "scale": scale} for size in ((3, 4), (7, 5)) for scale in (1.0, 0.7)
    ]
    grids = {
        "test_float16": [{"size": (3, 4), "scale": 0.5}],
        "test_cpu_backward_in_runs_of_pixels": [{"size": (3, 4), "scale": 0.7}],
    }

    def forward(self, x, boxes, case):
        return cuproi.ps_roi_pool(x, boxes, case["size"], case["scale"])

    def backward(self, g, x, boxes, case, **options):
        args = (x.shape, case["size"], case["scale"])
        return cuproi.ps_roi_pool_backward(g, boxes, *args, **options)

    def oracle(self, x, boxes, case, coord_dtype):
        args = (case["size"], case["scale"])
        return ps_pool_oracle.ps_roi_pool(x, boxes, *args, coord_dtype=coord_dtype)

    def oracle_backward(self, g, x, boxes, case, coord_dtype):
        args = (x.shape, case["size"], case["scale"])
        return ps_pool_oracle.ps_roi_pool_backward(g, boxes, *args, coord_dtype=coord_dtype)

    def test_reads_the_last_row_and_column(self, on):
        """Bins reaching the map's end average up to row H - 1 and column W - 1 (torchvision's
        forward stops one short), and the backward spreads over exactly those cells."""
        x = np.arange(4 * 6 * 6, dtype=np.float64).reshape(1, 4, 6, 6)
        rois = np.array([[0, 2.0, 2.0, 6.0, 6.0]])
        case = {"size": (2, 2), "scale": 1.0}
        out = on.get(self.forward(on.put(x), on.put(rois), case))
        np.testing.assert_array_equal(out[0, 0, 1, 1], x[0, 3, 4:6, 4:6].mean())
        got = on.get(self.backward(on.put(np.ones_like(out)), x, on.put(rois), case))
        expected = np.zeros((6, 6))
        expected[4:6, 4:6] = 0.25
        np.testing.assert_array_equal(got[0, 3], expected)
        # torchvision's forward clipping, for the record: one cell only.
        tv = ps_pool_oracle.ps_roi_pool(x, rois, 2, 1.0, clip_last=True)
        assert tv[0, 0, 1, 1] == x[0, 3, 4, 4]

    @on_random_boxes(
        size=st.sampled_from([(1, 1), (2, 3), (3, 2)]), scale=st.sampled_from([1.0, 0.5, 0.25])
    )
    def test_backends_agree_on_random_boxes(self, boxes, case, dtype):
        """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
        self.assert_backends_agree(boxes, case, dtype)
