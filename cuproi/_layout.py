"""Memory layouts of (N, C, H, W) feature maps: NCHW, and channels last.

An (N, C, H, W) array is *channels last* when its memory is that of a C-contiguous (N, H, W, C)
array: torch's ``channels_last`` memory format, or ``a.transpose(0, 3, 1, 2)`` of an NHWC
array. Arrays with one channel or 1x1 planes are both NCHW and channels last.
"""


def channels_last(x):
    """True when the (N, C, H, W) array ``x`` is stored as a C-contiguous (N, H, W, C) array."""
    return x.transpose(0, 2, 3, 1).flags.c_contiguous


def as_channels_last(xp, x):
    """``x`` with the same values, stored channels last (``x`` itself when it already is)."""
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
