"""Base class of the cuproi benchmarks: a backend axis (numpy, cupy) with skips and syncs."""

import numpy as np


class Benchmark:
    """Holds ``self.xp`` and ``self.sync`` for the backend of the current parameters.

    ``setup_backend`` raises NotImplementedError (asv: skipped) when CuPy or a GPU is missing,
    and every timed call should end with ``self.sync()`` so GPU work is inside the timing.
    """

    param_names = ["backend"]
    params = [["numpy", "cupy"]]
    timeout = 120

    def setup_backend(self, backend):
        if backend == "numpy":
            self.xp, self.sync = np, lambda: None
            return
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() == 0:
                raise NotImplementedError("no CUDA device")
        except (ImportError, RuntimeError) as error:
            raise NotImplementedError(f"cupy backend unavailable: {error}") from None
        self.xp = cupy
        self.sync = cupy.cuda.get_current_stream().synchronize


def workload(num_boxes, channels=256, height=100, width=152, stride=8, seed=0):
    """Features of one FPN level of two 800x1216 images and boxes of 16 to 300 pixels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, height, width), dtype=np.float32)
    size = rng.uniform(16, 300, (num_boxes, 2))
    corner = rng.uniform(0, [width * stride, height * stride], (num_boxes, 2)) - size / 2
    boxes = np.column_stack([rng.integers(0, 2, num_boxes), corner, corner + size])
    return x, boxes.astype(np.float32)
