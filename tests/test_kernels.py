"""The CUDA sources themselves: they compile (nvcc for every supported architecture, without
register spills; the host compiler through the shim), export every entry point the launch layer
can ask for, and the source loader finds and inlines them."""

import itertools
import os
import re
import shutil
import subprocess
import sys

import host
import numpy as np
import pytest
from conftest import STANDIN, host_backend

import cuproi._cpu
import cuproi._cuda
from cuproi._cuda import _launch, _source

NVCC = shutil.which("nvcc")
SOURCES = sorted(p.stem for p in _source.kernels_dir().glob("*.cu"))
# Sources that serve the other kernels rather than an op: (directions, dtype suffixes).
SUPPORT = {
    "fixed_point": (("finalize",), ("f32", "f64")),
    "layout": (("transpose",), ("f16", "f32", "f64")),
}
OP_ENTRIES = (("forward", "backward"), ("f16", "f32", "f64"))
# Ops with channels-last kernels beside the NCHW ones.
CHANNELS_LAST = {"roi_align", "deform_roi_pool"}
# Ops with a max mode beside the average (forward, backward and box backward of their own).
MAX_MODE = {"roi_align"}


def _op(name):
    """The op of a backend function: its name without _backward or _box_backward."""
    return name.removesuffix("_backward").removesuffix("_box")


def entries(source):
    """Every entry point name the launch layer (_launch.Device.run) can ask of kernels/<source>.cu:
    forward, backward and the box backward of the ops that have one, each in its modes."""
    plain, suffixes = SUPPORT.get(source, OP_ENTRIES)
    if f"{source}_box_backward" in cuproi._cpu.__all__:
        plain = (*plain, "box_backward")
    directions = plain
    if source in CHANNELS_LAST:
        directions += tuple(f"{d}_nhwc" for d in ("forward", "backward"))
    if source in MAX_MODE:
        directions += tuple(f"{d}_max" for d in plain)
    return {
        f"cuproi_{source}_{direction}_{suffix}{wide}"
        for direction, suffix, wide in itertools.product(directions, suffixes, ("", "_i64"))
    }


def test_every_source_serves_an_op():
    ops = {_op(name) for name in cuproi._cpu.__all__}
    assert set(SOURCES) == ops | set(SUPPORT)


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_nvcc_compiles_without_spills(source, arch, tmp_path):
    """The text NVRTC gets (includes inlined) compiles, every entry point exists, none spills."""
    path = tmp_path / f"{source}.cu"
    path.write_text(_source.source(source))
    options = ["-cubin", f"-arch={arch}", "--std=c++17", "-Xptxas", "-v", "-Werror", "all-warnings"]
    out = ["-o", str(tmp_path / "out.cubin")]
    command = [NVCC, *options, str(path), *out]
    result = subprocess.run(
        command, capture_output=True, text=True, env=host.compiler_environment()
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    compiled = set(re.findall(r"Compiling entry function '(\w+)'", log))
    assert compiled == entries(source)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(compiled)
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
@pytest.mark.parametrize("source", SOURCES)
def test_host_build_exports_every_entry(source):
    lib = host.library(source)
    for name in entries(source):
        assert hasattr(lib, name), name


@pytest.mark.skipif(host.COMPILER is None, reason="no C++ compiler")
def test_int64_index_for_any_large_argument(monkeypatch):
    """The _i64 entry point is taken when any array argument is large, not only the features or
    the output: the deterministic box terms (4 per output element) and the offsets of a
    one-channel deform_roi_pool (2 per output element) outgrow both."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 4, 5))
    rois = np.array([[0, 0.5, 1.0, 6.5, 4.0], [0, 2.0, 0.0, 7.0, 5.5]])
    g = rng.standard_normal((2, 1, 2, 3))
    offset = rng.standard_normal((2, 2, 2, 3))
    cases = {  # each on the backend bound to the launcher of the moment
        "roi_align": lambda b: b.roi_align_box_backward(
            g, x, rois, 0.5, 2, True, deterministic=True
        ),
        "prroi_pool": lambda b: b.prroi_pool_box_backward(g, x, rois, 0.5, deterministic=True),
        "roi_align_max": lambda b: b.roi_align_box_backward(
            g, x, rois, 0.5, 2, True, pool_mode="max", deterministic=True
        ),
        "deform_roi_pool boxes": lambda b: b.deform_roi_pool_box_backward(
            g, x, rois, offset, 0.5, 2, 0.1, deterministic=True
        ),
        "deform_roi_pool": lambda b: b.deform_roi_pool(x, rois, offset, (2, 3), 0.5, 2, 0.1),
    }
    narrow = {name: run(host_backend()) for name, run in cases.items()}
    calls = []
    launch = host.launch
    # Above the features (20 elements), the boxes (10) and every output or gradient (12); not
    # above the box terms (48) or the offsets (24).
    monkeypatch.setattr(_launch, "LARGE", 21)
    monkeypatch.setattr(host, "launch", lambda *a, **k: (calls.append(a[1]), launch(*a, **k)))
    for name, run in cases.items():
        calls.clear()
        wide = run(host_backend())
        assert calls and all(entry.endswith("_i64") for entry in calls), (name, calls)
        np.testing.assert_array_equal(wide, narrow[name])


def test_backends_expose_the_same_functions():
    assert cuproi._cpu.__all__ == cuproi._cuda.__all__
    for name in cuproi._cpu.__all__:
        assert callable(getattr(cuproi._cpu, name)) and callable(getattr(cuproi._cuda, name))


def test_source_inlines_local_includes():
    text = _source.source("roi_align")
    assert '#include "' not in text and "#pragma once" not in text
    assert text.count("struct Taps") == 1  # bilinear.cuh once
    assert text.count("#define CUPROI_KERNEL_LOOP") == 1  # helpers.cuh once, though included twice
    assert '#line 1 "common/helpers.cuh"' in text


@pytest.fixture
def uncached_kernels_dir():
    """``_source.kernels_dir`` looked up afresh, and forgotten after the test."""
    _source.kernels_dir.cache_clear()
    yield _source.kernels_dir
    _source.kernels_dir.cache_clear()


def test_kernels_dir_override(monkeypatch, tmp_path, uncached_kernels_dir):
    monkeypatch.setenv("CUPROI_KERNELS_DIR", str(tmp_path))
    assert uncached_kernels_dir() != tmp_path  # no sources there: falls back
    shutil.copytree(uncached_kernels_dir(), tmp_path, dirs_exist_ok=True)
    uncached_kernels_dir.cache_clear()
    assert uncached_kernels_dir() == tmp_path


def test_missing_kernels_raise_a_clear_error(monkeypatch, tmp_path, uncached_kernels_dir):
    monkeypatch.delenv("CUPROI_KERNELS_DIR", raising=False)
    monkeypatch.setattr(_source, "__file__", str(tmp_path / "cuproi" / "_cuda" / "_source.py"))
    with pytest.raises(FileNotFoundError, match="CUPROI_KERNELS_DIR"):
        uncached_kernels_dir()


def _nvrtc():
    """CuPy's NVRTC bindings when they load (no GPU needed), else None."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:  # cupy missing, or no libnvrtc on this machine
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="CuPy's NVRTC bindings not available")
@pytest.mark.skipif(host.ASAN_LOADED, reason="under ASan, NVRTC does not find its builtins")
@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_compiles(source):
    """The very text and options CuPy hands NVRTC compile, with every entry point exported."""
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(_source.source(source), f"{source}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(program, ["--std=c++17", "-arch=compute_75", "-ftz=true"])
        except Exception:
            pytest.fail(nvrtc.getProgramLog(program))
        ptx = nvrtc.getPTX(program).decode()
    finally:
        nvrtc.destroyProgram(program)
    assert set(re.findall(r"\.visible \.entry (\w+)\(", ptx)) == entries(source)


@pytest.mark.gpu
@pytest.mark.skipif(STANDIN and host.COMPILER is None, reason="the stand-in needs a C++ compiler")
def test_every_entry_point_loads_through_cupy():
    """Every entry point of every source, as the launch layer gets it from CuPy (a GPU, or the
    stand-in's build on the host)."""
    for source in SOURCES:
        for entry in sorted(entries(source)):
            assert _launch._kernels()(source, entry) is not None


@pytest.mark.parametrize("per_block", [False, True])
def test_int64_index_where_the_loop_index_would_wrap(per_block):
    """The grid-stride loop's index runs up to ``items - 1 + stride``: once that passes int32's
    largest value (8140 boxes x 1024 channels x 16 x 16 outputs, say), the _i64 entry point is
    taken, though no array reaches 2**31 elements. Launched on a spy: nothing is allocated."""
    entries = []

    def spy(name, entry, n, args, per_block=False):
        entries.append((entry, type(args[0])))

    stride = _launch.grid(2**31 - 1, per_block)[1]
    wraps = [2**31 - stride + 1] + ([] if per_block else [8140 * 1024 * 16 * 16])
    for items in (2**31 - stride, *wraps):
        _launch.Device(np, spy).run("roi_align", "forward", np.float32, items, per_block=per_block)
    narrow = ("cuproi_roi_align_forward_f32", np.int32)
    assert entries == [narrow] + [("cuproi_roi_align_forward_f32_i64", np.int64)] * len(wraps)


# Kernels that do what the sanitized builds must stop, and the report each gets.
_FLAWED = {
    "read past the end": (
        "for (int i = 0; i <= n; ++i) out[0] += x[i];",  # x[n]: one past the end
        "heap-buffer-overflow",
    ),
    "float to int overflow": (
        "out[0] = static_cast<float>(static_cast<int>(x[0] * 1e10f));",
        "outside the range of representable values",
    ),
}


@pytest.mark.skipif(host.sanitizer_preload() is None, reason="no ASan with the host compiler")
@pytest.mark.parametrize("flaw", _FLAWED)
def test_sanitized_host_builds_stop_at_a_flawed_kernel(flaw):
    """With CUPROI_HOST_SANITIZE=1 (as CI runs the slow tests and the GPU tests on the
    stand-in with one device), a kernel that reads past its array or overflows a float-to-int
    conversion aborts the run with the sanitizer's report; without it, it runs to the end."""
    body, report = _FLAWED[flaw]
    kernel = f'extern "C" __global__ void flawed(const float* x, float* out, int n) {{ {body} }}'
    script = f"""
import ctypes, numpy as np, host
lib = host.build({kernel!r})
x, out = np.ones(4096, np.float32), np.zeros(1, np.float32)
lib.flawed(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_int(4096))
print("ran to the end")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CUPROI_HOST_SANITIZE")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), ASAN_OPTIONS="detect_leaks=0")
    plain = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert plain.stdout.strip() == "ran to the end", plain.stderr
    env.update(CUPROI_HOST_SANITIZE="1", LD_PRELOAD=host.sanitizer_preload())
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "ran to the end" not in done.stdout
    assert report in done.stderr, done.stderr[-2000:]
