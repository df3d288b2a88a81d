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
