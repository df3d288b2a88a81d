"""Peak memory an op allocates, as tracemalloc sees it (NumPy reports its allocations to it)."""

import tracemalloc


def peak(call):
    """``(result, peak bytes allocated while call runs)``."""
    tracemalloc.start()
    try:
        result = call()
        most = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, most


def peak_beyond(call):
    """Peak bytes ``call`` allocates beyond the arrays it returns, after a warm call.

    The warm call takes the imports, the thread pools and the backend's kept scratch buffer
    out of the measure.
    """
    call()
    result, most = peak(call)
    arrays = result if isinstance(result, (tuple, list)) else (result,)
    return most - sum(a.nbytes for a in arrays if a is not None)
