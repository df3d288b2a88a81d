"""``python -m cuproi bench``: a quick timing of every op, beside torchvision where it works.

The workload is small on purpose (seconds on a laptop CPU): stride-16 features of two 800x1216
images with 64 channels (2 x 7 x 7 score maps for the position-sensitive ops; the stride-16 and
-32 levels for multi-scale RoI Align), boxes of 16 to 400 pixels, 7x7 outputs, sampling_ratio 2,
drawn by ``cuproi._workloads`` like the real benchmarks in asv_bench/.
"""

import functools
import sys
import time

import numpy as np

from cuproi import _demo, _timing, _workloads

POOLED, SCALE, RATIO = (7, 7), 1 / 16, 2
WORKLOAD = {
    "output_size": POOLED,
    "channels": 64,
    "stride": round(1 / SCALE),
    "extent": (16, 400),
    "sampling_ratio": RATIO,
}
# The rows of the table: (op shown, pass, op, call of _workloads.calls), the demo's first.
ROWS = [
    *_demo.ROWS,
    ("roi_align max", "forward", "roi_align", "max_forward"),
    ("roi_align max", "backward", "roi_align", "max_backward"),
    ("roi_align", "boxes", "roi_align", "box_backward"),
    ("deform_roi_pool mask", "forward", "deform_roi_pool", "modulated_forward"),
    ("deform_roi_pool mask", "backward", "deform_roi_pool", "modulated_backward"),
    *[
        (op, way, op, way)
        for op in ("ps_roi_align", "ps_roi_pool", "roi_align_rotated", "prroi_pool")
        for way in ("forward", "backward")
    ],
    ("prroi_pool", "boxes", "prroi_pool", "box_backward"),
    ("multi_scale_roi_align", "forward", "multi_scale_roi_align", "forward"),
    ("multi_scale_roi_align", "backward", "multi_scale_roi_align", "backward"),
]


def problems(num_boxes):
    """{op: its NumPy problem} for every op of ROWS, all with the same ``num_boxes`` boxes."""
    found = {}
    for _, _, op, _ in ROWS:
        maps = {"channels": 2} if op in ("ps_roi_align", "ps_roi_pool") else {}
        found[op] = _workloads.problem(op, num_boxes, **{**WORKLOAD, **maps})
    return found


def run(cupy, repeat, num_boxes, stream=None, seconds=0.2):
    """Time every op on every backend (and torchvision); print the table on stdout.

    Each row is timed by :func:`cuproi._timing.autorange`, cuproi's and torchvision's alike:
    at least ``repeat`` calls filling ``seconds``, after two warm-up calls.
    """
    stream = sys.stderr if stream is None else stream
    hosts = problems(num_boxes)
    backends = _timing.backends(cupy)
    torchvision, why = _torchvision()
    rows = [(row, b) for row in ROWS for b in backends]
    reference = {(op, way) for op in _THEIRS for way in ("forward", "backward")}
    compared = sum(row[:2] in reference for row, _ in rows) if torchvision else 0
    progress = _Progress(len(rows) + compared, stream)
    print(
        f"Workload: features {hosts['roi_align'].x.shape} float32 (stride 16), {num_boxes} boxes "
        f"of 16-400 px, output 7x7, sampling_ratio 2; each time the median of the calls "
        f"counted beside it: at least {repeat}, filling {seconds:g} s, after two warm-up calls\n"
    )
    header = f"{'op':<22}{'pass':<10}{'backend':<9}{'cuproi':>10}{'calls':>7}"
    if torchvision:
        header += f"{'torchvision':>14}{'calls':>7}{'speed-up':>10}  max |diff| vs torchvision"
    lines = [header, "-" * len(header)]
    calls = {}
    for backend in backends:
        for op, host in hosts.items():
            calls[backend.name, op] = _workloads.calls(op, host.to(backend.xp))
    for (shown, way, op, name), backend in rows:
        progress.show(f"{shown} {way} on {backend.name}")
        call = calls[backend.name, op][name]
        result, median, count = _timing.autorange(call, backend.sync, repeat, seconds)
        theirs = ""
        if torchvision and (shown, way) in reference:
            progress.show(f"torchvision {shown} {way} on {backend.name}")
            ours = np.asarray(backend.back(result), np.float64)
            host = hosts[op]
            inputs = (host.x, host.boxes, host.grad)
            timing = (median, repeat, seconds)
            theirs = _compare(torchvision, shown, way, backend.name, inputs, ours, *timing)
        timed = f"{median * 1e3:>8.2f}ms{count:>7}"
        lines.append(f"{shown:<22}{way:<10}{backend.name:<9}{timed}{theirs}")
    progress.done()
    print("\n".join(line.rstrip() for line in lines))
    print(f"\ntorchvision: {why}")


# torchvision's call of every op it has with cuproi's semantics on these boxes, on
# (ops module, features, boxes).
_THEIRS = {
    "roi_align": lambda tv, x, b: tv.roi_align(x, b, POOLED, SCALE, RATIO, True),
    "roi_pool": lambda tv, x, b: tv.roi_pool(x, b, POOLED, SCALE),
    "ps_roi_align": lambda tv, x, b: tv.ps_roi_align(x, b, POOLED, SCALE, RATIO),
}


def _compare(torchvision, op, way, backend, arrays, ours, median, repeat, seconds):
    """The torchvision columns of one row: time, calls, speed-up of cuproi, max |diff|."""
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
    theirs, their_median, count = _timing.autorange(call, sync, repeat, seconds)
    diff = np.abs(theirs.detach().cpu().numpy().astype(np.float64) - ours).max(initial=0.0)
    return f"{their_median * 1e3:>12.2f}ms{count:>7}{their_median / median:>10.2f}x  {diff:.2e}"


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
