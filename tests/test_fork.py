"""The CPU backend in forked processes (multiprocessing's default on Linux, torch's DataLoader
workers): its thread pools do not survive a fork, so a child must not wait on the parent's."""

import multiprocessing

import numpy as np
import pytest

import cuproi
from cuproi._cpu import _parallel

fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)


def _problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    boxes = np.array([[0, 1.0, 1.0, 12.0, 9.0], [1, 3.0, 2.0, 15.0, 15.0]], np.float32)
    return x, boxes


@pytest.fixture
def threaded(monkeypatch):
    """Every step of the backend on two threads, however small (a fork copies this state)."""
    monkeypatch.setenv("CUPROI_NUM_THREADS", "2")
    monkeypatch.setattr(_parallel, "PRODUCT_GRAIN", 1)
    monkeypatch.setattr(_parallel, "COPY_GRAIN", 1)


def _child(queue):
    x, boxes = _problem()
    queue.put(cuproi.roi_align(x, boxes, 3, 1.0, 2, True))


@fork
def test_a_forked_child_computes_after_the_parent_used_its_threads(threaded):
    x, boxes = _problem()
    expected = cuproi.roi_align(x, boxes, 3, 1.0, 2, True)  # the parent's pools now exist
    assert _parallel._pools
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's thread pool")
    assert child.exitcode == 0
    np.testing.assert_array_equal(queue.get(timeout=10), expected)


@fork
def test_torch_dataloader_workers(threaded):
    torch = pytest.importorskip("torch")
    x, boxes = _problem()
    expected = cuproi.roi_align(x, boxes, 3, 1.0, 2, True)

    class Crops(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(cuproi.roi_align(x, boxes, 3, 1.0, 2, True))

    loader = torch.utils.data.DataLoader(
        Crops(), batch_size=2, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    for batch in loader:  # a hang raises RuntimeError after the timeout
        np.testing.assert_array_equal(batch[0].numpy(), expected)
