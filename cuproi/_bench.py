"""``python -m cuproi bench``: a quick timing of every op, beside torchvision where it works.

The workload is small on purpose (seconds on a laptop CPU): stride-16 features of two 800x1216
images with 64 channels, boxes of 16 to 400 pixels, 7x7 outputs, sampling_ratio 2. asv_bench/
holds the real benchmarks.
"""

import sys
import time

import numpy as np

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
    ops = _demo.runs(POOLED, SCALE, RATIO)
    rows = [(op, way, b) for op, way, _ in ops for b in backends]
    reference = {("roi_align", "forward"), ("roi_align", "backward")}
    reference |= {("roi_pool", "forward"), ("roi_pool", "backward")}
    total = len(rows) + (sum((op, way) in reference for op, way, _ in rows) if torchvision else 0)
    progress = _Progress(total, stream)
    print(
        f"Workload: features {x.shape} float32 (stride 16), {num_boxes} boxes of 16-400 px, "
        f"output 7x7, sampling_ratio 2; median of {repeat} calls after a warm-up\n"
    )
    header = f"{'op':<17}{'pass':<10}{'backend':<9}{'cuproi':>10}"
    if torchvision:
        header += f"{'torchvision':>14}{'speed-up':>10}  max |diff| vs torchvision"
    lines = [header, "-" * len(header)]
    calls = {(op, way): call for op, way, call in ops}
    arrays = {b.name: _demo.inputs(b, x, boxes, offset, grad, POOLED, SCALE) for b in backends}
    for op, way, backend in rows:
        progress.show(f"{op} {way} on {backend.name}")
        args = arrays[backend.name]
        result, seconds = _demo.timed(lambda c=calls[op, way], a=args: c(a), backend.sync, repeat)
        theirs = ""
        if torchvision and (op, way) in reference:
            progress.show(f"torchvision {op} {way} on {backend.name}")
            ours = np.asarray(backend.back(result), np.float64)
            theirs = _compare(
                torchvision, op, way, backend.name, (x, boxes, grad), ours, seconds, repeat
            )
        lines.append(f"{op:<17}{way:<10}{backend.name:<9}{seconds * 1e3:>8.2f}ms{theirs}")
    progress.done()
    print("\n".join(line.rstrip() for line in lines))
    print(f"\ntorchvision: {why}")


def _compare(torchvision, op, way, backend, arrays, ours, seconds, repeat):
    """The torchvision columns of one row: time, speed-up of cuproi, max |diff|."""
    torch, tv = torchvision
    device = "cuda" if backend == "cupy" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return f"{'(no CUDA torch)':>14}"
    x, boxes, grad = (torch.from_numpy(a).to(device) for a in arrays)
    if way == "backward":
        x.requires_grad_(True)
    if op == "roi_align":
        out = tv.roi_align(x, boxes, POOLED, SCALE, sampling_ratio=RATIO, aligned=True)
    else:
        out = tv.roi_pool(x, boxes, POOLED, SCALE)

    def call():
        if way == "forward":
            with torch.no_grad():
                if op == "roi_align":
                    return tv.roi_align(x, boxes, POOLED, SCALE, sampling_ratio=RATIO, aligned=True)
                return tv.roi_pool(x, boxes, POOLED, SCALE)
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
