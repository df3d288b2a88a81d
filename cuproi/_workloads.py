"""The problems cuproi is timed on: reference sizes, seeded arrays, and the calls of every op.

One source for the asv benchmarks (``asv_bench/benchmarks``), ``asv_bench/compare.py`` (cuproi
beside torchvision), ``python -m cuproi bench`` and ``python -m cuproi demo``. The sizes are those
of two-stage detectors (reference/performance.md section 1): two 800x1216 images (800x1333
resized, padded to a multiple of 32), 256 channels on every FPN level, P2 to P5 at strides 4 to
32, 512 boxes per image in training, 7x7 outputs for the box head and 14x14 for the mask head.

:func:`problem` draws the arrays of one op on NumPy (the same values for every backend), with a
seed; :meth:`Problem.to` moves them to CuPy; :func:`calls` gives the op's public functions and
their variants as argument-less callables, the units every harness times.
"""

import dataclasses

import numpy as np

import cuproi
from cuproi import _layout, _timing

IMAGE = (800, 1216)  # (height, width) of the padded input images
IMAGES = 2  # images per batch (per GPU in training)
CHANNELS = 256  # of every FPN level
FPN_STRIDES = (4, 8, 16, 32)  # P2 to P5, the levels the RoI heads read
BOX_EXTENT = (16, 300)  # sides of the boxes in input pixels: the objects of one FPN level

# Keyword arguments of problem() for the reference workloads.
HEADS = {
    # Training heads on one FPN level at stride 8 (100x152): 512 boxes, 7x7 (box head); 256
    # boxes, 14x14 (mask head).
    "box head": {"num_boxes": 512, "output_size": 7},
    "mask head": {"num_boxes": 256, "output_size": 14},
}
# R-FCN's and IoU-Net's heads: one stride-16 map (50x76), 300 boxes per image of 32 to 512
# pixels, 7x7 bins.
SINGLE_MAP_HEAD = {"num_boxes": 600, "output_size": 7, "stride": 16, "extent": (32, 512)}
# Every level P2 to P5: sides log-uniform in 16 to 600 pixels, so that every level gets boxes.
PYRAMID = {"stride": 4, "extent": (16, 600), "log_uniform": True}
# The box-count sweep: cost growth with the number of boxes and their size (64 channels, 7x7).
SWEEP_BOXES = (64, 256, 1024, 4096)
BOX_SIZES = {"small": (16, 64), "medium": (64, 256), "large": (256, 800)}
SWEEP = {"output_size": 7, "channels": 64}
# R-FCN's output channels: 20 classes and background (classification), class-agnostic boxes.
RFCN_CHANNELS = {"cls": 21, "bbox": 8}
# The CPU corners of issue 27, keyword arguments of problem(): one box of one channel (what a
# call costs whatever its size), a few detections at inference on the stride-8 level and on P2
# (2x256x200x304), and the box count of the training step whose working memory is measured.
ONE_BOX = {"num_boxes": 1, "output_size": 7, "channels": 1}
FEW_BOXES = {"num_boxes": 16, "output_size": 7}
FEW_BOXES_P2 = {**FEW_BOXES, "stride": 4}
MANY_BOXES = {"num_boxes": 4096, "output_size": 7}

# The independent random streams of one seed.
_FEATURES, _BOXES, _GRADIENT, _OFFSET, _MASK, _ANGLE = range(6)


def _rng(seed, stream):
    return np.random.default_rng([seed, stream])


def _pair(size):
    return (size, size) if np.ndim(size) == 0 else tuple(size)


def level_shape(stride, channels=CHANNELS):
    """(IMAGES, channels, H, W) of the feature map at ``stride`` of the IMAGE-sized inputs."""
    return (IMAGES, channels, IMAGE[0] // stride, IMAGE[1] // stride)


def pyramid(strides, channels=CHANNELS, dtype="float32", seed=0):
    """Standard normal feature maps, one per stride, of :func:`level_shape`.

    Drawn in float32 and cast to ``dtype``, so that every dtype holds the same values up to its
    rounding. The first map does not depend on the strides after it.
    """
    rng = _rng(seed, _FEATURES)
    shapes = [level_shape(s, channels) for s in strides]
    return [rng.standard_normal(s, dtype=np.float32).astype(dtype) for s in shapes]


def features(stride, channels=CHANNELS, dtype="float32", seed=0):
    """The (IMAGES, channels, H, W) feature map at ``stride``: ``pyramid([stride], ...)[0]``."""
    return pyramid([stride], channels, dtype, seed)[0]


def boxes(num_boxes, extent=BOX_EXTENT, *, log_uniform=False, seed=0):
    """(K, 5) float32 boxes ``[batch_index, x1, y1, x2, y2]`` in input pixels.

    Sides are uniform (or log-uniform) in ``extent``, centres uniform over the IMAGE (so boxes
    near the border reach past it), the batch index uniform over the IMAGES.
    """
    rng = _rng(seed, _BOXES)
    lo, hi = extent
    if log_uniform:
        side = np.exp(rng.uniform(np.log(lo), np.log(hi), (num_boxes, 2)))
    else:
        side = rng.uniform(lo, hi, (num_boxes, 2))
    corner = rng.uniform(0, [IMAGE[1], IMAGE[0]], (num_boxes, 2)) - side / 2
    index = rng.integers(0, IMAGES, num_boxes)
    return np.column_stack([index, corner, corner + side]).astype(np.float32)


def rotated(boxes, seed=0):
    """(K, 6) float32 ``[batch_index, cx, cy, w, h, angle]``: ``boxes`` turned by random angles.

    The angles, in degrees, are uniform in [-180, 180).
    """
    centre, size = (boxes[:, 1:3] + boxes[:, 3:5]) / 2, boxes[:, 3:5] - boxes[:, 1:3]
    angle = _rng(seed, _ANGLE).uniform(-180, 180, len(boxes))
    return np.column_stack([boxes[:, 0], centre, size, angle]).astype(np.float32)


def gradient(num_boxes, channels, output_size, dtype="float32", seed=0):
    """(K, channels, PH, PW) standard normal gradient of an op's output."""
    shape = (num_boxes, channels, *_pair(output_size))
    return _rng(seed, _GRADIENT).standard_normal(shape).astype(dtype)


def offsets(num_boxes, output_size, sigma=0.1, dtype="float32", seed=0):
    """(K, 2, PH, PW) offsets of Deformable RoI Pooling, normal with deviation ``sigma``.

    In units of the box size; ``sigma=0`` gives zeros.
    """
    shape = (num_boxes, 2, *_pair(output_size))
    return _rng(seed, _OFFSET).normal(0, sigma, shape).astype(dtype)


def masks(num_boxes, output_size, dtype="float32", seed=0):
    """(K, 1, PH, PW) masks of modulated Deformable RoI Pooling, uniform in [0, 1)."""
    shape = (num_boxes, 1, *_pair(output_size))
    return _rng(seed, _MASK).uniform(0, 1, shape).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Problem:
    """The arrays and arguments of one op's calls, on one array module.

    Attributes
    ----------
    x : array or list of arrays
        The op's input: (N, C, H, W) features; the score maps, ``C = C_out * PH * PW``, of the
        position-sensitive ops; the list of FPN levels of ``multi_scale_roi_align``.
    boxes : array
        (K, 5) boxes; (K, 6) rotated boxes for ``roi_align_rotated``.
    grad : array
        (K, C_out, PH, PW) gradient of the op's output.
    output_size : tuple of int
        (PH, PW).
    spatial_scale : float or list of float
        One per level for ``multi_scale_roi_align``.
    sampling_ratio : int
        Samples per bin side of the sampling ops.
    offset, mask : array or None
        (K, 2, PH, PW) offsets and (K, 1, PH, PW) masks of ``deform_roi_pool``.
    xp : module
        ``numpy`` or ``cupy``, where the arrays are.
    """

    x: object
    boxes: object
    grad: object
    output_size: tuple
    spatial_scale: object
    sampling_ratio: int = 2
    offset: object = None
    mask: object = None
    xp: object = np

    def to(self, xp):
        """The same problem with its arrays on ``xp`` (``numpy`` or ``cupy``)."""

        def move(a):
            if a is None:
                return None
            return [xp.asarray(level) for level in a] if isinstance(a, list) else xp.asarray(a)

        names = ("x", "boxes", "grad", "offset", "mask")
        return dataclasses.replace(self, xp=xp, **{n: move(getattr(self, n)) for n in names})


def problem(
    op,
    num_boxes=512,
    output_size=7,
    *,
    channels=CHANNELS,
    stride=8,
    extent=BOX_EXTENT,
    log_uniform=False,
    sampling_ratio=2,
    offset_sigma=0.1,
    dtype="float32",
    seed=0,
):
    """The NumPy :class:`Problem` of ``op`` (a public op's name) with ``num_boxes`` boxes.

    Features, boxes, gradient, offsets and masks each come from their own random stream of
    ``seed``, so every op of the same arguments reads the same boxes and the same map.

    Parameters
    ----------
    op : str
        ``"roi_align"``, ``"roi_pool"``, ``"deform_roi_pool"``, ``"ps_roi_align"``,
        ``"ps_roi_pool"``, ``"roi_align_rotated"``, ``"prroi_pool"`` or
        ``"multi_scale_roi_align"``.
    num_boxes, output_size : int
        K, and PH = PW (or a pair).
    channels : int
        C of the output; the position-sensitive ops read ``channels * PH * PW`` score maps.
    stride : int
        Of the feature map (spatial_scale = 1 / stride); for ``multi_scale_roi_align`` the finest
        level's, the coarser ones doubling up to 32.
    extent : (float, float)
        Range of the box sides in input pixels; ``log_uniform`` draws them log-uniformly.
    sampling_ratio : int
        Of the sampling ops.
    offset_sigma : float
        Standard deviation of the deformable offsets (0: zeros).
    dtype : str
        Of the features, gradient, offsets and masks; boxes are float32.
    seed : int
        Of every random stream.
    """
    pooled = _pair(output_size)
    b = boxes(num_boxes, extent, log_uniform=log_uniform, seed=seed)
    grad = gradient(num_boxes, channels, pooled, dtype, seed)
    if op == "multi_scale_roi_align":
        strides = [s for s in FPN_STRIDES if s >= stride]
        levels = pyramid(strides, channels, dtype, seed)
        return Problem(levels, b, grad, pooled, [1 / s for s in strides], sampling_ratio)
    maps = channels * pooled[0] * pooled[1] if op in ("ps_roi_align", "ps_roi_pool") else channels
    x = features(stride, maps, dtype, seed)
    extra = {}
    if op == "roi_align_rotated":
        b = rotated(b, seed)
    elif op == "deform_roi_pool":
        extra["offset"] = offsets(num_boxes, pooled, offset_sigma, dtype, seed)
        extra["mask"] = masks(num_boxes, pooled, dtype, seed)
    return Problem(x, b, grad, pooled, 1 / stride, sampling_ratio, **extra)


def calls(op, p):
    """{name: call()} of every public function of ``op`` and its variants on the problem ``p``.

    The names are ``forward``, ``backward``, ``backward_deterministic`` and, where the op has
    them, ``forward_channels_last`` (features stored channels last), ``backward_channels_last``
    (a channels-last gradient), ``forward_argmax``, ``max_forward``/``max_backward`` (RoI Align's
    ``pool_mode="max"``), ``box_backward`` (gradient of the boxes), ``modulated_*`` (with the
    mask) and ``roi_align_finest`` (RoI Align on the finest level alone). Building them runs what
    a backward needs from its forward (RoI Pool's argmax) and stores the channels-last copies;
    RoI Align's calls are aligned, the others take their op's defaults.
    """
    return _CALLS[op](p)


def _roi_align(p):
    x, b, g = p.x, p.boxes, p.grad
    kw = {
        "output_size": p.output_size,
        "spatial_scale": p.spatial_scale,
        "sampling_ratio": p.sampling_ratio,
        "aligned": True,
    }
    stored = _layout.as_channels_last(p.xp, x)  # torch's channels_last memory format
    return {
        "forward": lambda: cuproi.roi_align(x, b, **kw),
        "backward": lambda: cuproi.roi_align_backward(g, b, x.shape, **kw),
        "backward_deterministic": lambda: cuproi.roi_align_backward(
            g, b, x.shape, deterministic=True, **kw
        ),
        "forward_channels_last": lambda: cuproi.roi_align(stored, b, **kw),
        "backward_channels_last": lambda: cuproi.roi_align_backward(
            g, b, x.shape, channels_last=True, **kw
        ),
        "max_forward": lambda: cuproi.roi_align(x, b, pool_mode="max", **kw),
        "max_backward": lambda: cuproi.roi_align_backward(
            g, b, x.shape, pool_mode="max", input=x, **kw
        ),
        "box_backward": lambda: cuproi.roi_align_box_backward(g, x, b, **kw),
        "box_backward_deterministic": lambda: cuproi.roi_align_box_backward(
            g, x, b, deterministic=True, **kw
        ),
    }


def _roi_pool(p):
    x, b, g, size, scale = p.x, p.boxes, p.grad, p.output_size, p.spatial_scale
    _, argmax = cuproi.roi_pool(x, b, size, scale, return_argmax=True)
    stored = _layout.as_channels_last(p.xp, x)
    return {
        "forward": lambda: cuproi.roi_pool(x, b, size, scale),
        "forward_argmax": lambda: cuproi.roi_pool(x, b, size, scale, return_argmax=True),
        "forward_channels_last": lambda: cuproi.roi_pool(stored, b, size, scale),
        "forward_argmax_channels_last": lambda: cuproi.roi_pool(
            stored, b, size, scale, return_argmax=True
        ),
        "backward": lambda: cuproi.roi_pool_backward(g, b, argmax, x.shape),
        "backward_deterministic": lambda: cuproi.roi_pool_backward(
            g, b, argmax, x.shape, deterministic=True
        ),
    }


def _deform_roi_pool(p):
    x, b, g, offset, mask = p.x, p.boxes, p.grad, p.offset, p.mask
    kw = {
        "output_size": p.output_size,
        "spatial_scale": p.spatial_scale,
        "sampling_ratio": p.sampling_ratio,
    }
    return {
        "forward": lambda: cuproi.deform_roi_pool(x, b, offset, **kw),
        "backward": lambda: cuproi.deform_roi_pool_backward(g, x, b, offset, **kw),
        "backward_deterministic": lambda: cuproi.deform_roi_pool_backward(
            g, x, b, offset, deterministic=True, **kw
        ),
        "modulated_forward": lambda: cuproi.deform_roi_pool(x, b, offset, mask=mask, **kw),
        "modulated_backward": lambda: cuproi.deform_roi_pool_backward(
            g, x, b, offset, mask=mask, **kw
        ),
        "modulated_box_backward": lambda: cuproi.deform_roi_pool_box_backward(
            g, x, b, offset, mask=mask, **kw
        ),
    }


def _calls(op, sampled=True):
    """The forward and backward calls of an op of the common signature.

    That is ``cuproi.<op>(input, boxes, output_size, spatial_scale[, sampling_ratio])`` and
    ``cuproi.<op>_backward(grad, boxes, input_shape, <the same>, *, deterministic)``.
    """

    def build(p):
        forward, backward = getattr(cuproi, op), getattr(cuproi, f"{op}_backward")
        args = (p.output_size, p.spatial_scale) + ((p.sampling_ratio,) if sampled else ())
        x, b, g = p.x, p.boxes, p.grad
        shape = [level.shape for level in x] if isinstance(x, list) else x.shape
        return {
            "forward": lambda: forward(x, b, *args),
            "backward": lambda: backward(g, b, shape, *args),
            "backward_deterministic": lambda: backward(g, b, shape, *args, deterministic=True),
        }

    return build


def _prroi_pool(p):
    x, b, g, size, scale = p.x, p.boxes, p.grad, p.output_size, p.spatial_scale
    return {
        **_calls("prroi_pool", sampled=False)(p),
        "box_backward": lambda: cuproi.prroi_pool_box_backward(g, x, b, size, scale),
    }


def _multi_scale_roi_align(p):
    levels, b, size, scale, ratio = p.x, p.boxes, p.output_size, p.spatial_scale, p.sampling_ratio
    return {
        **_calls("multi_scale_roi_align")(p),
        "roi_align_finest": lambda: cuproi.roi_align(levels[0], b, size, scale[0], ratio, True),
    }


_CALLS = {
    "roi_align": _roi_align,
    "roi_pool": _roi_pool,
    "deform_roi_pool": _deform_roi_pool,
    "ps_roi_align": _calls("ps_roi_align"),
    "ps_roi_pool": _calls("ps_roi_pool", sampled=False),
    "roi_align_rotated": _calls("roi_align_rotated"),
    "prroi_pool": _prroi_pool,
    "multi_scale_roi_align": _multi_scale_roi_align,
}
OPS = tuple(_CALLS)


def footprint_bytes(x, rois, size, scale=1 / 8):
    """Bytes RoI Align must move at least: its output, and the feature elements read.

    Every element that the samples of ``rois`` ((K, 5) boxes, ``size`` x ``size`` bins, aligned,
    sampling_ratio 2) touch on ``x``, once.
    """
    n, c, h, w = x.shape
    touched = np.zeros((n, h, w), bool)
    for b, x1, y1, x2, y2 in rois:
        ys = y1 * scale - 0.5 + (np.arange(2 * size) + 0.5) * (y2 - y1) * scale / (2 * size)
        xs = x1 * scale - 0.5 + (np.arange(2 * size) + 0.5) * (x2 - x1) * scale / (2 * size)
        ys, xs = ys[(ys >= -1) & (ys <= h)], xs[(xs >= -1) & (xs <= w)]  # others read nothing
        rows = np.unique(np.clip(np.concatenate([np.floor(ys), np.floor(ys) + 1]), 0, h - 1))
        cols = np.unique(np.clip(np.concatenate([np.floor(xs), np.floor(xs) + 1]), 0, w - 1))
        touched[int(b)][np.ix_(rows.astype(int), cols.astype(int))] = True
    return (touched.sum() * c + len(rois) * c * size * size) * x.itemsize


def training_step(p, ops=None):
    """RoI Align's forward, then the gradient of its input, on ``p``: one call returning both.

    With ``ops`` None, cuproi's NumPy functions; else a torch module of torchvision's signature
    (``torchvision.ops`` or ``cuproi.torch``) and torch's autograd, the output kept for the
    backward as in training. Aligned, as :func:`calls`.
    """
    args = (p.output_size, p.spatial_scale, p.sampling_ratio, True)
    if ops is None:

        def step():
            out = cuproi.roi_align(p.x, p.boxes, *args)
            return out, cuproi.roi_align_backward(p.grad, p.boxes, p.x.shape, *args)

        return step
    import torch

    x, b = torch.from_numpy(p.x).requires_grad_(), torch.from_numpy(p.boxes)
    g = torch.from_numpy(p.grad)

    def step():
        out = ops.roi_align(x, b, *args)
        return out, torch.autograd.grad(out, x, g)[0]

    return step


def training_memory(library, channels=CHANNELS, num_boxes=MANY_BOXES["num_boxes"]):
    """Bytes :func:`training_step` adds to the peak resident set of this process.

    On the box head's map with ``num_boxes`` boxes; ``library`` is ``"cuproi"`` (the NumPy
    functions) or the name of a torch ops module (``"torchvision.ops"``). A one-box step runs
    first, so that lazy imports and thread pools are not counted. Run it in a fresh process
    (:func:`cuproi._timing.resident_growth_apart`): what earlier work left allocated changes it.
    """
    import importlib

    ops = None if library == "cuproi" else importlib.import_module(library)
    one = problem("roi_align", 1, MANY_BOXES["output_size"], channels=channels)
    training_step(one, ops)()
    many = problem("roi_align", num_boxes, MANY_BOXES["output_size"], channels=channels)
    return _timing.resident_growth(training_step(many, ops))
