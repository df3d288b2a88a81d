"""cupy.testing of the stand-in: NumPy's assertions on device arrays (copied to the host)."""

import numpy as np


def _host(a):
    from cupy_standin import asnumpy

    return asnumpy(a)


def assert_array_equal(x, y, err_msg="", verbose=True, strict=False):
    np.testing.assert_array_equal(_host(x), _host(y), err_msg, verbose, strict=strict)


def assert_allclose(actual, desired, rtol=1e-7, atol=0, err_msg="", verbose=True):
    np.testing.assert_allclose(_host(actual), _host(desired), rtol, atol, True, err_msg, verbose)
