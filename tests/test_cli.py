"""The command line: demo (the default), info and bench exit 0 and write what they say; bad
options stop with argparse's usage error (exit status 2) and a message naming the problem."""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cuproi
from cuproi import _timing
from cuproi.__main__ import main

ROOT = Path(__file__).parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def figure_path(out):
    (line,) = [line for line in out.splitlines() if line.startswith("figure: ")]
    return Path(line.removeprefix("figure: "))


def test_demo_prints_the_tables_and_writes_the_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, _ = run(capsys, "demo", "--out", str(tmp_path / "new"))
    assert status == 0
    assert "NumPy" in out and "CPU backend available" in out and "CuPy" in out
    for name in ("house", "tree", "car", "person", "sun"):
        assert name in out
    for method in ("roi_pool", "roi_align", "deform_roi_pool"):
        rows = [line for line in out.splitlines() if line.startswith(method)]
        assert len(rows) >= 2 and all("(5, 8, 7, 7)" in r or "(1, 8, 24, 36)" in r for r in rows)
    assert "quantization error" in out and "agreement" in out
    assert "numpy only" in out or "e-" in out  # across backends, or said that there is one
    path = figure_path(out)
    assert path == (tmp_path / "new" / "cuproi_demo.png").resolve()
    assert path.read_bytes()[:8] == PNG


def test_demo_options(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, _ = run(
        capsys,
        "demo",
        "--out",
        str(tmp_path),
        "--boxes",
        "10,20,200,180; 64,32,96.5,300",
        "--output-size",
        "3x4",
        "--stride",
        "8",
        "--sampling-ratio",
        "0",
    )
    assert status == 0
    assert "box 1" in out and "box 2" in out and "house" not in out
    assert "(2, 8, 3, 4)" in out and "(1, 8, 48, 72)" in out and "stride 8" in out
    assert figure_path(out).is_file()


def test_no_command_runs_the_demo(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys)
    assert status == 0 and figure_path(out) == tmp_path / "cuproi_demo.png"
    status, out, _ = run(capsys, "--out", "sub", "--output-size", "2")
    assert status == 0 and figure_path(out) == tmp_path / "sub" / "cuproi_demo.png"


def test_demo_without_matplotlib_still_prints_the_table(capsys, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "cuproi.viz", raising=False)
    status, out, _ = run(capsys, "demo", "--out", str(tmp_path))
    assert status == 0
    assert "roi_align" in out and "pip install matplotlib" in out
    assert not list(tmp_path.iterdir())


def test_info(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cache"))
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert "numpy: available" in out and "cupy:" in out
    assert str(tmp_path / "cache") in out and "$CUPY_CACHE_DIR" in out
    assert str(ROOT / "kernels") in out or "cuproi/kernels" in out
    assert "matplotlib" in out and "torchvision" in out


# A timed row of the bench table: op (may hold a space), pass, backend, cuproi's median and
# its number of calls; torchvision's columns follow where it works.
ROW = re.compile(
    r"^(?P<op>.{22})(?P<way>\S+) +(?P<backend>numpy|cupy) +(?P<ms>[\d.]+)ms +(?P<calls>\d+)"
    r"(?: +(?P<their_ms>[\d.]+)ms +(?P<their_calls>\d+) +[\d.]+x +(?P<diff>\S+))?$"
)
BENCH = ("bench", "--repeat", "2", "--num-boxes", "8", "--min-time", "0")


def bench_rows(out):
    """The timed rows of the bench table, as dicts of ROW's groups."""
    return [m.groupdict() for m in map(ROW.match, out.splitlines()) if m]


def test_bench(capsys):
    """Every op timed on both backends, with torchvision's columns where it works (both ways
    of running the suite: with and without torchvision)."""
    status, out, err = run(capsys, *BENCH)
    assert status == 0
    rows = bench_rows(out)
    ops = {name for name in cuproi.__all__ if not name.endswith("backward")}
    timed = {row["op"].split()[0] for row in rows}
    assert ops - {"__version__", "quantization_error", "set_eager_checks"} <= timed  # every op
    # CuPy: a GPU, or the stand-in of tests/cupy_standin.
    assert {row["backend"] for row in rows} == {"numpy", "cupy"}
    assert all(int(row["calls"]) >= 2 for row in rows)  # --repeat 2
    assert "at least 2, filling 0 s, after two warm-up calls" in out
    compared = [row for row in rows if row["their_ms"]]
    if "torchvision: not available" in out:
        assert not compared
    else:
        assert all(int(row["their_calls"]) >= 2 for row in compared)
    assert "[" in err and "done in" in err  # the progress bar, on stderr


PASSES = ("forward", "backward")


def test_bench_beside_torchvision(capsys, monkeypatch):
    """The comparison path, with cuproi.torch standing in for torchvision.ops (same signatures
    and values), so that it runs where torchvision is not installed."""
    pytest.importorskip("torch")
    import cuproi.torch as ct

    ops = types.ModuleType("torchvision.ops")
    ops.roi_align, ops.roi_pool, ops.ps_roi_align = ct.roi_align, ct.roi_pool, ct.ps_roi_align
    fake = types.ModuleType("torchvision")
    fake.ops, fake.__version__ = ops, "0.0-stand-in"
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)
    status, out, _ = run(capsys, *BENCH)
    assert status == 0
    assert "speed-up" in out and "0.0-stand-in" in out
    compared = [row for row in bench_rows(out) if row["their_ms"]]
    assert {(row["op"].strip(), row["way"], row["backend"]) for row in compared} >= {
        (op, way, "numpy") for op in ("roi_align", "roi_pool", "ps_roi_align") for way in PASSES
    }
    assert all(int(row["their_calls"]) >= 2 for row in compared)
    assert max(float(row["diff"]) for row in compared) < 1e-5


def test_autorange_warms_up_and_fills_its_time():
    """Two warm-up calls are not timed; calls go on until both the count and the time are met."""
    durations = iter([0.5, 0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    calls = []

    def call():
        calls.append(next(durations))
        return len(calls)

    clock = iter(np.cumsum([0.0] + [d for d in [0.01] * 6 for _ in (0, 1)]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_timing.time, "perf_counter", lambda: next(clock))
        result, median, count = _timing.autorange(call, lambda: None, at_least=2, seconds=0.035)
    assert count == 4 and result == 6 and median == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--output-size", "0"], "output size must be between 1 and 32; got 0"),
        (["demo", "--output-size", "3x"], "output size must be an integer"),
        (["demo", "--output-size", "2x3x4"], "N or HxW"),
        (["demo", "--boxes", "1,2,3"], "box 1 is '1,2,3': expected 4 numbers"),
        (["demo", "--boxes", "1,2,3,4;a,b,c,d"], "box 2 is 'a,b,c,d'"),
        (["demo", "--boxes", "10,10,5,20"], "expected x2 > x1 and y2 > y1"),
        (["demo", "--boxes", "0,0,nan,5"], "expected 4 numbers"),
        (["demo", "--boxes", ";"], "no boxes given"),
        (["demo", "--stride", "0"], "stride must be between 1 and 128; got 0"),
        (["demo", "--stride", "x"], "stride must be an integer; got 'x'"),
        (["demo", "--sampling-ratio", "-1"], "sampling ratio must be between 0 and 16"),
        (["bench", "--repeat", "0"], "repeat must be between 1 and 100"),
        (["bench", "--min-time", "nan"], "min-time must be between 0.0 and 60.0; got nan"),
        (["bench", "--min-time", "x"], "min-time must be a number; got 'x'"),
        (["demo", "--unknown"], "unrecognized arguments: --unknown"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m cuproi" in err


def test_python_dash_m_demo_headless(tmp_path):
    pytest.importorskip("matplotlib")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "cuproi", "demo", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cuproi_demo.png").read_bytes()[:8] == PNG
    assert f"figure: {tmp_path / 'cuproi_demo.png'}" in done.stdout
    version = subprocess.run(
        [sys.executable, "-m", "cuproi", "--version"], env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("cuproi ")


def test_workload_of_the_bench_is_valid():
    from cuproi import _bench

    p = _bench.problems(10)["deform_roi_pool"]
    x, boxes, offset, grad = p.x, p.boxes, p.offset, p.grad
    assert x.shape == (2, 64, 50, 76) and boxes.shape == (10, 5) and offset.shape == (10, 2, 7, 7)
    assert grad.shape == (10, 64, 7, 7) and np.isin(boxes[:, 0], [0, 1]).all()
