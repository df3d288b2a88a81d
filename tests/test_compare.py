"""asv_bench/compare.py's verdicts on the targets of the performance issue, from timings."""

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
import compare  # noqa: E402

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


def test_runs_on_the_cpu_beside_torchvision(capsys, monkeypatch):
    """The comparison's torchvision calls, with cuproi.torch standing in for torchvision.ops
    (same signatures), so that they run where torchvision is not installed."""
    pytest.importorskip("torch")
    import cuproi.torch as ct

    fake = types.ModuleType("torchvision")
    fake.ops = types.ModuleType("torchvision.ops")
    for name in ("roi_align", "roi_pool", "ps_roi_align", "MultiScaleRoIAlign"):
        setattr(fake.ops, name, getattr(ct, name))
    fake.__version__ = "0.0-stand-in"
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.ops", fake.ops)
    compare.main(["--device", "cpu", "--repeat", "1", "--smoke"])
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ")][1:]
    compared = [row for row in rows if " ms" in row[4]]
    assert "torchvision 0.0-stand-in" in out
    assert {"box head, multi_scale_roi_align forward", "box head, ps_roi_align backward"} <= {
        row[1].strip() for row in compared
    }
