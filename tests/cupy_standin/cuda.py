"""cupy.cuda of the stand-in: devices, streams, events, the memory pool, the runtime calls."""

import itertools
import types

from cupy_standin import _state

CUDARuntimeError = _state.CUDARuntimeError
_handles = itertools.count(0x1000, 0x10)  # fake stream and event handles


class Device:
    """A CUDA device; entering it makes it current in this thread, as CuPy's does."""

    def __init__(self, device=None):
        if device is None:
            device = _state.current_device()
        self.id = _state.check_device(int(device))

    def __enter__(self):
        _state.local.devices.append(self.id)
        return self

    def __exit__(self, *exc):
        _state.local.devices.pop()

    def use(self):
        _state.local.devices[-1] = self.id

    def synchronize(self):
        _state.note("transfers", f"Device({self.id}).synchronize", 0)

    @property
    def compute_capability(self):
        return "90"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("Device", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _check_stream_device(device_id):
    """CuPy's rule: a stream is entered or used only on the device it was created on."""
    here = _state.current_device()
    if device_id not in (-1, here):
        raise RuntimeError(
            f"The device that the stream is created on ({device_id}) does not match with the "
            f"current device ({here})"
        )


class _BaseStream:
    def __init__(self, ptr, device_id):
        self.ptr = ptr
        self.device_id = device_id

    def __enter__(self):
        _check_stream_device(self.device_id)
        _state.local.streams.setdefault(_state.current_device(), []).append(self)
        return self

    def __exit__(self, *exc):
        _state.local.streams[_state.current_device()].pop()

    def use(self):
        _check_stream_device(self.device_id)
        stack = _state.local.streams.setdefault(_state.current_device(), [])
        stack[-1:] = [self]
        return self

    def synchronize(self):
        _state.note("transfers", f"stream {self.ptr:#x}.synchronize", 0)

    @property
    def done(self):
        return True

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    def __cuda_stream__(self):
        return (0, self.ptr)

    def __eq__(self, other):
        return isinstance(other, _BaseStream) and other.ptr == self.ptr

    def __hash__(self):
        return self.ptr

    def __repr__(self):
        return f"<{type(self).__name__} {self.ptr:#x} (device {self.device_id})>"


class Stream(_BaseStream):
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        if null or ptds:
            super().__init__(0 if null else 2, -1)
        else:
            super().__init__(next(_handles), _state.current_device())

    @classmethod
    def from_external(cls, obj):
        """CuPy 14: a stream from any object with ``__cuda_stream__`` (its device is unknown)."""
        version, ptr = obj.__cuda_stream__()
        return ExternalStream(ptr)


class ExternalStream(_BaseStream):
    def __init__(self, ptr, device_id=-1):
        super().__init__(ptr, device_id)


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    device = _state.current_device() if device_id == -1 else device_id
    stack = _state.local.streams.get(device)
    return stack[-1] if stack else Stream.null


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.ptr = next(_handles)

    def record(self, stream=None):
        pass

    def synchronize(self):
        _state.note("transfers", "Event.synchronize", 0)

    @property
    def done(self):
        return True


def get_elapsed_time(start, end):
    """Milliseconds between two events: meaningless on the stand-in (always 0.001)."""
    return 0.001


class MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


_pool = MemoryPool()


def get_default_memory_pool():
    return _pool


def _properties(device):
    _state.check_device(device)
    return {
        "name": b"cupy_standin host device",
        "totalGlobalMem": 24 << 30,
        "multiProcessorCount": 1,
        "maxThreadsPerBlock": 1024,
        "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2**31 - 1, 65535, 65535),
        "sharedMemPerBlock": 48 << 10,
        "regsPerBlock": 65536,
        "major": 9,
        "minor": 0,
    }


def _enable_peer_access(peer):
    _state.check_device(peer)
    _state.peers.add((_state.current_device(), peer))


runtime = types.SimpleNamespace(
    CUDARuntimeError=CUDARuntimeError,
    is_hip=False,
    getDeviceCount=lambda: _state.DEVICES,
    getDevice=_state.current_device,
    getDeviceProperties=_properties,
    runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000,
    deviceCanAccessPeer=lambda device, peer: int(device != peer),
    deviceEnablePeerAccess=_enable_peer_access,
    deviceSynchronize=lambda: _state.note("transfers", "deviceSynchronize", 0),
)
nvrtc = types.SimpleNamespace(getVersion=lambda: (13, 0))
driver = types.SimpleNamespace(CUDADriverError=_state.CUDADriverError)


def memoize(for_each_device=False):
    """CuPy's memoize: a cache keyed by the arguments (and the current device, if asked)."""

    def decorator(function):
        cache = {}

        def wrapper(*args):
            key = (_state.current_device() if for_each_device else None, *args)
            if key not in cache:
                cache[key] = function(*args)
            return cache[key]

        return wrapper

    return decorator
