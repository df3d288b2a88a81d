"""Mistakes a user makes, and the errors they get: each names the argument, what was received
and what is expected (the array functions and cuproi.torch alike)."""

import numpy as np
import pytest

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
BOXES = np.array([[0, 1.0, 1.0, 6.0, 5.0]], np.float32)


@pytest.fixture
def ct():
    pytest.importorskip("torch")
    import cuproi.torch

    return cuproi.torch


def test_torch_per_image_boxes_of_the_wrong_shape(ct):
    import torch

    x = torch.from_numpy(X)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be an \(L, 4\) tensor .* shape \(0,\)"):
        ct.roi_align(x, [torch.tensor([])], 2)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be an \(L, 4\) tensor .* \(1, 3\)"):
        ct.roi_align(x, [torch.zeros(1, 4), torch.zeros(1, 3)], 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be an \(L, 5\) tensor \[cx, cy"):
        ct.roi_align_rotated(x, [torch.zeros(2, 4)], 2)
    assert ct.roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


SCALARS = [
    ({"sampling_ratio": 2.5}, TypeError, "sampling_ratio must be an int; got 2.5"),
    ({"spatial_scale": "0.5"}, TypeError, "spatial_scale must be a real number; got '0.5'"),
    ({"spatial_scale": -1.0}, ValueError, "spatial_scale must be positive"),
    ({"aligned": "False"}, TypeError, "aligned must be a bool; got 'False'"),
]
OPTIONS = {  # the scalar options of each op of cuproi.torch
    "roi_align": {"sampling_ratio", "spatial_scale", "aligned"},
    "ps_roi_align": {"sampling_ratio", "spatial_scale"},
    "deform_roi_pool": {"sampling_ratio", "spatial_scale"},
    "prroi_pool": {"spatial_scale"},
    "roi_pool": {"spatial_scale"},
}


@pytest.mark.parametrize(
    ("op", "kwargs", "error", "message"),
    [(op, *case) for op, names in OPTIONS.items() for case in SCALARS if set(case[0]) <= names],
)
def test_torch_scalars_are_checked_as_in_the_array_api(ct, op, kwargs, error, message):
    import torch

    x = torch.zeros(2, 4, 8, 8)
    boxes = torch.from_numpy(BOXES)
    call = getattr(ct, op)
    with pytest.raises(error, match=message):
        if op == "deform_roi_pool":
            call(x, boxes, None, 2, **kwargs)
        else:
            call(x, boxes, 2, **kwargs)


@pytest.mark.parametrize(
    ("module", "kwargs", "error", "message"),
    [
        ("RoIAlign", {"spatial_scale": "0.5", "sampling_ratio": 2}, TypeError, "must be a real"),
        ("RoIAlign", {"spatial_scale": 1.0, "sampling_ratio": 2.5}, TypeError, "an int"),
        ("RoIAlign", {"spatial_scale": 1, "sampling_ratio": 2, "aligned": "F"}, TypeError, "bool"),
        ("RoIPool", {"spatial_scale": 0}, ValueError, "spatial_scale must be positive"),
        ("PrRoIPool", {"spatial_scale": "1"}, TypeError, "spatial_scale must be a real"),
    ],
)
def test_torch_modules_check_their_options_when_built(ct, module, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(ct, module)(7, **kwargs)


def test_jax_aligned_must_be_a_bool():
    jnp = pytest.importorskip("jax.numpy")
    import cuproi.jax as cj

    with pytest.raises(TypeError, match="aligned must be a bool; got 'False'"):
        cj.roi_align(jnp.asarray(X), jnp.asarray(BOXES), 2, aligned="False")
