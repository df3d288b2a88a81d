"""Position-sensitive RoI Pool (R-FCN), forward and backward.

R-FCN's heads on a stride-16 map of two 800x1216 images (50x76): ``k x k = 7 x 7`` bins and
``C = C_out * 49`` score maps, with ``C_out = 21`` for the classification head (20 classes and
background) and ``C_out = 8`` for the class-agnostic box head; 300 boxes per image of 32 to 512
pixels (``cuproi._workloads``). ``GpuTime`` reports device time from CUDA events (skipped
without a GPU).
"""

from . import common

OP = "ps_roi_pool"
CALLS = ("forward", "backward", "backward_deterministic")


class Heads(common.RfcnHeads):
    op, timed = OP, CALLS


class GpuTime(common.RfcnHeadsDeviceTime):
    op, timed = OP, CALLS
