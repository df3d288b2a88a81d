"""Shared pieces of the cuproi benchmarks: the backend axis, workloads, and GPU event timing."""

import numpy as np

# Box extents in input pixels for the size sweeps: small (P3-level) to large (P5-level) objects.
BOX_SIZES = {"small": (16, 64), "medium": (64, 256), "large": (256, 800)}


class Benchmark:
    """Holds ``self.xp`` and ``self.sync`` for the backend of the current parameters.

    ``setup_backend`` raises NotImplementedError (asv: skipped) when CuPy or a GPU is missing,
    and every timed call should end with ``self.sync()`` so GPU work is inside the timing.
    """

    param_names = ["backend"]
    params = [["numpy", "cupy"]]
    timeout = 300

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


def workload(num_boxes, channels=256, height=100, width=152, stride=8, extent=(16, 300), seed=0):
    """Features of one FPN level of two 800x1216 images, and boxes ``extent`` pixels wide.

    Returns float32 features (2, channels, height, width) and (num_boxes, 5) boxes whose centres
    are uniform over the image.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, height, width), dtype=np.float32)
    size = rng.uniform(*extent, (num_boxes, 2))
    corner = rng.uniform(0, [width * stride, height * stride], (num_boxes, 2)) - size / 2
    boxes = np.column_stack([rng.integers(0, 2, num_boxes), corner, corner + size])
    return x, boxes.astype(np.float32)


def gpu_seconds(fn, repeat=20):
    """Median device time of ``fn`` in seconds, from CUDA events around each call."""
    import cupy

    fn()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))
