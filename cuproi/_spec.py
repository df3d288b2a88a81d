"""Stand-ins for arrays without data, for cuproi's checks of shapes and dtypes.

cuproi.torch's fake kernels (tensors without data, under ``torch.compile`` and
``torch.export``) and cuproi.jax (arrays that ``jax.jit`` traces) check their arguments as the
array functions do, in their order and with their messages, on :class:`Spec` stand-ins: the
checks of :mod:`cuproi._validate` read only a shape, a dtype and, of features, whether they
are stored channels last.
"""

import types

import numpy as np


class Spec:
    """What cuproi's checks read of an array without data: its shape and dtype.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    dtype : numpy.dtype
        The NumPy dtype the op sees.
    """

    # The checks of features ask whether they are stored channels last (to keep that layout);
    # without memory there is no layout to keep, and none to refuse.
    flags = types.SimpleNamespace(c_contiguous=False)

    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.shape[0]

    def astype(self, dtype, copy=True):
        return Spec(self.shape, dtype)

    def transpose(self, *axes):
        return Spec([self.shape[axis] for axis in axes], self.dtype)


class _SpecModule:
    """The array module of :class:`Spec`: the one function cuproi's shape checks call."""

    @staticmethod
    def ascontiguousarray(array, dtype=None):
        return array if dtype is None else array.astype(dtype)


xp = _SpecModule()
