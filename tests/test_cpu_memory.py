"""Working memory follows the boxes, not the map (CPU backend).

One small box on a large map: beyond the output (a forward's pooled features, a backward's
input gradient) an op may allocate in proportion to what its box reads, not to the map. NumPy
reports its allocations to tracemalloc, SciPy's sparse matrices are NumPy arrays, so the peak
traced while the op runs is what it allocated. Before the runs of tiles (cuproi._cpu._cells),
these ops allocated 1 to 8 times the map (a backward: up to 7 times its gradient; float16 a
float32 copy of the whole map). Max-mode RoI Align, rotated RoI Align and the box gradients:
test_cpu_memory_samples.py.
"""

import numpy as np
import pytest
from peak_memory import peak_beyond

import cuproi

SIZE = 1500  # a 1500 x 1500 plane: 9 MB of float32 per channel
BOX = np.array([[0, 700, 700, 712, 709]], np.float64)
ROTATED = np.array([[0, 706, 704, 12, 9, 30]], np.float64)


def _cases(x, x4, levels):
    g7 = np.ones((1, x.shape[1], 7, 7), x.dtype)
    g2 = np.ones((1, x.shape[1], 2, 2), x.dtype)
    offset = np.full((1, 2, 7, 7), 0.1, x.dtype)
    _, argmax = cuproi.roi_pool(x, BOX, 7, return_argmax=True)
    return {
        "roi_align": lambda: cuproi.roi_align(x, BOX, 7, 1.0, 2, True),
        "roi_align_backward": lambda: cuproi.roi_align_backward(g7, BOX, x.shape, 7, 1.0, 2, True),
        "roi_pool": lambda: cuproi.roi_pool(x, BOX, 7),
        "roi_pool argmax": lambda: cuproi.roi_pool(x, BOX, 7, return_argmax=True),
        "roi_pool_backward": lambda: cuproi.roi_pool_backward(g7, BOX, argmax, x.shape),
        "deform_roi_pool": lambda: cuproi.deform_roi_pool(x, BOX, offset, 7),
        "deform_roi_pool_backward": lambda: cuproi.deform_roi_pool_backward(g7, x, BOX, offset, 7),
        "deform_roi_pool_backward no offset": lambda: cuproi.deform_roi_pool_backward(
            g7, x, BOX, None, 7
        ),
        "prroi_pool": lambda: cuproi.prroi_pool(x, BOX, 7),
        "prroi_pool_backward": lambda: cuproi.prroi_pool_backward(g7, BOX, x.shape, 7),
        "prroi_pool_box_backward": lambda: cuproi.prroi_pool_box_backward(g7, x, BOX, 7),
        "ps_roi_align": lambda: cuproi.ps_roi_align(x4, BOX, 2, 1.0, 2),
        "ps_roi_align_backward": lambda: cuproi.ps_roi_align_backward(g2, BOX, x4.shape, 2),
        "ps_roi_pool": lambda: cuproi.ps_roi_pool(x4, BOX, 2),
        "ps_roi_pool_backward": lambda: cuproi.ps_roi_pool_backward(g2, BOX, x4.shape, 2),
        "multi_scale_roi_align": lambda: cuproi.multi_scale_roi_align(
            levels, BOX, 7, [1.0, 0.5], 2
        ),
        "multi_scale_roi_align_backward": lambda: cuproi.multi_scale_roi_align_backward(
            g7, BOX, [a.shape for a in levels], 7, [1.0, 0.5], 2
        ),
        "roi_align_rotated_backward": lambda: cuproi.roi_align_rotated_backward(
            g7, ROTATED, x.shape, 7, 1.0, 2
        ),
    }


_NAMES = sorted(_cases(np.zeros((1, 1, 8, 8)), np.zeros((1, 4, 8, 8)), [np.zeros((1, 1, 8, 8))]))


@pytest.fixture(scope="module", params=[np.float32, np.float16], ids=["float32", "float16"])
def cases(request):
    rng = np.random.default_rng(0)
    dtype = request.param
    x = rng.standard_normal((1, 1, SIZE, SIZE), np.float32).astype(dtype)
    x4 = rng.standard_normal((1, 4, SIZE, SIZE), np.float32).astype(dtype)
    levels = [x, np.ascontiguousarray(x[:, :, ::2, ::2])]
    return x.nbytes, _cases(x, x4, levels)


@pytest.mark.parametrize("name", _NAMES)
def test_one_small_box_on_a_large_map(cases, name):
    plane, calls = cases
    beyond = peak_beyond(calls[name])
    # What the box reads (a few tiles, operators of a few hundred entries) is some kilobytes;
    # 256 KiB (3 or 6 % of the plane) leaves room for NumPy's and SciPy's small temporaries.
    assert beyond < 2**18, f"{name}: {beyond} bytes beyond its result ({plane} in the plane)"
