"""``python -m cuproi bench``: a quick timing of every op, beside torchvision where it works.

The workload is small on purpose (seconds on a laptop CPU): stride-16 features of two 800x1216
images with 64 channels, boxes of 16 to 400 pixels, 7x7 outputs, sampling_ratio 2. The rest of
the family reads arrays derived from it (score maps, a two-level pyramid, rotated boxes, a
mask). asv_bench/ holds the real benchmarks.
"""

import functools
import sys
import time
import types

import numpy as np

import cuproi
from cuproi import _demo

POOLED, SCALE, RATIO = (7, 7), 1 / 16, 2


def workload(num_boxes, channels=64, seed=0):
    """(x, boxes, offset, grad): (2, C, 50, 76) float32 features and ``num_boxes`` boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:50, 0:76]
    c = np.arange(channels)[:, None, None]
    pattern = np.sin(0.2 * xx + 0.05 * c) * np.cos(0.3 * yy - 0.1 * c)
    x = (pattern + 0.1 * rng.standard_normal((2, channels, 50, 76))).astype(np.float32)
    size = rng.uniform(16, 400, (num_boxes, 2))
    corner = rng.uniform(-50, [1216, 800], (num_boxes, 2))
    boxes = np.column_stack([rng.integers(0, 2, num_boxes), corner, corner + size])
    offset = rng.normal(0, 1, (num_boxes, 2, *POOLED)).astype(np.float32)
    grad = rng.standard_normal((num_boxes, channels, *POOLED)).astype(np.float32)
    return x, boxes.astype(np.float32), offset, grad


def run(cupy, repeat, num_boxes, stream=None):
    """Time every op on every backend (and torchvision); print the table on stdout."""
    stream = sys.stderr if stream is None else stream
    x, boxes, offset, grad = workload(num_boxes)
    backends = _demo.backends(cupy)
    torchvision, why = _torchvision()
    ops = [
        (op, way, lambda a, e, c=call: c(a)) for op, way, call in _demo.runs(POOLED, SCALE, RATIO)
    ]
    ops += family_runs()
    rows = [(op, way, b) for op, way, _ in ops for b in backends]
    reference = {(op, way) for op in _THEIRS for way in ("forward", "backward")}
    total = len(rows) + (sum((op, way) in reference for op, way, _ in rows) if torchvision else 0)
    progress = _Progress(total, stream)
    print(
        f"Workload: features {x.shape} float32 (stride 16), {num_boxes} boxes of 16-400 px, "
        f"output 7x7, sampling_ratio 2; median of {repeat} calls after a warm-up\n"
    )
    header = f"{'op':<22}{'pass':<10}{'backend':<9}{'cuproi':>10}"
    if torchvision:
        header += f"{'torchvision':>14}{'speed-up':>10}  max |diff| vs torchvision"
    lines = [header, "-" * len(header)]
    calls = {(op, way): call for op, way, call in ops}
    arrays = {b.name: _demo.inputs(b, x, boxes, offset, grad, POOLED, SCALE) for b in backends}
    family = family_arrays(x, boxes, grad)
    extras = {b.name: family_inputs(b, family) for b in backends}
    # What torchvision's call of each op reads: (features, boxes, gradient of the output).
    compared = {"ps_roi_align": (family["maps"], boxes, family["maps_grad"])}
    for op, way, backend in rows:
        progress.show(f"{op} {way} on {backend.name}")
        args, extra = arrays[backend.name], extras[backend.name]
        timed = functools.partial(calls[op, way], args, extra)
        result, seconds = _demo.timed(timed, backend.sync, repeat)
        theirs = ""
        if torchvision and (op, way) in reference:
            progress.show(f"torchvision {op} {way} on {backend.name}")
            ours = np.asarray(backend.back(result), np.float64)
            inputs = compared.get(op, (x, boxes, grad))
            theirs = _compare(torchvision, op, way, backend.name, inputs, ours, seconds, repeat)
        lines.append(f"{op:<22}{way:<10}{backend.name:<9}{seconds * 1e3:>8.2f}ms{theirs}")
    progress.done()
    print("\n".join(line.rstrip() for line in lines))
    print(f"\ntorchvision: {why}")


def family_arrays(x, boxes, grad):
    """The NumPy arrays of the rest of the family, derived from the workload."""
    k = len(boxes)
    centre, size = (boxes[:, 1:3] + boxes[:, 3:5]) / 2, boxes[:, 3:5] - boxes[:, 1:3]
    angle = np.linspace(-90, 90, k, dtype=np.float32)
    arrays = {
        "maps": np.tile(x, (1, 2, 1, 1))[:, : 2 * POOLED[0] * POOLED[1]],  # 2 x 7 x 7 maps
        "maps_grad": grad[:, :2],
        "rotated": np.column_stack([boxes[:, 0], centre, size, angle]).astype(np.float32),
        "mask": np.full((k, 1, *POOLED), 0.5, np.float32),
        "coarse": x[:, :, ::2, ::2],  # the next pyramid level, stride 32
    }
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def family_inputs(backend, arrays):
    """The arrays of :func:`family_arrays` on ``backend``, as attributes."""
    return types.SimpleNamespace(**{name: backend.move(a) for name, a in arrays.items()})


def family_runs():
    """(op, pass, call(inputs, family inputs)) of the rest of the family."""
    common = {"output_size": POOLED, "spatial_scale": SCALE, "sampling_ratio": RATIO}
    scales = [SCALE, SCALE / 2]

    def pyramid(a, e):
        return [a.x, e.coarse]

    return [
        (
            "roi_align max",
            "forward",
            lambda a, e: cuproi.roi_align(a.x, a.boxes, pool_mode="max", **common),
        ),
        (
            "roi_align max",
            "backward",
            lambda a, e: cuproi.roi_align_backward(
                a.grad, a.boxes, a.x.shape, pool_mode="max", input=a.x, **common
            ),
        ),
        (
            "roi_align",
            "boxes",
            lambda a, e: cuproi.roi_align_box_backward(
                a.grad, a.x, a.boxes, aligned=True, **common
            ),
        ),
        (
            "deform_roi_pool mask",
            "forward",
            lambda a, e: cuproi.deform_roi_pool(a.x, a.boxes, a.offset, mask=e.mask, **common),
        ),
        (
            "deform_roi_pool mask",
            "backward",
            lambda a, e: cuproi.deform_roi_pool_backward(
                a.grad, a.x, a.boxes, a.offset, mask=e.mask, **common
            )[0],
        ),
        ("ps_roi_align", "forward", lambda a, e: cuproi.ps_roi_align(e.maps, a.boxes, **common)),
        (
            "ps_roi_align",
            "backward",
            lambda a, e: cuproi.ps_roi_align_backward(e.maps_grad, a.boxes, e.maps.shape, **common),
        ),
        ("ps_roi_pool", "forward", lambda a, e: cuproi.ps_roi_pool(e.maps, a.boxes, POOLED, SCALE)),
        (
            "ps_roi_pool",
            "backward",
            lambda a, e: cuproi.ps_roi_pool_backward(
                e.maps_grad, a.boxes, e.maps.shape, POOLED, SCALE
            ),
        ),
        (
            "roi_align_rotated",
            "forward",
            lambda a, e: cuproi.roi_align_rotated(a.x, e.rotated, **common),
        ),
        (
            "roi_align_rotated",
            "backward",
            lambda a, e: cuproi.roi_align_rotated_backward(a.grad, e.rotated, a.x.shape, **common),
        ),
        ("prroi_pool", "forward", lambda a, e: cuproi.prroi_pool(a.x, a.boxes, POOLED, SCALE)),
        (
            "prroi_pool",
            "backward",
            lambda a, e: cuproi.prroi_pool_backward(a.grad, a.boxes, a.x.shape, POOLED, SCALE),
        ),
        (
            "prroi_pool",
            "boxes",
            lambda a, e: cuproi.prroi_pool_box_backward(a.grad, a.x, a.boxes, POOLED, SCALE),
        ),
        (
            "multi_scale_roi_align",
            "forward",
            lambda a, e: cuproi.multi_scale_roi_align(
                pyramid(a, e), a.boxes, POOLED, scales, RATIO
            ),
        ),
        (
            "multi_scale_roi_align",
            "backward",
            lambda a, e: cuproi.multi_scale_roi_align_backward(
                a.grad, a.boxes, [level.shape for level in pyramid(a, e)], POOLED, scales, RATIO
            )[0],
        ),
    ]


# torchvision's call of every op it has with cuproi's semantics on these boxes, on
# (ops module, features, boxes).
_THEIRS = {
    "roi_align": lambda tv, x, b: tv.roi_align(x, b, POOLED, SCALE, RATIO, True),
    "roi_pool": lambda tv, x, b: tv.roi_pool(x, b, POOLED, SCALE),
    "ps_roi_align": lambda tv, x, b: tv.ps_roi_align(x, b, POOLED, SCALE, RATIO),
}


def _compare(torchvision, op, way, backend, arrays, ours, seconds, repeat):
    """The torchvision columns of one row: time, speed-up of cuproi, max |diff|."""
    torch, tv = torchvision
    device = "cuda" if backend == "cupy" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return f"{'(no CUDA torch)':>14}"
    x, boxes, grad = (torch.from_numpy(a).to(device) for a in arrays)
    pool = functools.partial(_THEIRS[op], tv)
    if way == "backward":
        x.requires_grad_(True)
        out = pool(x, boxes)

    def call():
        if way == "forward":
            with torch.no_grad():
                return pool(x, boxes)
        return torch.autograd.grad(out, x, grad, retain_graph=True)[0]

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    theirs, their_seconds = _demo.timed(call, sync, repeat)
    diff = np.abs(theirs.detach().cpu().numpy().astype(np.float64) - ours).max(initial=0.0)
    return f"{their_seconds * 1e3:>12.2f}ms{their_seconds / seconds:>9.2f}x  {diff:.2e}"


def _torchvision():
    """((torch, torchvision.ops) or None, a line saying what was found)."""
    try:
        import torch
        import torchvision
        import torchvision.ops as ops

        ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 1)  # its compiled ops load
    except ImportError as error:
        return None, f"not available ({error}); install torchvision for the comparison"
    except Exception as error:  # e.g. a torchvision built for another torch
        return None, f"installed but its ops fail ({type(error).__name__}: {error})"
    return (torch, ops), (
        f"{torchvision.__version__} with torch {torch.__version__}; speed-up = "
        "torchvision time / cuproi time"
    )


class _Progress:
    """A text progress bar: redrawn in place on a terminal, one line per step in a log."""

    def __init__(self, total, stream, width=24):
        self.total, self.stream, self.width, self.count = total, stream, width, 0
        self.live = getattr(stream, "isatty", lambda: False)()
        self.start = time.perf_counter()

    def show(self, label):
        self.count += 1
        filled = self.width * (self.count - 1) // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {self.count}/{self.total} {label}"
        self.stream.write(f"\r{text:<79}" if self.live else f"{text}\n")
        self.stream.flush()

    def done(self):
        text = f"[{'#' * self.width}] {self.total}/{self.total} done in "
        text += f"{time.perf_counter() - self.start:.1f} s"
        self.stream.write(f"\r{text:<79}\n" if self.live else f"{text}\n")
        self.stream.flush()
