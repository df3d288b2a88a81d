"""The command line: ``python -m cuproi [demo | info | bench]`` (demo when none is given)."""

import argparse
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

import cuproi

MAX_OUTPUT_SIZE = 32  # the figure draws every bin
MAX_STRIDE = 128


def main(argv=None):
    """Run a subcommand; returns the exit status (argparse exits with 2 on bad options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "demo")  # `python -m cuproi [demo options]`
    args = _parser().parse_args(argv)
    return args.run(args)


def _parser():
    from cuproi import _demo

    parser = argparse.ArgumentParser(
        prog="python -m cuproi",
        description="RoI Pool, RoI Align and Deformable RoI Pool: a demo, the setup, a benchmark.",
        epilog="Without a command, runs the demo.",
    )
    parser.add_argument("--version", action="version", version=f"cuproi {cuproi.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="{demo,info,bench}")
    demo = commands.add_parser(
        "demo",
        help="run the three ops on a built-in scene; print a table, write a comparison figure",
        description=(
            "Runs RoI Pool, RoI Align and Deformable RoI Pool, forward and backward, on a "
            f"built-in {_demo.HEIGHT}x{_demo.WIDTH} scene on every available backend, prints "
            "the quantization error of RoI Pool for every box and a table per method (output "
            "shape, time, agreement across backends), and draws the three methods on the first "
            f"box into DIR/{_demo.FIGURE}."
        ),
    )
    _add_options(demo, _demo_options())
    demo.set_defaults(run=_run_demo)
    info = commands.add_parser(
        "info", help="versions, backends, GPU, CUDA, kernel and cache folders"
    )
    info.set_defaults(run=_run_info)
    bench = commands.add_parser(
        "bench",
        help="time every op on the available backends (and torchvision where it works)",
        description=(
            "Times every op forward and backward on a small stride-16 workload on each "
            "available backend, beside torchvision.ops where it is installed and works."
        ),
    )
    _add_options(bench, _bench_options())
    bench.set_defaults(run=_run_bench)
    return parser


def _demo_options():
    """The demo's options: (flag, type, default, metavar, help) each."""
    from cuproi import _demo

    return (
        ("--out", Path, Path("."), "DIR", "folder for the figure (default: .)"),
        (
            "--boxes",
            _boxes,
            dict(_demo.BOXES),
            "'x1,y1,x2,y2;...'",
            "boxes in scene pixels (the first is drawn); default: the house, tree, car, "
            "person and sun of the scene",
        ),
        ("--output-size", _output_size, (7, 7), "N or HxW", "pooled size (default: 7)"),
        (
            "--stride",
            _bounded_int("stride", 1, MAX_STRIDE),
            16,
            "PIXELS",
            "feature stride; spatial_scale = 1/stride (default: 16)",
        ),
        (
            "--sampling-ratio",
            _bounded_int("sampling ratio", 0, 16),
            2,
            "N",
            "bilinear samples per bin and axis, 0 for adaptive (default: 2)",
        ),
    )


def _bench_options():
    """The benchmark's options: (flag, type, default, metavar, help) each."""
    return (
        (
            "--repeat",
            _bounded_int("repeat", 1, 100),
            3,
            "N",
            "timed calls per op at least (the median is shown; default: 3)",
        ),
        (
            "--min-time",
            _bounded_float("min-time", 0.0, 60.0),
            0.2,
            "S",
            "seconds of timed calls per op at least, after two warm-up calls (default: 0.2)",
        ),
        (
            "--num-boxes",
            _bounded_int("number of boxes", 1, 100_000),
            256,
            "K",
            "boxes per call (default: 256)",
        ),
    )


def _add_options(parser, options):
    for flag, kind, default, metavar, help in options:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)


# ---------------------------------------------------------------------------------------------
# Option types: a bad value becomes argparse's usage error (exit status 2) with this message


def _bounded(kind, what, name, low, high):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}; got {text!r}") from None
        if not low <= value <= high:  # also refuses a NaN
            raise argparse.ArgumentTypeError(
                f"{name} must be between {low} and {high}; got {value}"
            )
        return value

    return parse


def _bounded_int(name, low, high):
    return _bounded(int, "an integer", name, low, high)


def _bounded_float(name, low, high):
    return _bounded(float, "a number", name, low, high)


def _output_size(text):
    parts = text.lower().replace(",", "x").split("x")
    parse = _bounded_int("output size", 1, MAX_OUTPUT_SIZE)
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"output size must be N or HxW; got {text!r}")
    try:
        sizes = [parse(p.strip()) for p in parts]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (in {text!r}: N or HxW)") from None
    return (sizes[0], sizes[-1])


def _boxes(text):
    groups = [g for g in text.replace(";", " ").split() if g]
    if not groups:
        raise argparse.ArgumentTypeError("no boxes given: expected 'x1,y1,x2,y2;...'")
    boxes = {}
    for n, group in enumerate(groups, 1):
        try:
            values = [float(v) for v in group.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(
                f"box {n} is {group!r}: expected 4 numbers x1,y1,x2,y2 (pixels) separated by "
                "commas, boxes separated by ';' or spaces"
            )
        x1, y1, x2, y2 = values
        if not (x2 > x1 and y2 > y1):
            raise argparse.ArgumentTypeError(
                f"box {n} is {group!r}: expected x2 > x1 and y2 > y1 (corners top-left, "
                "bottom-right)"
            )
        boxes[f"box {n}"] = tuple(values)
    return boxes


# ---------------------------------------------------------------------------------------------
# Commands


def _run_demo(args):
    from cuproi import _demo

    cupy, gpu_line = _gpu()
    _backends_header(gpu_line)
    _demo.run(args.out, args.boxes, args.output_size, args.stride, args.sampling_ratio, cupy)
    return 0


def _run_bench(args):
    from cuproi import _bench

    cupy, gpu_line = _gpu()
    _backends_header(gpu_line)
    _bench.run(cupy, args.repeat, args.num_boxes, seconds=args.min_time)
    return 0


def _run_info(args):
    cupy, gpu_line = _gpu()
    print(f"cuproi {cuproi.__version__} at {Path(cuproi.__file__).parent}")
    print(f"Python {platform.python_version()} on {platform.platform()}")
    print(f"NumPy {np.__version__}, SciPy {_version('scipy')}")
    print("\nBackends")
    print("  numpy: available (vectorized NumPy/SciPy, CPU)")
    print(f"  cupy:  {'available: CuPy ' if cupy else 'CuPy '}{gpu_line}")
    for line in _gpu_details(cupy):
        print(f"         {line}")
    print("\nCUDA kernels")
    print(f"  sources: {_kernel_sources()}")
    cache = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
    source = "$CUPY_CACHE_DIR" if "CUPY_CACHE_DIR" in os.environ else "CuPy's default"
    state = f"{len(list(cache.iterdir()))} files" if cache.is_dir() else "not created yet"
    print(f"  compiled kernel cache: {cache} ({source}; {state})")
    print("\nOptional packages")
    for name, use in [
        ("matplotlib", "figures: cuproi.viz, the demo's PNG"),
        ("torch", "cuproi.torch"),
        ("torchvision", "the comparison in `bench`"),
        ("jax", "cuproi.jax"),
    ]:
        print(f"  {name:<12}{_version(name) or 'not installed':<16}{use}")
    return 0


# ---------------------------------------------------------------------------------------------
# Environment


def _kernel_sources():
    """Where the CUDA sources are, or why they cannot be found; never raises (a diagnostic)."""
    try:
        from cuproi._cuda import _source

        folder = _source.kernels_dir()
    except Exception as error:
        return f"not found ({type(error).__name__}: {error})"
    return f"{folder} ({len(list(folder.rglob('*.cu*')))} files)"


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu():
    """(cupy module or None, one line saying what was found); never raises."""
    try:
        import cupy
    except ImportError:
        return None, "not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return None, f"{cupy.__version__}, no usable CUDA device ({error})"
    if count == 0:
        return None, f"{cupy.__version__}, no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    cuda = cupy.cuda.runtime.runtimeGetVersion()
    return cupy, f"{cupy.__version__}, CUDA runtime {_cuda_version(cuda)}: {name}"


def _gpu_details(cupy):
    """Lines on the CUDA driver, NVRTC and every device; empty without a GPU."""
    if cupy is None:
        return []
    lines = []
    try:
        driver = _cuda_version(cupy.cuda.runtime.driverGetVersion())
        nvrtc = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
        lines.append(f"CUDA driver {driver}, NVRTC {nvrtc}")
    except Exception as error:  # an odd driver should not stop `info`
        lines.append(f"CUDA driver/NVRTC version unavailable ({error})")
    for index in range(cupy.cuda.runtime.getDeviceCount()):
        p = cupy.cuda.runtime.getDeviceProperties(index)
        lines.append(
            f"device {index}: {p['name'].decode()}, compute capability "
            f"{p['major']}.{p['minor']}, {p['totalGlobalMem'] / 2**30:.0f} GiB"
        )
    return lines


def _cuda_version(number):
    return f"{number // 1000}.{number % 1000 // 10}"


def _backends_header(gpu_line):
    print(f"cuproi {cuproi.__version__}")
    print(f"  NumPy {np.__version__}: CPU backend available")
    print(f"  CuPy {gpu_line}\n")
