"""Position-sensitive RoI Pool (R-FCN, torchvision.ops.ps_roi_pool) on every backend against the
float64 loop oracle of tests/oracles/ps_roi_pool.py: the shared checks of roi_op_tester, then
what is particular to it (the channel map, half precision, the bins that reach the last row and
column, the CPU backward's runs of pixels, the channels a multiple of the bins)."""

import host
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import ps_roi_pool as ps_pool_oracle
from roi_op_tester import (
    PositionSensitive,
    RoIOpTester,
    assert_close,
    box_zoo,
    features,
    random_boxes,
    rois_for,
)

import cuproi
from cuproi._cpu import _cells


class TestPSRoIPool(PositionSensitive, RoIOpTester):
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
    # The valid inputs: 24 channels for 3 x 4 bins, 12 boxes of 2 x 3 x 4 bins.
    invalid = [
        *[
            (
                f"{c} channels for 2 x 3 bins",
                lambda v, c=c: cuproi.ps_roi_pool(v.x[:, :c], v.boxes, (2, 3)),
                ValueError,
                rf"input has {c} channels, which is not a multiple of output_size 2 x 3 = 6",
            )
            for c in (5, 7, 13)
        ],
        (
            "backward input_shape channels",
            lambda v: cuproi.ps_roi_pool_backward(v.g, v.boxes, (2, 13, 10, 12), (3, 4)),
            ValueError,
            r"input_shape has 13 channels, which is not a multiple",
        ),
        (
            "grad_output with the input's channels",
            lambda v: cuproi.ps_roi_pool_backward(
                v.x[:, :, :3, :4], v.boxes[:2], v.x.shape, (3, 4)
            ),
            ValueError,
            r"grad_output must have shape \(2, 2, 3, 4\)",
        ),
    ]

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

    def test_float16(self, on):
        """float16 features, float32 coordinates and accumulation: the oracle on the same
        halves; the deterministic sums repeat their bits."""
        case = {"size": (3, 4), "scale": 0.5}
        x, rois, _, g = self.host_inputs(np.float16, case)
        assert rois.dtype == np.float32  # boxes are never rounded to half
        boxes, x64 = box_zoo(0.5), x.astype(np.float64)
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

    def test_cpu_backward_in_runs_of_pixels(self, monkeypatch):
        """The CPU backward writes its gradient a run of pixels at a time: many runs, one short."""
        monkeypatch.setattr(_cells, "BLOCK", 7)  # 120 pixels: 17 runs of 7, then 1
        case = {"size": (3, 4), "scale": 0.7}
        x, rois, _, g = self.host_inputs(np.float64, case)
        want = self.oracle_backward(g, x, box_zoo(0.7), case, np.float64)
        assert_close(self.backward(g, x, rois, case), want, np.float64)

    @pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        boxes=random_boxes(),
        size=st.sampled_from([(1, 1), (2, 3), (3, 2)]),
        scale=st.sampled_from([1.0, 0.5, 0.25]),
        dtype=st.sampled_from([np.float32, np.float64]),
    )
    def test_backends_agree_on_random_boxes(self, boxes, size, scale, dtype):
        """Degenerate, flipped, outside and huge boxes: finite results, CPU == host kernels."""
        self.assert_backends_agree(boxes, {"size": size, "scale": scale}, dtype)


def test_reads_the_last_row_and_column(on):
    """Bins reaching the map's end average up to row H - 1 and column W - 1 (torchvision's
    forward stops one short), and the backward spreads over exactly those cells."""
    x = np.arange(4 * 6 * 6, dtype=np.float64).reshape(1, 4, 6, 6)
    rois = on.put(np.array([[0, 2.0, 2.0, 6.0, 6.0]]))
    out = on.get(cuproi.ps_roi_pool(on.put(x), rois, (2, 2), 1.0))
    np.testing.assert_array_equal(out[0, 0, 1, 1], x[0, 3, 4:6, 4:6].mean())
    got = on.get(cuproi.ps_roi_pool_backward(on.put(np.ones_like(out)), rois, x.shape, (2, 2)))
    expected = np.zeros((6, 6))
    expected[4:6, 4:6] = 0.25
    np.testing.assert_array_equal(got[0, 3], expected)
    # torchvision's forward clipping, for the record: one cell only.
    tv = ps_pool_oracle.ps_roi_pool(x, on.get(rois), 2, 1.0, clip_last=True)
    assert tv[0, 0, 1, 1] == x[0, 3, 4, 4]


def test_channel_mapping(on):
    """Output channel c, bin (ph, pw) reads input channel (c * PH + ph) * PW + pw."""
    channels = np.arange(3 * 2 * 3, dtype=np.float32)
    x = np.broadcast_to(channels[None, :, None, None], (1, 18, 5, 7)).copy()
    rois = np.array([[0, 0.0, 0.0, 7.0, 5.0]], np.float32)
    out = on.get(cuproi.ps_roi_pool(on.put(x), on.put(rois), (2, 3), 1.0))
    np.testing.assert_allclose(out, channels.reshape(1, 3, 2, 3), rtol=1e-6)


def test_an_int_output_size_is_square(on):
    """output_size n is (n, n), n * n bins to a group of channels; spatial_scale defaults to 1."""
    x = on.put(features(np.float32, shape=(2, 8, 10, 12)))
    rois = on.put(rois_for(box_zoo(1.0), np.float32))
    out = on.get(cuproi.ps_roi_pool(x, rois, 2))
    assert out.shape == (12, 2, 2, 2)
    np.testing.assert_array_equal(out, on.get(cuproi.ps_roi_pool(x, rois, (2, 2), 1.0)))
    with pytest.raises(ValueError, match="8 channels, which is not a multiple of output_size 3"):
        cuproi.ps_roi_pool(x, rois, 3)
