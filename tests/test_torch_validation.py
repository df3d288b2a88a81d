"""cuproi.torch refuses what the array functions refuse, with their messages, before it builds
its op's arguments: box tensors of the wrong kind or shape (named as given, before the batch
column is added), scalars that are not ints, reals or bools, in every function and module."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")

BOXES = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
ROTATED = torch.tensor([[0, 4.0, 4.0, 3.0, 2.0, 30.0]])


def features(channels=8):
    return torch.zeros(2, channels, 8, 8)


# Each function of cuproi.torch called with (output_size=2 unless given) and ``kwargs``.
FUNCTIONS = {
    "roi_align": lambda boxes=BOXES, size=2, **kw: ct.roi_align(features(), boxes, size, **kw),
    "roi_pool": lambda boxes=BOXES, size=2, **kw: ct.roi_pool(features(), boxes, size, **kw),
    "deform_roi_pool": lambda boxes=BOXES, size=2, **kw: ct.deform_roi_pool(
        features(), boxes, None, size, **kw
    ),
    "ps_roi_align": lambda boxes=BOXES, size=2, **kw: ct.ps_roi_align(
        features(), boxes, size, **kw
    ),
    "ps_roi_pool": lambda boxes=BOXES, size=2, **kw: ct.ps_roi_pool(features(), boxes, size, **kw),
    "prroi_pool": lambda boxes=BOXES, size=2, **kw: ct.prroi_pool(features(), boxes, size, **kw),
    "roi_align_rotated": lambda boxes=ROTATED, size=2, **kw: ct.roi_align_rotated(
        features(), boxes, size, **kw
    ),
    "multi_scale_roi_align": lambda boxes=BOXES, size=2, **kw: ct.multi_scale_roi_align(
        [features()], boxes, size, kw.pop("spatial_scales", [1.0]), **kw
    ),
}
# The keyword options each takes, beside output_size (multi_scale_roi_align: spatial_scales).
OPTIONS = {
    "roi_align": {"spatial_scale", "sampling_ratio", "aligned"},
    "roi_pool": {"spatial_scale"},
    "deform_roi_pool": {"spatial_scale", "sampling_ratio", "gamma"},
    "ps_roi_align": {"spatial_scale", "sampling_ratio"},
    "ps_roi_pool": {"spatial_scale"},
    "prroi_pool": {"spatial_scale"},
    "roi_align_rotated": {"spatial_scale", "sampling_ratio", "aligned", "clockwise"},
    "multi_scale_roi_align": {"sampling_ratio", "aligned", "canonical_scale", "canonical_level"},
}
# A bad value of each option, the error and (the start of) its message: the array API's.
BAD = [
    ("spatial_scale", "0.5", TypeError, r"spatial_scale must be a real number; got '0\.5'"),
    ("spatial_scale", -1.0, ValueError, r"spatial_scale must be positive; got -1\.0"),
    ("spatial_scale", float("nan"), ValueError, r"spatial_scale must be finite; got nan"),
    ("sampling_ratio", 2.5, TypeError, r"sampling_ratio must be an int; got 2\.5 of type float"),
    ("sampling_ratio", "2", TypeError, r"sampling_ratio must be an int; got '2' of type str"),
    ("gamma", "0.1", TypeError, r"gamma must be a real number; got '0\.1'"),
    ("aligned", "False", TypeError, r"aligned must be a bool; got 'False' of type str"),
    ("aligned", 0, TypeError, r"aligned must be a bool; got 0 of type int"),
    ("clockwise", "True", TypeError, r"clockwise must be a bool; got 'True' of type str"),
    ("canonical_scale", "224", TypeError, r"canonical_scale must be a real number; got '224'"),
    ("canonical_scale", 0, ValueError, r"canonical_scale must be positive; got 0\.0"),
    ("canonical_level", 4.5, TypeError, r"canonical_level must be an int; got 4\.5"),
    ("canonical_level", "4", TypeError, r"canonical_level must be an int; got '4'"),
]


@pytest.mark.parametrize(
    ("op", "name", "value", "error", "message"),
    [(op, *case) for op, names in OPTIONS.items() for case in BAD if case[0] in names],
)
def test_every_function_checks_its_options_as_the_array_api(op, name, value, error, message):
    with pytest.raises(error, match=f"^{message}"):
        FUNCTIONS[op](**{name: value})


@pytest.mark.parametrize("op", FUNCTIONS)
@pytest.mark.parametrize(
    ("size", "error", "message"),
    [
        (2.5, TypeError, r"output_size must be an int; got 2\.5"),
        ((2, "3"), TypeError, r"output_size must be an int; got '3'"),
        (0, ValueError, r"output_size must be positive"),
    ],
)
def test_every_function_checks_output_size(op, size, error, message):
    with pytest.raises(error, match=f"^{message}"):
        FUNCTIONS[op](size=size)


@pytest.mark.parametrize("op", FUNCTIONS)
def test_numpy_scalars_and_bools_are_taken(op):
    kw = {
        "spatial_scale": np.float32(1.0),
        "sampling_ratio": np.int64(2),
        "gamma": np.float64(0.1),
        "aligned": np.bool_(True),
        "clockwise": np.bool_(False),
        "canonical_scale": np.int32(224),
        "canonical_level": np.int64(4),
    }
    out = FUNCTIONS[op](**{k: v for k, v in kw.items() if k in OPTIONS[op]})
    assert out.shape[0] == 1


def test_multi_scale_spatial_scales_are_checked_before_the_op():
    with pytest.raises(TypeError, match=r"^spatial_scales must be a sequence of floats"):
        FUNCTIONS["multi_scale_roi_align"](spatial_scales=0.25)
    with pytest.raises(TypeError, match=r"^spatial_scales\[0\] must be a real number; got '1'"):
        FUNCTIONS["multi_scale_roi_align"](spatial_scales=["1"])
    with pytest.raises(ValueError, match=r"^spatial_scales must hold one scale per level"):
        FUNCTIONS["multi_scale_roi_align"](spatial_scales=[1.0, 0.5])


@pytest.mark.parametrize("op", sorted(set(FUNCTIONS) - {"multi_scale_roi_align"}))
@pytest.mark.parametrize("given", [[1.0, 2.0], features().numpy(), 3])
def test_input_must_be_a_tensor(monkeypatch, op, given):
    """torch's dispatcher raised RuntimeError "Expected a value of type 'Tensor'"."""
    monkeypatch.setitem(globals(), "features", lambda channels=8: given)
    with pytest.raises(TypeError, match=r"^input must be a torch.Tensor \(multi_scale.* got a "):
        FUNCTIONS[op]()


def test_multi_scale_levels_must_be_tensors():
    with pytest.raises(TypeError, match=r"^input must be a torch.Tensor .*got a list holding a nd"):
        ct.multi_scale_roi_align([features(), features().numpy()], BOXES, 2, [1.0, 0.5])


def test_multi_scale_features_must_be_a_list():
    with pytest.raises(
        TypeError,
        match=r"^features must be a list with one entry per pyramid level; "
        r"got an array of shape \(2, 8, 8, 8\)",
    ):
        ct.multi_scale_roi_align(features(), BOXES, 2, [1.0])


# ---- boxes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", FUNCTIONS)
@pytest.mark.parametrize(
    "given",
    [torch.tensor([]), torch.zeros(1, 3), torch.zeros(2, 6), torch.zeros(1, 4, 1)],
    ids=["(0,)", "(1,3)", "(2,6)", "(1,4,1)"],
)
def test_per_image_boxes_are_named_by_the_shape_given(op, given):
    width = 5 if op == "roi_align_rotated" else 4
    if given.ndim == 2 and given.shape[1] == width:
        given = torch.zeros(1, 3)
    shape = tuple(given.shape)
    with pytest.raises(ValueError) as info:
        FUNCTIONS[op](boxes=[torch.zeros(0, width), given])
    text = str(info.value)
    assert text.startswith(f"boxes[1] must be an (L, {width}) tensor ["), text
    assert text.endswith(f"; got shape {shape}"), text


@pytest.mark.parametrize("op", FUNCTIONS)
def test_empty_per_image_boxes_give_an_empty_result(op):
    width = 5 if op == "roi_align_rotated" else 4
    out = FUNCTIONS[op](boxes=[torch.zeros(0, width), torch.zeros(0, width)])
    assert out.shape[0] == 0 and out.shape[2:] == (2, 2)


@pytest.mark.parametrize("op", FUNCTIONS)
@pytest.mark.parametrize(
    ("given", "kind"),
    [([[0.0, 0.0, 4.0, 4.0]], "list"), (np.zeros((1, 4), np.float32), "ndarray")],
)
def test_per_image_boxes_must_be_tensors(op, given, kind):
    width = 5 if op == "roi_align_rotated" else 4
    with pytest.raises(TypeError, match=rf"^boxes\[0\] must be an \(L, {width}\) tensor .*; got "):
        FUNCTIONS[op](boxes=[given])
    with pytest.raises(TypeError, match=rf"^boxes must be a \(K, {width + 1}\) tensor .*; got "):
        FUNCTIONS[op](boxes=np.zeros((1, width + 1), np.float32))


# ---- module constructors --------------------------------------------------------------------

MODULES = {  # each module's constructor with valid arguments, by keyword
    "RoIAlign": {"output_size": 2, "spatial_scale": 1.0, "sampling_ratio": 2},
    "RoIPool": {"output_size": 2, "spatial_scale": 1.0},
    "DeformRoIPool": {"output_size": 2},
    "DeformRoIPoolPack": {"output_size": 2, "output_channels": 8, "deform_fc_channels": 16},
    "ModulatedDeformRoIPoolPack": {
        "output_size": 2,
        "output_channels": 8,
        "deform_fc_channels": 16,
    },
    "PSRoIAlign": {"output_size": 2, "spatial_scale": 1.0, "sampling_ratio": 2},
    "PSRoIPool": {"output_size": 2, "spatial_scale": 1.0},
    "PrRoIPool": {"output_size": 2},
    "RoIAlignRotated": {"output_size": 2, "spatial_scale": 1.0},
    "MultiScaleRoIAlign": {"featmap_names": ["p2"], "output_size": 2, "sampling_ratio": 2},
}
MODULE_OPTIONS = {
    "RoIAlign": {"spatial_scale", "sampling_ratio", "aligned"},
    "RoIPool": {"spatial_scale"},
    "DeformRoIPool": {"spatial_scale", "sampling_ratio", "gamma"},
    "DeformRoIPoolPack": {"spatial_scale", "sampling_ratio", "gamma"},
    "ModulatedDeformRoIPoolPack": {"spatial_scale", "sampling_ratio", "gamma"},
    "PSRoIAlign": {"spatial_scale", "sampling_ratio"},
    "PSRoIPool": {"spatial_scale"},
    "PrRoIPool": {"spatial_scale"},
    "RoIAlignRotated": {"spatial_scale", "sampling_ratio", "aligned", "clockwise"},
    "MultiScaleRoIAlign": {"sampling_ratio", "aligned", "canonical_scale", "canonical_level"},
}
PACK_COUNTS = [
    ("output_channels", 2.5, TypeError, r"output_channels must be an int; got 2\.5"),
    ("output_channels", 0, ValueError, r"output_channels must be positive; got 0"),
    ("deform_fc_channels", "16", TypeError, r"deform_fc_channels must be an int; got '16'"),
    ("deform_fc_channels", -1, ValueError, r"deform_fc_channels must be positive; got -1"),
]


@pytest.mark.parametrize(
    ("module", "name", "value", "error", "message"),
    [(m, *case) for m, names in MODULE_OPTIONS.items() for case in BAD if case[0] in names]
    + [
        (m, *case)
        for m in ("DeformRoIPoolPack", "ModulatedDeformRoIPoolPack")
        for case in PACK_COUNTS
    ]
    + [(m, "output_size", 2.5, TypeError, r"output_size must be an int") for m in MODULES],
)
def test_every_module_checks_its_options_when_built(module, name, value, error, message):
    with pytest.raises(error, match=f"^{message}"):
        getattr(ct, module)(**{**MODULES[module], name: value})


@pytest.mark.parametrize("module", MODULES)
def test_modules_build_with_valid_options(module):
    assert isinstance(getattr(ct, module)(**MODULES[module]), torch.nn.Module)
