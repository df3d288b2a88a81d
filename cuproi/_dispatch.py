"""The seam between CPU and GPU: the only code that looks at array types.

``prepare`` maps the arrays of a call to a backend module (``cuproi._cpu`` for host memory,
``cuproi._cuda`` for CUDA memory) that exposes the same functions under the same names, plus its
array module as ``xp``; nothing else in cuproi asks which kind of array it holds.

NumPy and CuPy arrays are used as they are (byte-swapped NumPy data is swapped to native
order). Any other array with ``__dlpack__`` (a PyTorch tensor, a JAX array, ...) comes in
through ``numpy.from_dlpack`` or ``cupy.from_dlpack`` without a copy, and results go back
through the caller's own ``from_dlpack``: torch in, torch out; JAX in, JAX out. CuPy's
``from_dlpack`` hands its current stream to the producer, and torch's hands its own to CuPy, so
no explicit synchronisation is needed on the way in or out.
"""

import functools
import importlib
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np

P = ParamSpec("P")
R = TypeVar("R")

# DLDeviceType: kDLCPU, kDLCUDA, and kDLCUDAHost, pinned host memory (a torch tensor from
# pin_memory), which NumPy reads as it reads any host memory.
_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST = 1, 2, 3

# The functions every backend (cuproi._cpu, cuproi._cuda) exports, by the op whose module in the
# backend defines them: the op functions of the public API.
OPS = {
    "deform_roi_pool": (
        "deform_roi_pool",
        "deform_roi_pool_backward",
        "deform_roi_pool_box_backward",
    ),
    "multi_scale_roi_align": ("multi_scale_roi_align", "multi_scale_roi_align_backward"),
    "prroi_pool": ("prroi_pool", "prroi_pool_backward", "prroi_pool_box_backward"),
    "ps_roi_align": ("ps_roi_align", "ps_roi_align_backward"),
    "ps_roi_pool": ("ps_roi_pool", "ps_roi_pool_backward"),
    "roi_align": ("roi_align", "roi_align_backward", "roi_align_box_backward"),
    "roi_align_rotated": ("roi_align_rotated", "roi_align_rotated_backward"),
    "roi_pool": ("roi_pool", "roi_pool_backward"),
}


def entry_points(backend, wrap):
    """A backend's namespace: every function of :data:`OPS`, as ``wrap`` returns it.

    Each is found in the module of its op in the package ``backend`` (``"cuproi._cpu"``,
    ``"cuproi._cuda"``).
    """
    return {
        name: wrap(getattr(importlib.import_module(f"{backend}.{op}"), name))
        for op, names in OPS.items()
        for name in names
    }


# Arguments that may be None (absent), and those that may be a list of per-image arrays.
_OPTIONAL = {"offset", "mask"}
_SEQUENCES = {"boxes"}


def _framework(array):
    """Top-level module of a foreign array's type ('torch', 'jaxlib', ...)."""
    return type(array).__module__.split(".")[0]


def _without_data(array):
    """How a torch tensor that holds no data is described, or None for any other array.

    A tensor on the meta device, or a fake tensor (torch.compile, torch.export and
    FakeTensorMode trace with them), has a shape and a dtype but no memory: DLPack cannot
    export it (meta: torch raises a bare "Unknown device type meta for Dlpack"), or exports a
    pointer to nothing (fake).
    """
    if _framework(array) != "torch":
        return None
    if getattr(array, "is_meta", False):
        return "a torch tensor on the 'meta' device"
    fake = sys.modules.get("torch._subclasses.fake_tensor")  # none can exist before its import
    if fake is not None and fake.is_fake(array):
        return "a torch fake tensor (what torch.compile and torch.export trace with)"
    return None


def _refuse_without_data(array, name):
    """TypeError naming ``name`` when ``array`` is a torch tensor without data."""
    kind = _without_data(array)
    if kind is not None:
        raise TypeError(
            f"{name} is {kind}, which holds no data; cuproi's array functions compute on CPU "
            "or CUDA memory (cuproi.torch's functions take meta and fake tensors: they give "
            "the output's shape)"
        )


def _device(array, name):
    """'cpu' or 'cuda:<id>' for a supported array; TypeError for anything else."""
    if isinstance(array, np.ndarray):
        return "cpu"
    cupy = sys.modules.get("cupy")  # a CuPy array implies cupy is imported: no import here
    if cupy is not None and isinstance(array, cupy.ndarray):
        return f"cuda:{array.device.id}"
    if hasattr(array, "__dlpack__") and hasattr(array, "__dlpack_device__"):
        _refuse_without_data(array, name)
        kind, index = array.__dlpack_device__()
        if kind in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
            return "cpu"
        if kind == _DLPACK_CUDA:
            return f"cuda:{index}"
        raise TypeError(
            f"{name} lives on DLPack device type {int(kind)}; cuproi supports CPU and CUDA memory"
        )
    kind = type(array)
    raise TypeError(
        f"{name} must be an array (NumPy, CuPy, or any with __dlpack__ such as torch or JAX); "
        f"got {kind.__module__}.{kind.__name__}"
    )


def native(array, device, name):
    """The array as NumPy (host) or CuPy (CUDA), sharing memory with a foreign one."""
    cupy = sys.modules.get("cupy")
    if isinstance(array, np.ndarray) and not array.dtype.isnative:  # byte-swapped (from a file)
        return array.astype(array.dtype.newbyteorder("="))
    if isinstance(array, np.ndarray) or (cupy is not None and isinstance(array, cupy.ndarray)):
        return array
    if getattr(array, "requires_grad", False):  # torch will not export a tensor with a graph
        array = array.detach()
    try:
        if device == "cpu":
            return np.from_dlpack(array)
        try:
            import cupy
        except ImportError:
            raise TypeError(
                f"{name} is on {device}: running on the GPU needs CuPy "
                "(pip install cupy-cuda12x or cupy-cuda13x, for your CUDA version)"
            ) from None
        with cupy.cuda.Device(int(device.split(":")[1])):
            return cupy.from_dlpack(array)
    except (BufferError, RuntimeError, ValueError) as error:  # e.g. bfloat16 has no NumPy dtype
        dtype = getattr(array, "dtype", "unknown")
        reason = str(error).rstrip(".")
        raise TypeError(
            f"{name} (dtype {dtype}) cannot be read through DLPack ({reason}). cuproi's array "
            "functions take float16, float32 and float64; cuproi.torch and cuproi.jax also "
            "take bfloat16, computed in float32"
        ) from None


def _identity(result):
    return result


def _restorer(framework):
    """The function that turns a NumPy/CuPy result into the caller's array type."""
    if framework == "torch":
        return sys.modules["torch"].from_dlpack
    if framework in ("jax", "jaxlib"):
        import jax.numpy

        return jax.numpy.from_dlpack
    module = sys.modules.get(framework)
    return getattr(module, "from_dlpack", _identity)


def _cuda_device(values):
    """The CUDA device index of the first CUDA array among ``values`` (or in their lists)."""
    cupy = sys.modules.get("cupy")
    for value in values:
        if isinstance(value, (list, tuple)):
            found = _cuda_device(value)
            if found is not None:
                return found
        elif cupy is not None and isinstance(value, cupy.ndarray):
            return value.device.id
        elif (
            not isinstance(value, np.ndarray)
            and hasattr(value, "__dlpack_device__")
            and _without_data(value) is None  # prepare names it
        ):
            kind, index = value.__dlpack_device__()
            if kind == _DLPACK_CUDA:
                return index
    return None


def on_input_device(function: Callable[P, R]) -> Callable[P, R]:
    """Run a public function with the CUDA device of its arrays current, if they have one.

    CuPy allocates on the current device and runs every operation there, so the whole call
    (conversion, validation, launches, the result) must see the inputs' device, not whichever
    device the caller happens to have current.
    """

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        device = _cuda_device((*args, *kwargs.values()))
        if device is None:
            return function(*args, **kwargs)
        import cupy

        with cupy.cuda.Device(device):
            return function(*args, **kwargs)

    return call


def one_device(seen):
    """The one device of a call, from ``{device: first argument found there}``.

    ``'cpu'`` when there is none. ValueError naming an argument on each device when there are
    several: nothing is copied between devices. (cuproi.torch's fake kernels check their
    tensors' devices with it too.)
    """
    if len(seen) > 1:
        where = ", ".join(f"{label} on {device}" for device, label in seen.items())
        raise ValueError(
            f"all arrays must be on one device; got {where}. Move them to the same device first."
        )
    return next(iter(seen), "cpu")


def prepare(**arrays):
    """Pick the backend for the named arrays of one call.

    Parameters
    ----------
    **arrays
        Arrays by argument name: NumPy, CuPy or any array with ``__dlpack__``. ``offset`` may
        be None (absent); ``boxes`` may be a list or tuple of arrays (one per image).

    Returns
    -------
    backend : module
        ``cuproi._cpu`` or ``cuproi._cuda``.
    arrays : tuple
        The values in the order given, as NumPy or CuPy arrays (lists as lists of them).
    restore : callable
        Turns a result of the backend into the array type of the first foreign array given
        (the identity when all are NumPy or CuPy).

    Raises
    ------
    TypeError
        For a value that is not an array (None where an array is required), an array on a
        device other than CPU and CUDA, or a torch tensor without data (meta or fake).
    ValueError
        When the arrays live on different devices; nothing is copied between them.
    """
    items = {}  # name -> [(label, array)]
    for name, value in arrays.items():
        if value is None and name in _OPTIONAL:
            items[name] = None
        elif isinstance(value, (list, tuple)) and name in _SEQUENCES:
            items[name] = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
        else:
            items[name] = [(name, value)]
    seen = {}  # device -> first argument found there
    for pairs in filter(None, items.values()):
        for label, item in pairs:
            seen.setdefault(_device(item, label), label)
    device = one_device(seen)
    framework, prepared = None, []
    for name, pairs in items.items():
        if pairs is None:
            prepared.append(None)
            continue
        converted = []
        for label, item in pairs:
            converted.append(native(item, device, label))
            if framework is None and converted[-1] is not item:
                framework = _framework(item)
        single = not isinstance(arrays[name], (list, tuple)) or name not in _SEQUENCES
        prepared.append(converted[0] if single else converted)
    if device == "cpu":
        from cuproi import _cpu as backend
    else:
        from cuproi import _cuda as backend
    return backend, tuple(prepared), _identity if framework is None else _restorer(framework)
