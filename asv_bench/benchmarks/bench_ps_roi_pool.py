"""Position-sensitive RoI Pool (R-FCN), forward and backward: averages of quantized bins.

On R-FCN's classification and box heads (``common.RfcnHeads``); ``GpuTime`` reports device time
from CUDA events (skipped without a GPU).
"""

from . import common

OP = "ps_roi_pool"
CALLS = ("forward", "backward", "backward_deterministic")


class Heads(common.RfcnHeads):
    op, timed = OP, CALLS


class GpuTime(common.RfcnHeadsDeviceTime):
    op, timed = OP, CALLS
