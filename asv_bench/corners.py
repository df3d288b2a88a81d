"""The CPU corners of issue 27: where cuproi is slower than a peer, with the goal of each.

    python asv_bench/corners.py            # alone; compare.py --device cpu runs it after its table
    python asv_bench/corners.py --smoke    # tiny workloads: runs every path quickly

Each case is timed for cuproi (NumPy backend), torchvision's C++ ops and onnxruntime's
``RoiAlign`` (where installed and where they have the op), with 1 and with 2 threads, the calls
of every library and thread count taken in turn, round after round, a call shorter than 20 ms
repeated to fill them (``_timing.interleaved_seconds``): torchvision's two threads stall on a
loaded machine, and a load that comes and goes then weighs on every library alike. Threads:
``CUPROI_NUM_THREADS`` (read at every call), ``torch.set_num_threads``, and one onnxruntime
session per count (``intra_op_num_threads``, without spinning, which would take the cores
from the next library's call).

Working memory is the growth of the peak resident set size over RoI Align's forward and input
gradient of 4096 boxes, the output kept for the backward, results included, each library in a
fresh process (``_workloads.training_memory``, ``_timing.resident_growth``): the operating
system's count, the same for NumPy and torch. The floor of RoI Align's forward is the bytes it
must move (its output and every feature element its samples touch, each once) at one thread's
``np.copyto`` bandwidth. Then the goals of the issue's table, each met or missed per thread
count. onnxruntime's ``max`` mode is its own (the largest weighted corner, not of the
interpolated samples): timed beside cuproi's max mode, not compared for values.
"""

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import cuproi  # noqa: E402
from cuproi import _timing, _workloads  # noqa: E402

THREADS = (1, 2)
LIBRARIES = ("cuproi", "torchvision", "onnxruntime")
# The torch ops module measured as torchvision in the memory case (a stand-in in the tests).
TORCHVISION_OPS = "torchvision.ops"
MEMORY = "roi_align forward+backward, 4096 boxes, working memory"
FORWARD = "roi_align forward, box head"
# The asv benchmarks of what is not a timed Case: the memory case, and the floor.
ASV = {
    MEMORY: ("bench_memory.TrainingStep.track_resident_growth",),
    "floor": ("bench_roi_align.Floor.track_forward_floor",),
}


class Case(NamedTuple):
    """One measured case: ``calls`` maps a library to ``threads -> call``; ``asv`` names the
    benchmarks of the same case (module.Class.method under asv_bench/benchmarks)."""

    name: str
    calls: dict
    asv: tuple


class Goal(NamedTuple):
    """A goal of the issue's table: ``ours`` / ``theirs`` at most ``limit``.

    ``ours`` and ``theirs`` are (case, library) pairs; the library ``floor`` is the machine's
    floor of the case.
    """

    row: str
    what: str
    ours: tuple
    theirs: tuple
    limit: float


def versus(row, case, limit, what="of torchvision's time", peer="torchvision"):
    """The goal of ``row``: cuproi's ``case`` at most ``limit`` times ``peer``'s."""
    return Goal(row, what, (case, "cuproi"), (case, peer), limit)


MAX = 'pool_mode="max" vs avg, reference workload'
MAX_FORWARD, BACKWARD = "roi_align max forward, box head", "roi_align backward, box head"
FEW_ROI_POOL = "16 boxes, roi_pool forward with argmax / backward"
PS_ROI_POOL = "ps_roi_pool forward/backward"
# The table, row by row (its "case" column), with the goals that say it is done.
GOALS = (
    versus(
        "fixed overhead, roi_align forward, 1 box, 1 channel",
        "roi_align forward, 1 box, 1 channel",
        5,
    ),
    versus(
        "cuproi.torch forward+backward, 1 box",
        "cuproi.torch roi_align forward+backward, 1 box, 1 channel",
        3,
    ),
    versus("16 boxes, 256 channels, roi_align forward", "roi_align forward, 16 boxes", 0.5),
    versus(
        FEW_ROI_POOL,
        "roi_pool forward with argmax, 16 boxes",
        0.5,
        "forward with argmax, of torchvision's time",
    ),
    versus(FEW_ROI_POOL, "roi_pool backward, 16 boxes", 0.5, "backward, of torchvision's time"),
    versus(
        "16 boxes at 7x7 on P2 (2x256x200x304)",
        "roi_align forward, 16 boxes on P2",
        0.5,
        "roi_align forward, of torchvision's time",
    ),
    Goal(MAX, "max forward, of avg's time", (MAX_FORWARD, "cuproi"), (FORWARD, "cuproi"), 2),
    Goal(
        MAX,
        "max backward, of avg's time",
        ("roi_align max backward, box head", "cuproi"),
        (BACKWARD, "cuproi"),
        2,
    ),
    versus(MAX, MAX_FORWARD, 1, "max forward, of onnxruntime's max mode", "onnxruntime"),
    Goal(
        "deform_roi_pool backward vs roi_align backward",
        "of roi_align backward's time",
        ("deform_roi_pool backward, box head, zero offsets", "cuproi"),
        (BACKWARD, "cuproi"),
        1.3,
    ),
    versus(
        "roi_pool forward with argmax, box head", "roi_pool forward with argmax, box head", 0.25
    ),
    versus(
        PS_ROI_POOL, "ps_roi_pool forward, R-FCN box head", 0.25, "forward, of torchvision's time"
    ),
    versus(
        PS_ROI_POOL, "ps_roi_pool backward, R-FCN box head", 0.25, "backward, of torchvision's time"
    ),
    versus(
        "working memory, 4096 boxes forward+backward", MEMORY, 1, "of torchvision's peak growth"
    ),
    versus(
        "roi_align forward vs this machine's memory/compute floor",
        FORWARD,
        10,
        "of the memory-copy floor",
        "floor",
    ),
)
ROWS = tuple(dict.fromkeys(goal.row for goal in GOALS))


def torchvision_ops():
    """``torchvision.ops``, or None where torch or torchvision is not installed."""
    try:
        import torch  # noqa: F401
        from torchvision import ops
    except ImportError:
        return None
    return ops


def onnxruntime_roi_align(p, mode="avg"):
    """``threads -> call`` of onnxruntime's ``RoiAlign`` on the problem ``p``, or None where
    onnx or onnxruntime is not installed.

    A one-node model built with ``onnx.helper`` (opset 16: ``half_pixel`` is cuproi's
    ``aligned=True``); ONNX takes (K, 4) boxes and the (K,) batch indices apart.
    """
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    (ph, pw), k = p.output_size, len(p.boxes)
    node = helper.make_node(
        "RoiAlign",
        ["x", "rois", "batch_indices"],
        ["y"],
        mode=mode,
        output_height=ph,
        output_width=pw,
        sampling_ratio=p.sampling_ratio,
        spatial_scale=p.spatial_scale,
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "roi_align",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, p.x.shape),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, (k, 4)),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, (k,)),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 16)]
    ).SerializeToString()
    feeds = {
        "x": p.x,
        "rois": np.ascontiguousarray(p.boxes[:, 1:]),
        "batch_indices": p.boxes[:, 0].astype(np.int64),
    }
    sessions = {}

    def session(threads):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: not max mode's warning at every session
        run = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run
        return lambda: run(None, feeds)[0]

    def call(threads):
        if threads not in sessions:
            sessions[threads] = session(threads)
        return sessions[threads]

    return call


def same(call):
    """``threads -> call`` of a library whose threads are set globally (cuproi, torch)."""
    return lambda threads: call


def scaled(op, workload, channels=_workloads.CHANNELS, fewer=1):
    """``_workloads.problem(op, **workload)`` with ``channels`` and the boxes divided by
    ``fewer`` (the reference workloads, or with --smoke a tiny version of each)."""
    workload = {"channels": channels, **workload}
    workload["num_boxes"] = max(workload["num_boxes"] // fewer, 1)
    return _workloads.problem(op, **workload)


def cases(channels=_workloads.CHANNELS, fewer=1):
    """The timed :class:`Case` of every goal, on :func:`scaled` workloads."""
    tv = torchvision_ops()
    one = _workloads.problem("roi_align", **_workloads.ONE_BOX)
    yield roi_align("roi_align forward, 1 box, 1 channel", one, tv, "bench_overhead.OneBox")
    yield training_step(one, tv)
    few = scaled("roi_align", _workloads.FEW_BOXES, channels, fewer)
    yield roi_align("roi_align forward, 16 boxes", few, tv, "bench_roi_align.FewBoxes")
    p2 = scaled("roi_align", _workloads.FEW_BOXES_P2, channels, fewer)
    yield roi_align("roi_align forward, 16 boxes on P2", p2, tv, "bench_roi_align.FewBoxes")
    few = scaled("roi_pool", _workloads.FEW_BOXES, channels, fewer)
    yield from roi_pool(few, tv, "16 boxes", ("forward_argmax", "backward"), "FewBoxes")
    # Zero offsets: Deformable RoI Pooling samples the boxes' own bins, as RoI Align does.
    workload = {**_workloads.HEADS["box head"], "offset_sigma": 0}
    head = scaled("deform_roi_pool", workload, channels, fewer)
    yield roi_align(FORWARD, head, tv, "bench_roi_align.BoxHead")
    yield from max_mode(head, tv)
    deform = _workloads.calls("deform_roi_pool", head)["backward"]
    asv = ("bench_deform_roi_pool.BoxHead.time_backward",)
    yield Case("deform_roi_pool backward, box head, zero offsets", {"cuproi": same(deform)}, asv)
    head = scaled("roi_pool", _workloads.HEADS["box head"], channels, fewer)
    yield from roi_pool(head, tv, "box head", ("forward_argmax",), "BoxHead")
    rfcn = {**_workloads.SINGLE_MAP_HEAD, "channels": _workloads.RFCN_CHANNELS["bbox"]}
    yield from ps_roi_pool(scaled("ps_roi_pool", rfcn, fewer=fewer), tv)


def roi_align(name, p, tv, asv_class):
    """RoI Align's forward on ``p`` beside torchvision's and onnxruntime's avg mode."""
    calls = {"cuproi": same(_workloads.calls("roi_align", p)["forward"])}
    if tv is not None:
        args = (p.output_size, p.spatial_scale, p.sampling_ratio, True)
        calls["torchvision"] = same(torchvision_calls(tv.roi_align, p, *args)["forward"])
    if (ort := onnxruntime_roi_align(p)) is not None:
        calls["onnxruntime"] = ort
    return Case(name, calls, (f"{asv_class}.time_forward",))


def torchvision_calls(op, p, *args):
    """{"forward": call, "backward": call} of torchvision's ``op(input, boxes, *args)`` on ``p``.

    The backward is the input gradient of a graph built once and replayed (retain_graph), as
    the comparison's backward rows; torchvision wants the boxes in the features' dtype.
    """
    import torch

    tx = torch.from_numpy(p.x)
    tr = torch.from_numpy(p.boxes).to(tx.dtype)
    txg = tx.clone().requires_grad_()
    out, g = op(txg, tr, *args), torch.from_numpy(p.grad)
    return {
        "forward": lambda: op(tx, tr, *args),
        "backward": lambda: torch.autograd.grad(out, txg, g, True),
    }


def training_step(p, tv):
    """cuproi.torch's forward and backward beside torchvision's, both through torch autograd
    (no cuproi call where torch is not installed)."""
    calls = {}
    try:
        import cuproi.torch
    except ImportError:
        pass
    else:
        calls["cuproi"] = same(_workloads.training_step(p, cuproi.torch))
    if tv is not None:
        calls["torchvision"] = same(_workloads.training_step(p, tv))
    asv = ("bench_overhead.OneBoxTorch.time_forward_backward",)
    return Case("cuproi.torch roi_align forward+backward, 1 box, 1 channel", calls, asv)


def roi_pool(p, tv, where, ways, asv_class):
    """RoI Pool's ``ways`` (``forward_argmax``, ``backward``) on ``p``, beside torchvision's."""
    every = _workloads.calls("roi_pool", p)
    theirs = {}
    if tv is not None:
        theirs = torchvision_calls(tv.roi_pool, p, p.output_size, p.spatial_scale)
        # torchvision's kernel always finds the argmax, which its backward needs.
        theirs["forward_argmax"] = theirs["forward"]
    for way in ways:
        calls = {"cuproi": same(every[way])}
        if way in theirs:
            calls["torchvision"] = same(theirs[way])
        name = "roi_pool forward with argmax" if way == "forward_argmax" else "roi_pool backward"
        yield Case(f"{name}, {where}", calls, (f"bench_roi_pool.{asv_class}.time_{way}",))


def max_mode(p, tv):
    """RoI Align's max mode forward and backward on the box head, beside its avg mode's backward
    and onnxruntime's max mode (the avg forward is :data:`FORWARD`)."""
    every = _workloads.calls("roi_align", p)
    calls = {"cuproi": same(every["max_forward"])}
    if (ort := onnxruntime_roi_align(p, "max")) is not None:
        calls["onnxruntime"] = ort
    asv = "bench_roi_align.MaxModeAndBoxGradient.time_max_"
    yield Case(MAX_FORWARD, calls, (f"{asv}forward",))
    calls = {"cuproi": same(every["max_backward"])}
    yield Case("roi_align max backward, box head", calls, (f"{asv}backward",))
    calls = {"cuproi": same(every["backward"])}
    if tv is not None:
        args = (p.output_size, p.spatial_scale, p.sampling_ratio, True)
        calls["torchvision"] = same(torchvision_calls(tv.roi_align, p, *args)["backward"])
    yield Case(BACKWARD, calls, ("bench_roi_align.BoxHead.time_backward",))


def ps_roi_pool(p, tv):
    """ps_roi_pool forward and backward on R-FCN's box head, beside torchvision's."""
    every = _workloads.calls("ps_roi_pool", p)
    theirs = {}
    if tv is not None:
        theirs = torchvision_calls(tv.ps_roi_pool, p, p.output_size, p.spatial_scale)
    for way in ("forward", "backward"):
        calls = {"cuproi": same(every[way])}
        if way in theirs:
            calls["torchvision"] = same(theirs[way])
        asv = (f"bench_ps_roi_pool.Heads.time_{way}",)
        yield Case(f"ps_roi_pool {way}, R-FCN box head", calls, asv)


def set_threads(threads):
    """Set the threads of cuproi and torch (onnxruntime's are per session) for the next call."""
    os.environ["CUPROI_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def measure(repeat=3, channels=_workloads.CHANNELS, fewer=1):
    """({(case, library, threads): seconds or bytes}, [Case], {library: reason not measured}).

    Every case's calls, all libraries and thread counts in turn; the working memory, each
    library and thread count in its own process; the floor of :data:`FORWARD`.
    """
    found = list(cases(channels, fewer))
    calls = {
        (case.name, library, threads): make(threads)
        for case in found
        for library, make in case.calls.items()
        for threads in THREADS
    }
    saved = os.environ.get("CUPROI_NUM_THREADS")
    try:
        results = _timing.interleaved_seconds(calls, repeat, lambda key: set_threads(key[2]))
    finally:
        if saved is None:
            os.environ.pop("CUPROI_NUM_THREADS", None)
        else:
            os.environ["CUPROI_NUM_THREADS"] = saved
    errors = {}
    boxes = max(_workloads.MANY_BOXES["num_boxes"] // fewer, 1)
    for library, module in (("cuproi", "cuproi"), ("torchvision", TORCHVISION_OPS)):
        for threads in THREADS:
            try:
                results[MEMORY, library, threads] = _timing.resident_growth_apart(
                    "cuproi._workloads:training_memory", module, channels, boxes, threads=threads
                )
            except RuntimeError as error:
                errors[library] = str(error)
    head = scaled("roi_align", _workloads.HEADS["box head"], channels, fewer)
    floor = _workloads.footprint_bytes(head.x, head.boxes, 7) / _timing.copy_bandwidth()
    results.update({(FORWARD, "floor", threads): floor for threads in THREADS})
    return results, found, errors


def table(results, found):
    """Markdown lines: one per case and thread count, the time (or memory) of each library."""
    lines = ["| case | threads | " + " | ".join(LIBRARIES) + " |", "|---|---|---|---|---|"]
    names = [case.name for case in found] + [MEMORY]
    for name in names:
        for threads in THREADS:
            cells = [show(results.get((name, library, threads)), name) for library in LIBRARIES]
            lines.append(f"| {name} | {threads} | " + " | ".join(cells) + " |")
    return lines


def show(value, name):
    """A cell: milliseconds, or megabytes for the memory case, or '-'."""
    if value is None:
        return "-"
    return f"{value / 1e6:.1f} MB" if name == MEMORY else f"{value * 1e3:.3f} ms"


def verdicts(results):
    """Markdown lines, one per goal and thread count: its value, goal, and met or missed.

    ``results`` maps ``(case, library, threads)`` to seconds (bytes for :data:`MEMORY`); a goal
    whose cases were not measured (a library not installed) says which.
    """
    lines = []
    for goal in GOALS:
        for threads in THREADS:
            ours = results.get((*goal.ours, threads))
            theirs = results.get((*goal.theirs, threads))
            head = f"- {goal.row}: {goal.what}, {threads} thread{'s' * (threads > 1)}"
            missing = [
                lib for (_, lib), v in ((goal.ours, ours), (goal.theirs, theirs)) if v is None
            ]
            if missing:
                lines.append(f"{head} (goal: at most {goal.limit}): no {missing[0]} figure")
                continue
            value = ours / theirs
            verdict = "met" if value <= goal.limit else "missed"
            lines.append(f"{head}: {value:.2f} (goal: at most {goal.limit}): {verdict}")
    return lines


def versions():
    """The libraries and versions measured, one line."""
    found = [f"cuproi {cuproi.__version__} (NumPy {np.__version__})"]
    try:
        import torch
        import torchvision

        found.append(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    except ImportError:
        found.append("torchvision not installed")
    try:
        import onnxruntime

        found.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        found.append("onnxruntime not installed")
    return "; ".join(found)


def report(repeat=3, smoke=False):
    """Print the corners' table, the floor, and the goals of issue 27."""
    channels, fewer = (8, 16) if smoke else (_workloads.CHANNELS, 1)
    results, found, errors = measure(repeat, channels, fewer)
    machine = platform.processor() or platform.machine()
    print(f"\nIssue 27's CPU corners ({machine}; {versions()}; median of {repeat} rounds):\n")
    print("\n".join(table(results, found)))
    for library, error in errors.items():
        print(f"<!-- {library} working memory not measured: {error} -->")
    floor = results[FORWARD, "floor", THREADS[0]]
    print(f"\nFloor of '{FORWARD}': {floor * 1e3:.3f} ms (bytes moved at np.copyto's bandwidth)")
    print("\nGoals (issue 27):\n")
    print("\n".join(verdicts(results)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny workloads, every path")
    args = parser.parse_args(argv)
    report(args.repeat, args.smoke)


if __name__ == "__main__":
    main()
