"""What the stand-in keeps between calls: devices, the current device and stream, the log."""

import contextlib
import dataclasses
import os
import threading


class CUDARuntimeError(RuntimeError):
    """The error CuPy raises for a failed CUDA runtime call (cupy.cuda.runtime.CUDARuntimeError)."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(f"{status}: {message}")


class CUDADriverError(RuntimeError):
    """The error CuPy raises for a failed driver call, such as a launch (cupy.cuda.driver)."""


# Number of devices: CUPROI_STANDIN_DEVICES, 2 by default (the tests then put the inputs of
# every GPU test on device 1 while device 0 is current: see conftest.py).
DEVICES = int(os.environ.get("CUPROI_STANDIN_DEVICES", "2"))

# Pairs (device, peer) between which peer access has been enabled (deviceEnablePeerAccess).
peers = set()


class _ThreadLocal(threading.local):
    def __init__(self):
        self.devices = [0]  # stack of current devices; CuPy starts every thread on device 0
        self.streams = {}  # device -> stack of streams entered on it


local = _ThreadLocal()


def current_device():
    return local.devices[-1]


def check_device(device):
    if not 0 <= device < DEVICES:
        raise CUDARuntimeError(
            "cudaErrorInvalidDevice", f"invalid device ordinal {device} ({DEVICES} devices)"
        )
    return device


@dataclasses.dataclass
class Log:
    """What happened on the devices while recording (see ``record``).

    transfers: (what, nbytes) of every device-to-host copy (a host synchronisation).
    cross_device: (what, array device, running device) of every read of another device's memory.
    launches: (entry, device, stream ptr, grid, block) of every kernel launch.
    dlpack: ("import" or "export", device, stream handed to the producer) of every exchange.
    """

    transfers: list = dataclasses.field(default_factory=list)
    cross_device: list = dataclasses.field(default_factory=list)
    launches: list = dataclasses.field(default_factory=list)
    dlpack: list = dataclasses.field(default_factory=list)


_logs = []  # the logs being recorded, innermost last


@contextlib.contextmanager
def record():
    """Record transfers, cross-device reads and launches made inside the block."""
    log = Log()
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


def note(kind, *entry):
    for log in _logs:
        getattr(log, kind).append(entry)


def reading(device, what):
    """Check that the current device may read memory of ``device`` (as CuPy's kernels do).

    Without peer access, reading another device's memory raises as CuPy does; with it, the read
    is allowed but recorded.
    """
    here = current_device()
    if device == here:
        return
    if (here, device) not in peers:
        raise ValueError(
            f"The device where the array resides ({device}) is different from the current "
            f"device ({here}). Peer access is unavailable between these devices. ({what})"
        )
    note("cross_device", what, device, here)
