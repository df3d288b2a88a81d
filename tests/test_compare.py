"""asv_bench/compare.py's verdicts on the targets of the performance issue, from timings, and
the corners of issue 27 it runs on the CPU (asv_bench/corners.py)."""

import importlib
import sys
import time
import types
from pathlib import Path

import pytest

from cuproi import _timing

sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
import compare  # noqa: E402
import corners  # noqa: E402

MS = 1e-3


def box(op, dtype="float32"):
    return (f"box head, {op}", dtype)


def gpu_times():
    """Timings (cuproi, torchvision) in seconds where every GPU target holds."""
    times = {
        box("roi_align forward"): (0.4 * MS, 1.0 * MS),
        box("roi_align backward"): (0.9 * MS, 2.0 * MS),
        box("roi_align forward, channels-last features"): (0.3 * MS, 1.0 * MS),
        box("roi_align backward, channels-last gradient"): (0.8 * MS, 2.0 * MS),
        box("roi_align backward, deterministic"): (1.7 * MS, None),
        box("roi_pool backward"): (0.2 * MS, 0.5 * MS),
        box("roi_pool backward, deterministic"): (0.3 * MS, None),
        box("deform_roi_pool forward"): (0.5 * MS, None),
        box("deform_roi_pool backward"): (1.1 * MS, None),
        box("deform_roi_pool backward, deterministic"): (2.0 * MS, None),
        ("mask head, roi_align forward", "float32"): (9.0 * MS, 1.0 * MS),  # not judged
    }
    times.update({(case, "float16"): (t / 2, theirs) for (case, _), (t, theirs) in times.items()})
    return times


def test_every_gpu_target_met():
    lines = compare.verdicts(gpu_times(), "cuda")
    assert len(lines) == 10
    assert all(line.endswith(": met") for line in lines), lines
    assert "- roi_align forward, of torchvision's time: 0.40 (target: at most 0.5): met" in lines


def test_missed_gpu_targets_are_named():
    times = gpu_times()
    times[box("roi_align backward")] = (1.2 * MS, 2.0 * MS)  # 0.6 of torchvision's
    times[box("deform_roi_pool forward")] = (0.6 * MS, None)  # 1.5 times roi_align's
    times[box("roi_pool backward, deterministic")] = (0.5 * MS, None)  # 2.5 times the default
    times[box("roi_align forward", "float16")] = (0.5 * MS, 1.0 * MS)  # slower than float32
    missed = [line for line in compare.verdicts(times, "cuda") if not line.endswith(": met")]
    assert missed == [
        "- roi_align backward, of torchvision's time: 0.60 (target: at most 0.5): missed",
        "- deform_roi_pool forward, of roi_align's: 1.50 (target: at most 1.3): missed",
        "- roi_pool deterministic backward, of the default's: 2.50 (target: at most 2): missed",
        "- float16 at least as fast as float32 on every op: missed by roi_align forward",
    ]


def test_cpu_target_and_missing_rows():
    times = {
        box("roi_align forward"): (20 * MS, 90 * MS),
        box("roi_align backward"): (40 * MS, 400 * MS),
    }
    assert compare.verdicts(times, "cpu") == [
        "- roi_align forward + backward, of torchvision's time: 0.12 (target: at most 0.25): met"
    ]
    times[box("roi_align backward")] = (120 * MS, 100 * MS)
    assert compare.verdicts(times, "cpu")[0].endswith("0.74 (target: at most 0.25): missed")
    times[box("roi_align backward")] = (120 * MS, None)  # without torchvision: no verdict
    assert compare.verdicts(times, "cpu") == []
    assert compare.verdicts({}, "cuda") == []


@pytest.mark.gpu
def test_runs_on_the_cuda_path(capsys):
    """Every case of the GPU comparison runs (tiny workloads; on the CuPy stand-in without a
    GPU, so the times mean nothing), and the targets are judged from its table."""
    compare.main(["--device", "cuda", "--repeat", "1", "--smoke"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| box head")]
    assert len(rows) >= 30 and all(" ms |" in row for row in rows)
    assert "Targets (box head):" in out
    assert "- deform_roi_pool forward, of roi_align's:" in out


def test_torchvision_only_where_it_runs(monkeypatch):
    """Beside CuPy's stand-in, a torch without CUDA has no torchvision to time on the GPU (it
    raised 'Found no NVIDIA driver' where torchvision is installed)."""
    torch = pytest.importorskip("torch")
    fake = types.ModuleType("torchvision")
    fake.ops = types.ModuleType("torchvision.ops")
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.ops", fake.ops)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compare.torchvision("cpu") == (torch, fake.ops)
    assert compare.torchvision("cuda") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compare.torchvision("cuda") == (torch, fake.ops)


def stand_in_torchvision(monkeypatch):
    """cuproi.torch's ops as torchvision.ops (same signatures), for torchvision's calls to run
    where it is not installed."""
    import cuproi.torch as ct

    fake = types.ModuleType("torchvision")
    fake.ops = types.ModuleType("torchvision.ops")
    for name in ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "MultiScaleRoIAlign"):
        setattr(fake.ops, name, getattr(ct, name))
    fake.__version__ = "0.0-stand-in"
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.ops", fake.ops)


def corners_results(value=0.1):
    """Results of asv_bench/corners.py where every case of every library is ``value`` seconds
    (bytes for the memory case), and the floor 1/20 of it."""
    results = {}
    for goal in corners.GOALS:
        for case, library in (goal.ours, goal.theirs):
            for threads in corners.THREADS:
                results[case, library, threads] = value
    for threads in corners.THREADS:
        results[corners.FORWARD, "floor", threads] = value / 20
    return results


def test_every_corner_goal_judged():
    """One verdict per goal of issue 27 and thread count: equal times meet every goal of 1 or
    more, and miss those below 1; the floor's 20x misses its 10x."""
    lines = corners.verdicts(corners_results())
    assert len(lines) == len(corners.GOALS) * len(corners.THREADS) == 30
    met = {line.split(":")[0].removeprefix("- ") for line in lines if line.endswith(": met")}
    assert met == {
        "fixed overhead, roi_align forward, 1 box, 1 channel",
        "cuproi.torch forward+backward, 1 box",
        'pool_mode="max" vs avg, reference workload',
        "deform_roi_pool backward vs roi_align backward",
        "working memory, 4096 boxes forward+backward",
    }
    assert (
        "- 16 boxes, 256 channels, roi_align forward: of torchvision's time, 2 threads: 1.00 "
        "(goal: at most 0.5): missed"
    ) in lines
    assert (
        "- roi_align forward vs this machine's memory/compute floor: of the memory-copy floor, "
        "1 thread: 20.00 (goal: at most 10): missed"
    ) in lines


def test_corner_goals_without_a_peer_say_so():
    results = {key: v for key, v in corners_results().items() if key[1] != "onnxruntime"}
    del results["roi_pool backward, 16 boxes", "torchvision", 2]
    unmeasured = [line for line in corners.verdicts(results) if line.endswith(" figure")]
    assert unmeasured == [
        "- 16 boxes, roi_pool forward with argmax / backward: backward, of torchvision's time, "
        "2 threads (goal: at most 0.5): no torchvision figure",
        '- pool_mode="max" vs avg, reference workload: max forward, of onnxruntime\'s max mode, '
        "1 thread (goal: at most 1): no onnxruntime figure",
        '- pool_mode="max" vs avg, reference workload: max forward, of onnxruntime\'s max mode, '
        "2 threads (goal: at most 1): no onnxruntime figure",
    ]


def test_issue_table_rows():
    """The goals cover the eleven rows of issue 27's table, in its order."""
    assert corners.ROWS == (
        "fixed overhead, roi_align forward, 1 box, 1 channel",
        "cuproi.torch forward+backward, 1 box",
        "16 boxes, 256 channels, roi_align forward",
        "16 boxes, roi_pool forward with argmax / backward",
        "16 boxes at 7x7 on P2 (2x256x200x304)",
        'pool_mode="max" vs avg, reference workload',
        "deform_roi_pool backward vs roi_align backward",
        "roi_pool forward with argmax, box head",
        "ps_roi_pool forward/backward",
        "working memory, 4096 boxes forward+backward",
        "roi_align forward vs this machine's memory/compute floor",
    )


def asv_benchmark(name):
    """The asv benchmark method ``module.Class.method`` of asv_bench/benchmarks, or None."""
    module, cls, method = name.split(".")
    found = importlib.import_module(f"benchmarks.{module}")
    return getattr(getattr(found, cls, None), method, None)


def test_every_corner_has_an_asv_benchmark():
    """Every measured case of the goals (cuproi's side) names asv benchmarks that exist."""
    pytest.importorskip("torch")
    asv = {case.name: case.asv for case in corners.cases(channels=2, fewer=64)}
    asv.update(corners.ASV)
    for goal in corners.GOALS:
        for case, library in (goal.ours, goal.theirs):
            if library in ("cuproi", "floor"):
                names = asv["floor" if library == "floor" else case]
                assert names and all(callable(asv_benchmark(n)) for n in names), (case, names)


def smoke_tables(out):
    """{case: [cells of its 1-thread and 2-thread lines]} of the corners' table in ``out``."""
    rows = {}
    section = out[out.index("Issue 27's CPU corners") :]
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| case"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def test_runs_on_the_cpu_beside_torchvision_and_onnxruntime(capsys, monkeypatch):
    """The comparison's torchvision calls, with cuproi.torch standing in for torchvision.ops
    (same signatures), so that they run where torchvision is not installed; then the corners
    of issue 27: every case, 1 and 2 threads, cuproi, torchvision and onnxruntime, the working
    memory of both torch modules in their own processes, and a verdict on every goal."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    stand_in_torchvision(monkeypatch)
    monkeypatch.setattr(corners, "TORCHVISION_OPS", "cuproi.torch")
    compare.main(["--device", "cpu", "--repeat", "1", "--smoke"])
    out = capsys.readouterr().out
    table = out[: out.index("Issue 27's CPU corners")]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")][1:]
    compared = [row for row in rows if " ms" in row[4]]
    assert "torchvision 0.0-stand-in" in out
    assert {"box head, multi_scale_roi_align forward", "box head, ps_roi_align backward"} <= {
        row[1].strip() for row in compared
    }
    rows = smoke_tables(out)
    assert len(rows) == 15 and corners.MEMORY in rows
    for case, lines in rows.items():
        assert [line[0] for line in lines] == ["1", "2"], case
        assert all(" ms" in line[1] or " MB" in line[1] for line in lines), case
    peers = {case: [line[2:] for line in lines] for case, lines in rows.items()}
    assert peers["roi_align forward, 1 box, 1 channel"][0][1].endswith(" ms")  # onnxruntime
    assert peers["roi_align max forward, box head"][1][1].endswith(" ms")
    assert peers[corners.MEMORY][1][0].endswith(" MB")  # torchvision's memory
    assert peers["ps_roi_pool backward, R-FCN box head"][0][0].endswith(" ms")
    goals = out[out.index("Goals (issue 27):") :].splitlines()[2:]
    assert len(goals) == 30
    assert all(line.endswith((": met", ": missed")) for line in goals), goals
    assert "Floor of 'roi_align forward, box head':" in out


def test_corners_smoke_without_onnxruntime(capsys, monkeypatch):
    """Without onnxruntime (nor torchvision) the corners still run: its column stays empty and
    the goal it would judge says so."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    corners.main(["--smoke", "--repeat", "1"])
    out = capsys.readouterr().out
    rows = smoke_tables(out)
    assert len(rows) == 15
    assert all(line[3] == "-" for lines in rows.values() for line in lines)
    assert "onnxruntime not installed" in out
    assert "of onnxruntime's max mode, 1 thread (goal: at most 1): no onnxruntime figure" in out


def test_interleaved_timing_repeats_short_calls():
    """Calls shorter than ``least`` are timed over as many calls as fill it, all in turn; a
    slow first call (a cold start) does not count."""
    order, count = [], {"fast": 0, "slow": 0, "cold": 0}

    def make(key, seconds, first=None):
        def call():
            order.append(key)
            count[key] += 1
            wait = first if first is not None and count[key] == 1 else seconds
            if wait:  # sleep(0) yields the core: on a loaded machine, for a millisecond
                time.sleep(wait)

        return call

    calls = {"fast": make("fast", 0), "slow": make("slow", 0.01), "cold": make("cold", 0, 0.01)}
    seen = []
    times = _timing.interleaved_seconds(calls, repeat=2, before=seen.append, least=0.005)
    assert seen == ["fast", "slow", "cold"] * 3  # a warm-up round, then 2 timed rounds, in turn
    assert count["slow"] == 4  # its cold start, its measure, and one call a timed turn
    assert count["fast"] > 3 * 10 and count["cold"] > 3 * 10  # many calls a turn
    assert times["slow"] >= 0.01 and times["fast"] < 0.005 and times["cold"] < 0.005
    assert order[-1] == "cold" and order[order.index("slow") + 1] == "slow"
