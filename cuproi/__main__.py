"""``python -m cuproi``: which backends are available, and the three ops run on each of them.

Runs RoI Align, RoI Pool and Deformable RoI Pool, forward and backward, on a small built-in
example (a synthetic feature map at stride 16 and boxes of many sizes) on every available
backend, and prints output shapes, timings and the largest difference from the NumPy backend.
"""

import argparse
import sys
import time

import numpy as np

import cuproi


def _gpu():
    """(cupy module or None, one line saying what was found)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy: not installed (pip install 'cuproi[cuda12]' or 'cuproi[cuda13]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return None, f"CuPy {cupy.__version__}: no usable CUDA device ({error})"
    if count == 0:
        return None, f"CuPy {cupy.__version__}: no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    cuda = cupy.cuda.runtime.runtimeGetVersion()
    return cupy, f"CuPy {cupy.__version__}, CUDA runtime {cuda // 1000}.{cuda % 1000 // 10}: {name}"


def example(seed=0):
    """A (2, 32, 50, 76) feature map at stride 16 (an 800x1216 image) and 64 boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:50, 0:76]
    channels = np.arange(32)[:, None, None]
    pattern = np.sin(0.2 * xx + 0.05 * channels) * np.cos(0.3 * yy - 0.1 * channels)
    x = (pattern + 0.1 * rng.standard_normal((2, 32, 50, 76))).astype(np.float32)
    size = rng.uniform(16, 400, (64, 2))
    corner = rng.uniform(-50, [1216, 800], (64, 2))
    boxes = np.column_stack([rng.integers(0, 2, 64), corner, corner + size]).astype(np.float32)
    offset = rng.normal(0, 1, (64, 2, 7, 7)).astype(np.float32)
    return x, boxes, offset


def _runs():
    """(op, direction, call) for the three ops; each call takes arrays of one backend."""
    kw = {"output_size": 7, "spatial_scale": 1 / 16, "sampling_ratio": 2}

    def pool_backward(x, boxes, offset, g):
        _, argmax = cuproi.roi_pool(x, boxes, 7, 1 / 16, return_argmax=True)
        return cuproi.roi_pool_backward(g, boxes, argmax, x.shape)

    return [
        ("roi_align", "forward", lambda x, b, o, g: cuproi.roi_align(x, b, aligned=True, **kw)),
        (
            "roi_align",
            "backward",
            lambda x, b, o, g: cuproi.roi_align_backward(g, b, x.shape, aligned=True, **kw),
        ),
        ("roi_pool", "forward", lambda x, b, o, g: cuproi.roi_pool(x, b, 7, 1 / 16)),
        ("roi_pool", "backward", pool_backward),
        ("deform_roi_pool", "forward", lambda x, b, o, g: cuproi.deform_roi_pool(x, b, o, **kw)),
        (
            "deform_roi_pool",
            "backward",
            lambda x, b, o, g: cuproi.deform_roi_pool_backward(g, x, b, o, **kw)[0],
        ),
    ]


def _time(call, sync, repeat=3):
    call()  # warm-up: compiles the kernel on first use
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        sync()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cuproi", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    cupy, gpu_line = _gpu()
    print(f"cuproi {cuproi.__version__}")
    print(f"  NumPy {np.__version__}: CPU backend available")
    print(f"  {gpu_line}")
    x, boxes, offset = example()
    g = np.random.default_rng(1).standard_normal((len(boxes), x.shape[1], 7, 7))
    g = g.astype(np.float32)
    # (name, to the backend, back to the host, wait for the device)
    backends = [("numpy", np.asarray, np.asarray, lambda: None)]
    if cupy is not None:
        backends.append(
            (
                "cupy",
                cupy.asarray,
                cupy.asnumpy,
                lambda: cupy.cuda.get_current_stream().synchronize(),
            )
        )
    print(
        f"\nExample: features {x.shape} float32 (stride 16), {len(boxes)} boxes, "
        f"output 7x7, sampling_ratio 2\n"
    )
    header = f"{'op':<16}{'pass':<10}{'backend':<9}{'output shape':<20}{'time':>10}  max |diff|"
    print(header)
    print("-" * len(header))
    for op, direction, run in _runs():
        reference = None
        for name, move, back, sync in backends:
            args = [move(a) for a in (x, boxes, offset, g)]
            result, seconds = _time(lambda run=run, args=args: run(*args), sync)
            result = back(result)
            if reference is None:
                reference, diff = result, "(reference)"
            else:
                diff = f"{np.abs(result.astype(np.float64) - reference).max():.2e}"
            print(
                f"{op:<16}{direction:<10}{name:<9}{str(result.shape):<20}"
                f"{seconds * 1e3:>8.2f}ms  {diff}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
