"""The fixed cost of a call: RoI Align on one box of one channel (issue 27's first two rows).

Below about a thousand boxes a per-call cost, not the work, sets the time of the CPU backend.
``OneBox.time_forward`` is ``cuproi.roi_align`` on the NumPy backend, one box of one channel on
the box head's map (stride 8, 100x152, 7x7 output, ``cuproi._workloads.ONE_BOX``);
``OneBoxTorch.time_forward_backward`` the same through ``cuproi.torch``, forward and the input
gradient by torch's autograd (skipped without torch). ``asv_bench/corners.py`` times both beside
torchvision.
"""

from cuproi import _workloads


class OneBox:
    """RoI Align's forward on one box of one channel (NumPy)."""

    def setup(self):
        p = _workloads.problem("roi_align", **_workloads.ONE_BOX)
        self.forward = _workloads.calls("roi_align", p)["forward"]

    def time_forward(self):
        self.forward()


class OneBoxTorch:
    """``cuproi.torch.roi_align`` forward and backward on one box of one channel."""

    def setup(self):
        try:
            import cuproi.torch
        except ImportError as error:
            raise NotImplementedError(f"torch unavailable: {error}") from None
        p = _workloads.problem("roi_align", **_workloads.ONE_BOX)
        self.step = _workloads.training_step(p, cuproi.torch)

    def time_forward_backward(self):
        self.step()
