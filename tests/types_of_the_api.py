"""What a type checker infers of the public API: read by mypy in CI (.ci/run), never run.

``py.typed`` ships, so the signatures are part of the API: an op returns the array type it is
given, and the adapters' decorators keep the signatures of the functions they wrap. Each
``assert_type`` fails mypy where an inferred type differs (``Any`` included); each ``type:
ignore`` is an error mypy must find, or ``--warn-unused-ignores`` fails it.
"""

from typing import assert_type

import jax
import numpy as np
import numpy.typing as npt
import torch
from matplotlib.figure import Figure

import cuproi
import cuproi.jax
import cuproi.torch
import cuproi.viz

Float32 = npt.NDArray[np.float32]
x: Float32 = np.zeros((1, 4, 8, 8), np.float32)
boxes: Float32 = np.array([[0, 1, 1, 6, 6]], np.float32)
assert_type(cuproi.roi_align(x, boxes, 2), Float32)
assert_type(cuproi.roi_pool(x, boxes, 2), Float32)
assert_type(cuproi.roi_pool(x, boxes, 2, return_argmax=True), tuple[Float32, Float32])
assert_type(cuproi.roi_align_backward(x, boxes, (1, 4, 8, 8), 8), Float32)
assert_type(cuproi.multi_scale_roi_align([x, x], [boxes[:, 1:]], 2, [1, 0.5]), Float32)
cuproi.roi_align(x, boxes, "2")  # type: ignore[arg-type]

t, t_boxes = torch.zeros(1, 4, 8, 8), torch.tensor([[0, 1.0, 1, 6, 6]])
assert_type(cuproi.torch.roi_align(t, t_boxes, 2), torch.Tensor)
assert_type(cuproi.torch.roi_pool(t, [t_boxes[:, 1:]], 2), torch.Tensor)
assert_type(cuproi.torch.ps_roi_align(t, t_boxes, 2), torch.Tensor)
assert_type(cuproi.torch.deform_roi_pool(t, t_boxes, None, 2), torch.Tensor)
assert_type(cuproi.torch.multi_scale_roi_align([t], t_boxes, 2, [1.0]), torch.Tensor)
cuproi.torch.RoIAlign(7, 0.25, 2, pool_mode="max")
cuproi.torch.RoIAlign("7", 0.25, 2)  # type: ignore[arg-type]
cuproi.torch.roi_align(t, t_boxes, 2, aligned="yes")  # type: ignore[arg-type]

j, j_boxes = jax.numpy.zeros((1, 4, 8, 8)), jax.numpy.array([[0, 1.0, 1, 6, 6]])
assert_type(cuproi.jax.roi_align(j, j_boxes, 2), jax.Array)
assert_type(cuproi.jax.roi_pool(j, j_boxes, 2), jax.Array)
assert_type(cuproi.jax.roi_pool(j, j_boxes, 2, return_argmax=True), tuple[jax.Array, jax.Array])
assert_type(cuproi.jax.roi_pool(j, j_boxes, 2, 1.0, True), tuple[jax.Array, jax.Array])
assert_type(cuproi.jax.roi_align_rotated(j, j_boxes, 2), jax.Array)
assert_type(cuproi.jax.prroi_pool(j, [j_boxes[:, 1:]], 2), jax.Array)
cuproi.jax.ps_roi_pool(j, j_boxes, 2, spatial_scale="1")  # type: ignore[arg-type]

assert_type(cuproi.viz.plot_roi_pool(x, boxes, 2), Figure)
assert_type(cuproi.viz.plot_roi_align(x, boxes, 2, sample=(0, 1, 1, None, None)), Figure)
assert_type(cuproi.viz.plot_comparison((16, 16), boxes, 2), Figure)
cuproi.viz.plot_roi_align(x, boxes, 2, ax="left")  # type: ignore[arg-type]
