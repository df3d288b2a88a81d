"""Shared pieces of the float64 oracles of position-sensitive RoI Align and RoI Pool (R-FCN).

Written from the published semantics of ``torchvision.ops.ps_roi_align`` / ``ps_roi_pool``
(reference/semantics-and-peers.md sections 1, 2.3 and 12), NOT from cuproi's implementation,
with the two deliberate departures cuproi documents:

* ps_roi_align divides by ``max(gh * gw, 1)``: a box of zero size with adaptive sampling gives 0
  (torchvision divides 0 by 0);
* ps_roi_pool clips every bin to ``[0, H]`` x ``[0, W]`` in the forward as in the backward
  (torchvision's CUDA forward clips to ``H - 1`` / ``W - 1``). ``clip_last=True`` gives
  torchvision's forward clipping instead, for comparisons with it.

Conventions: ``x`` is (N, C, H, W) with C = C_out * PH * PW; ``rois`` (K, 5) rows
``[batch_index, x1, y1, x2, y2]``; output (K, C_out, PH, PW) where bin (ph, pw) of output
channel c reads input channel ``(c * PH + ph) * PW + pw``. Coordinate arithmetic is evaluated
with numpy scalars of ``coord_dtype`` in the documented operation order (so float32 rounds like
the kernels); interpolation weights and every sum are float64. Plain loops: small inputs only.
The bins themselves (RoI Align's samples, RoI Pool's cells) come from the op's module; the loops
are ``sampling.gather`` and ``sampling.scatter`` with the channel map below.
"""

import functools

import numpy as np

from oracles.sampling import gather, scatter


def channel(c, ph, pw, pooled_h, pooled_w):
    """Position-sensitive channel map of R-FCN / torchvision."""
    return (c * pooled_h + ph) * pooled_w + pw


def _channels(c_out, pooled):
    """channels(ph, pw): the input channels of bin (ph, pw), one per output channel."""
    return functools.partial(channel, np.arange(c_out), pooled_h=pooled[0], pooled_w=pooled[1])


def forward(x, rois, pooled, bins):
    """(K, C_out, PH, PW) of the bins of every box, read through the channel map."""
    c_out, rest = divmod(np.shape(x)[1], pooled[0] * pooled[1])
    assert rest == 0, "C must be C_out * PH * PW"
    return gather(x, bins, (len(rois), c_out, *pooled), _channels(c_out, pooled))


def backward(g, input_shape, pooled, bins):
    """(N, C, H, W): the transpose of :func:`forward` for the same bins."""
    return scatter(g, bins, input_shape, _channels(np.shape(g)[1], pooled))
