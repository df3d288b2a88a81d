"""cuproi beside torchvision.ops on the reference workloads, in one process.

    python asv_bench/compare.py --device cuda     # GPU: CuPy kernels vs torchvision CUDA ops
    python asv_bench/compare.py --device cpu      # CPU: NumPy backend vs torchvision C++ ops

Prints a Markdown table (median times, the ratio cuproi / torchvision, and on the GPU the
lower bound of reference/performance.md section 4: output plus every touched feature element
moved once at the device's memory bandwidth) for docs/benchmarks.md, then whether each target
of the performance issue holds on the box head. torchvision is optional: without it only cuproi
is timed. Workloads (``cuproi._workloads``, as in the asv benchmarks; reference/performance.md
section 1): 2 images, 256 channels, one FPN level of an 800x1216 input at stride 8 (100x152),
512 boxes of 16 to 300 pixels, 7x7 output, sampling_ratio 2, aligned; the mask head uses 14x14
outputs and 256 boxes, and at inference 16 boxes on the P2 to P5 levels (a few detections on
large maps). On the CPU, the corners of issue 27 follow (``corners.py``: few boxes, max mode,
working memory, a floor; beside onnxruntime too, with 1 and 2 threads), each goal met or missed.
"""

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import corners  # noqa: E402

import cuproi  # noqa: E402
from cuproi import _timing, _workloads  # noqa: E402

BANDWIDTH = {"H100": 3.0e12, "H200": 4.0e12}  # bytes/s, copy bandwidth (performance.md)
# Channels of the feature maps, and the factor the box counts are divided by: the reference
# workloads', or with --smoke a tiny version of each that checks the script's every path.
CHANNELS, FEWER = 256, 1
# The rows of the box and mask heads: {op: {call of _workloads.calls: what the row says}}.
ROWS = {
    "roi_align": {
        "forward": "forward",
        "backward": "backward",
        "forward_channels_last": "forward, channels-last features",
        "backward_channels_last": "backward, channels-last gradient",
        "backward_deterministic": "backward, deterministic",
    },
    "roi_pool": {
        "forward": "forward",
        "forward_argmax": "forward, argmax",
        "forward_channels_last": "forward, channels-last features",
        "forward_argmax_channels_last": "forward, argmax, channels-last features",
        "backward": "backward",
        "backward_deterministic": "backward, deterministic",
    },
    "deform_roi_pool": {
        "forward": "forward",
        "backward": "backward",
        "backward_deterministic": "backward, deterministic",
    },
}


def timer(device):
    """A function timing a callable: ``run(fn, repeat)`` -> median seconds of ``repeat`` calls."""
    if device == "cpu":
        return lambda fn, repeat: _timing.host_seconds(fn, lambda: None, repeat)[1]
    return _timing.device_seconds


def calls(device, xp, boxes, size, dtype):
    """The timed calls of one workload: ({op: cuproi call}, {op: torchvision call}, bound).

    Deformable RoI Pooling reads zero offsets: the boxes' own bins, as RoI Align samples them.
    """
    host = _workloads.problem(
        "deform_roi_pool", boxes, size, channels=CHANNELS, offset_sigma=0, dtype=dtype
    )
    xa = host.to(xp)
    ours = {}
    for op, rows in ROWS.items():
        every = _workloads.calls(op, xa)
        ours.update({f"{op} {row}": every[name] for name, row in rows.items()})
    if device == "cuda":  # the NCHW kernels, beside the channels-last ones chosen over them
        ours["roi_align forward, NCHW kernel"] = nchw(ours["roi_align forward"])
        ours["roi_align backward, NCHW kernel"] = nchw(ours["roi_align backward"])
        ours["roi_align forward, its layout transpose alone"] = to_channels_last(xa.x)
    theirs = {}
    bound = _workloads.footprint_bytes(host.x, host.boxes, size) if device == "cuda" else None
    if (peer := torchvision(device)) is None:
        return ours, theirs, bound
    torch, ops = peer
    tx = torch.from_numpy(host.x).to(device)
    tr = torch.from_numpy(host.boxes).to(tx.dtype).to(device)  # torchvision wants one dtype
    tg = torch.from_numpy(host.grad).to(device)
    txg = tx.clone().requires_grad_()
    tx_stored = tx.contiguous(memory_format=torch.channels_last)
    tx_stored_g = tx_stored.clone().requires_grad_()  # clone keeps the memory format
    theirs["roi_align forward"] = lambda: ops.roi_align(tx, tr, size, 1 / 8, 2, True)
    theirs["roi_align forward, channels-last features"] = lambda: ops.roi_align(
        tx_stored, tr, size, 1 / 8, 2, True
    )
    theirs["roi_pool forward"] = lambda: ops.roi_pool(tx, tr, size, 1 / 8)
    # torchvision's kernel always finds the argmax, which its backward needs.
    theirs["roi_pool forward, argmax"] = theirs["roi_pool forward"]
    theirs["roi_pool forward, channels-last features"] = lambda: ops.roi_pool(
        tx_stored, tr, size, 1 / 8
    )
    theirs["roi_pool forward, argmax, channels-last features"] = theirs[
        "roi_pool forward, channels-last features"
    ]
    try:  # the graphs the backward timings replay (retain_graph)
        out = ops.roi_align(txg, tr, size, 1 / 8, 2, True)
        theirs["roi_align backward"] = lambda: torch.autograd.grad(out, txg, tg, True)
        out_stored = ops.roi_align(tx_stored_g, tr, size, 1 / 8, 2, True)
        theirs["roi_align backward, channels-last gradient"] = lambda: torch.autograd.grad(
            out_stored, tx_stored_g, tg, True
        )
        pooled = ops.roi_pool(txg, tr, size, 1 / 8)
        theirs["roi_pool backward"] = lambda: torch.autograd.grad(pooled, txg, tg, True)
    except (RuntimeError, NotImplementedError):
        pass  # a dtype torchvision lacks: its forward timing reports the error
    for op in list(theirs):
        if f"{op}, NCHW kernel" in ours:
            theirs[f"{op}, NCHW kernel"] = theirs[op]
    return ours, theirs, bound


def torchvision(device):
    """(torch, torchvision.ops) where they run on ``device``, else None (not installed, or
    no CUDA torch beside CuPy's stand-in)."""
    try:
        import torch
        from torchvision import ops
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    return torch, ops


def to_channels_last(x):
    """The layout transpose the channels-last RoI Align kernels start with, alone."""
    import cupy

    from cuproi._cuda import _launch

    n, c, h, w = x.shape
    return lambda: _launch.Device(cupy, _launch.launch).transpose(x, c, h * w)


def nchw(fn):
    """``fn`` run on RoI Align's NCHW kernels rather than its channels-last ones."""
    from cuproi._cuda import _launch

    def run():
        saved, _launch.CHANNELS_LAST_FROM = _launch.CHANNELS_LAST_FROM, 2**31
        try:
            return fn()
        finally:
            _launch.CHANNELS_LAST_FROM = saved

    return run


def ps_and_multi_scale_calls(device, xp, dtype, boxes, size=7):
    """Position-sensitive RoI Align (R-FCN: 8 x 7 x 7 score maps) and multi-level RoI Align (FPN
    levels P2 to P5 of an 800x1216 image) on the box head, as ``calls`` returns them."""
    ps = _workloads.problem("ps_roi_align", boxes, size, channels=8, dtype=dtype)
    fpn = _workloads.problem(
        "multi_scale_roi_align", boxes, size, channels=CHANNELS, stride=4, dtype=dtype
    )
    ours = {}
    for op, host in (("ps_roi_align", ps), ("multi_scale_roi_align", fpn)):
        every = _workloads.calls(op, host.to(xp))
        ours.update({f"{op} {way}": every[way] for way in ("forward", "backward")})
    theirs = {}
    if (peer := torchvision(device)) is None:
        return ours, theirs
    torch, ops = peer
    ts = torch.from_numpy(ps.x).to(device)
    tr = torch.from_numpy(ps.boxes).to(ts.dtype).to(device)
    theirs["ps_roi_align forward"] = lambda: ops.ps_roi_align(ts, tr, size, 1 / 8, 2)
    theirs["multi_scale_roi_align forward"] = torchvision_pyramid(torch, ops, device, fpn)[0]
    try:
        tsg = ts.clone().requires_grad_()
        out = ops.ps_roi_align(tsg, tr, size, 1 / 8, 2)
        tg = torch.from_numpy(ps.grad).to(device)
        theirs["ps_roi_align backward"] = lambda: torch.autograd.grad(out, tsg, tg, True)
    except (RuntimeError, NotImplementedError):
        pass
    return ours, theirs


def inference_calls(device, xp, dtype, boxes=16, size=14):
    """A few detections on the P2 to P5 levels of an 800x1216 image (the mask head at
    inference): multi-level RoI Align, and RoI Align on P2 alone, as ``calls`` returns them."""
    host = _workloads.problem(
        "multi_scale_roi_align", boxes, size, channels=CHANNELS, stride=4, dtype=dtype
    )
    every = _workloads.calls("multi_scale_roi_align", host.to(xp))
    multi, p2 = (
        f"multi_scale_roi_align forward, {boxes} boxes",
        f"roi_align forward on P2, {boxes} boxes",
    )
    ours = {multi: every["forward"], p2: every["roi_align_finest"]}
    theirs = {}
    if (peer := torchvision(device)) is None:
        return ours, theirs
    torch, ops = peer
    theirs[multi], finest, tr = torchvision_pyramid(torch, ops, device, host)
    theirs[p2] = lambda: ops.roi_align(finest, tr, size, 1 / 4, 2, True)
    return ours, theirs


def torchvision_pyramid(torch, ops, device, host):
    """(torchvision's MultiScaleRoIAlign call, its finest level, the boxes) for the NumPy
    problem ``host`` of multi_scale_roi_align."""
    levels = {str(i): torch.from_numpy(level).to(device) for i, level in enumerate(host.x)}
    tr = torch.from_numpy(host.boxes).to(levels["0"].dtype).to(device)
    per_image = [tr[tr[:, 0] == i, 1:] for i in range(_workloads.IMAGES)]
    pooler = ops.MultiScaleRoIAlign(list(levels), host.output_size, host.sampling_ratio)
    sizes = [_workloads.IMAGE] * _workloads.IMAGES
    return (lambda: pooler(levels, per_image, sizes)), levels["0"], tr


def cases(device, dtypes):
    """(name, dtype, cuproi callable, torchvision callable or None, bytes bound or None)."""
    xp = np
    if device == "cuda":
        import cupy as xp
    for name, head in _workloads.HEADS.items():
        boxes, size = head["num_boxes"] // FEWER, head["output_size"]
        for dtype in dtypes:
            ours, theirs, bound = calls(device, xp, boxes, size, dtype)
            for op, fn in ours.items():
                if device == "cpu" and "deterministic" in op:
                    continue  # the CPU backend is deterministic anyway: same call, same time
                yield f"{name}, {op}", np.dtype(dtype).name, fn, theirs.get(op), bound
    for dtype in dtypes:
        boxes = _workloads.HEADS["box head"]["num_boxes"] // FEWER
        ours, theirs = ps_and_multi_scale_calls(device, xp, dtype, boxes)
        for op, fn in ours.items():
            yield f"box head, {op}", np.dtype(dtype).name, fn, theirs.get(op), None
        ours, theirs = inference_calls(device, xp, dtype)
        for op, fn in ours.items():
            yield f"mask head inference, {op}", np.dtype(dtype).name, fn, theirs.get(op), None


def verdicts(times, device):
    """Markdown lines saying whether each target of the performance issue holds.

    ``times`` maps ``(case, dtype)`` to ``(cuproi seconds, torchvision seconds or None)``, as
    the table reports them; a target whose rows are missing is left out. All are judged on the
    box head (the reference workload).
    """
    lines = []

    def check(what, value, limit, unit=""):
        verdict = "met" if value <= limit else "missed"
        lines.append(f"- {what}: {value:.2f}{unit} (target: at most {limit}{unit}): {verdict}")

    def ours(op, dtype="float32"):
        return times.get((f"box head, {op}", dtype), (None, None))[0]

    def ratio(*ops):
        pairs = [times.get((f"box head, {op}", "float32"), (None, None)) for op in ops]
        if all(a is not None and b for a, b in pairs):
            return sum(a for a, _ in pairs) / sum(b for _, b in pairs)
        return None

    if device == "cpu":
        value = ratio("roi_align forward", "roi_align backward")
        if value is not None:
            check("roi_align forward + backward, of torchvision's time", value, 0.25)
        return lines
    for op in (
        "roi_align forward",
        "roi_align backward",
        "roi_align forward, channels-last features",
        "roi_align backward, channels-last gradient",
    ):
        value = ratio(op)
        if value is not None:
            check(f"{op}, of torchvision's time", value, 0.5)
    for op in ("forward", "backward"):
        deform, align = ours(f"deform_roi_pool {op}"), ours(f"roi_align {op}")
        if deform and align:
            check(f"deform_roi_pool {op}, of roi_align's", deform / align, 1.3)
    for op in ("roi_align", "roi_pool", "deform_roi_pool"):
        deterministic, default = ours(f"{op} backward, deterministic"), ours(f"{op} backward")
        if deterministic and default:
            check(f"{op} deterministic backward, of the default's", deterministic / default, 2)
    slower = sorted(
        case.removeprefix("box head, ")
        for (case, dtype), (t16, _) in times.items()
        if dtype == "float16"
        and case.startswith("box head, ")
        and t16 > times.get((case, "float32"), (float("inf"),))[0]
    )
    if any(dtype == "float16" for _, dtype in times):
        verdict = "met" if not slower else "missed by " + ", ".join(slower)
        lines.append(f"- float16 at least as fast as float32 on every op: {verdict}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="8 channels and 1/16 of the boxes: runs every case quickly (timings meaningless)",
    )
    args = parser.parse_args(argv)
    global CHANNELS, FEWER
    CHANNELS, FEWER = (8, 16) if args.smoke else (256, 1)
    repeat = args.repeat or (50 if args.device == "cuda" else 3)
    dtypes = [np.float32, np.float16] if args.device == "cuda" else [np.float32]
    run = timer(args.device)
    if args.device == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        machine = props["name"].decode()
        bandwidth = next((v for k, v in BANDWIDTH.items() if k in machine), None)
        versions = f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
    else:
        machine, bandwidth = f"{platform.processor() or platform.machine()} CPU", None
        versions = f"NumPy {np.__version__}"
    try:
        import torch
        import torchvision

        versions += f", torch {torch.__version__}, torchvision {torchvision.__version__}"
        if args.device == "cpu":
            versions += f" ({torch.get_num_threads()} threads)"
    except ImportError:
        versions += ", torchvision not installed"
    print(f"{machine}; cuproi {cuproi.__version__}, {versions}; median of {repeat} runs\n")
    print("| case | dtype | cuproi | torchvision | ratio | memory bound |")
    print("|---|---|---|---|---|---|")
    times = {}
    for case, dtype, ours, theirs, bound in cases(args.device, dtypes):
        t_ours = run(ours, repeat)
        try:
            t_theirs = run(theirs, repeat) if theirs is not None else None
        except (RuntimeError, NotImplementedError) as error:  # e.g. a dtype torchvision lacks
            print(f"<!-- torchvision {case} {dtype}: {str(error).splitlines()[0]} -->")
            t_theirs = None
        times[case, dtype] = (t_ours, t_theirs)
        ratio = f"{t_ours / t_theirs:.2f}" if t_theirs else "-"
        floor = f"{bound / bandwidth * 1e6:.0f} µs" if bound and bandwidth else "-"
        theirs_text = f"{t_theirs * 1e3:.3f} ms" if t_theirs else "-"
        print(f"| {case} | {dtype} | {t_ours * 1e3:.3f} ms | {theirs_text} | {ratio} | {floor} |")
    print("\nTargets (box head):\n")
    print("\n".join(verdicts(times, args.device)))
    if args.device == "cpu":
        corners.report(repeat, args.smoke)


if __name__ == "__main__":
    main()
