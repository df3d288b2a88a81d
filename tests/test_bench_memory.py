"""The memory benchmarks of asv_bench run (on a small map here): every call and dtype."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "asv_bench"))
from benchmarks import bench_memory  # noqa: E402

CASES = [
    (call, dtype)
    for call in bench_memory.OneBoxOnALargeMap.params[0]
    for dtype in bench_memory.OneBoxOnALargeMap.params[1]
]


@pytest.mark.parametrize(("call", "dtype"), CASES)
def test_memory_benchmark_runs(monkeypatch, call, dtype):
    monkeypatch.setattr(bench_memory, "SIZE", 400)
    bench = bench_memory.OneBoxOnALargeMap()
    bench.setup(call, dtype)
    bench.time_call(call, dtype)
    peak = bench.track_peak_beyond_result(call, dtype)
    assert 0 < peak < 400 * 400 * 4  # bytes: less than the map


def test_training_step_memory_benchmark_runs(monkeypatch):
    """The working memory of a small training step, in a fresh process: at least its output,
    which it returns (written whole; the gradient's pages are counted where boxes reach), and
    far below the 4096-box step's; torchvision's is skipped where it is not installed."""
    monkeypatch.setattr(bench_memory.TrainingStep, "CHANNELS", 4)
    monkeypatch.setattr(bench_memory.TrainingStep, "BOXES", 64)
    bench = bench_memory.TrainingStep()
    bench.setup("cuproi")
    grown = bench.track_resident_growth("cuproi")
    assert 64 * 4 * 7 * 7 * 4 <= grown < 100 * 2**20
    monkeypatch.setitem(bench_memory.TrainingStep.MODULES, "torchvision", "no_such_module")
    with pytest.raises(NotImplementedError):
        bench.setup("torchvision")
