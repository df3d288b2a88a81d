"""Multi-level (FPN) RoI Align as a torch op, and torchvision's MultiScaleRoIAlign."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import cuproi
from cuproi import _pyramid, _validate
from cuproi._types import Boxes, OutputSize
from cuproi.torch import _autograd, _common, _fake, _forward_mode, _script


@torch.library.custom_op("cuproi::multi_scale_roi_align", mutates_args=())
def _multi_scale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    with _common.stream(features[0] if features else rois):  # no level: cuproi names the mistake
        return cuproi.multi_scale_roi_align(
            list(features),
            rois,
            (pooled_h, pooled_w),
            spatial_scales,
            sampling_ratio,
            aligned,
            canonical_scale,
            canonical_level,
        )


@_multi_scale_roi_align.register_fake
def _(
    features,
    rois,
    pooled_h,
    pooled_w,
    spatial_scales,
    sampling_ratio,
    aligned,
    canonical_scale,
    canonical_level,
):
    # cuproi.multi_scale_roi_align's checks.
    count = _pyramid.count_levels(features, "features")
    *levels, b = _fake.prepare(**{f"features[{i}]": f for i, f in enumerate(features)}, boxes=rois)
    pooled = _validate.output_size(_fake.hint((pooled_h, pooled_w)))
    _validate.sampling_ratio(_fake.hint(sampling_ratio))
    levels = _pyramid.level_features(_fake.xp, levels)
    dtype = levels[0].dtype
    rule = _fake.hint((canonical_scale, canonical_level))
    scales, _ = _pyramid.level_rule(_fake.hint(spatial_scales), count, dtype, *rule)
    k = _fake.boxes(b, levels[0].shape[0], max(scales), dtype)
    _validate.pooled_result(k, levels[0].shape[1], pooled)
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_h, pooled_w))


@torch.library.custom_op("cuproi::multi_scale_roi_align_backward", mutates_args=())
def _multi_scale_roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    input_shapes: list[int],
    spatial_scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: int,
    deterministic: bool,
) -> list[Tensor]:
    grads = _common.run_backward(
        cuproi.multi_scale_roi_align_backward,
        grad,
        (rois, _shapes(input_shapes)),
        spatial_scales,
        sampling_ratio,
        aligned,
        canonical_scale,
        canonical_level,
        deterministic=deterministic,
    )
    return [g.clone() for g in grads] if grad.is_cuda else grads  # CUDA: views of one buffer


@_multi_scale_roi_align_backward.register_fake
def _(
    grad,
    rois,
    input_shapes,
    spatial_scales,
    sampling_ratio,
    aligned,
    canonical_scale,
    canonical_level,
    deterministic,
):
    # cuproi.multi_scale_roi_align_backward's checks.
    given = _shapes(_fake.hint(input_shapes))
    count = _pyramid.count_levels(given, "input_shapes")
    g, b = _fake.prepare(grad_output=grad, boxes=rois)
    shapes = _pyramid.gradient_shapes(given)
    pooled = _validate.output_size(g.shape[2:])
    _validate.sampling_ratio(_fake.hint(sampling_ratio))
    rule = _fake.hint((canonical_scale, canonical_level))
    scales, _ = _pyramid.level_rule(_fake.hint(spatial_scales), count, g.dtype, *rule)
    k = _fake.boxes(b, shapes[0][0], max(scales), g.dtype)
    _validate.grad_output(_fake.xp, g, k, shapes[0][1], pooled)
    return [grad.new_empty(s) for s in _shapes(input_shapes)]


def _shapes(flat):
    """Per-level (N, C, H, W) from the flat list an op schema can carry."""
    return [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)]


def _flat_shapes(features):
    """The (N, C, H, W) of every level in one flat list, as the backward op takes them."""
    return [int(v) for f in features for v in f.shape]


_autograd.register(_multi_scale_roi_align, _multi_scale_roi_align_backward, shape=_flat_shapes)


@_script.compiles_as(_script.multi_scale_roi_align)
@_common.bfloat16_in_float32
def multi_scale_roi_align(
    features: Sequence[Tensor],
    boxes: Boxes[Tensor],
    output_size: OutputSize,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Differentiable :func:`cuproi.multi_scale_roi_align` on tensors (every level).

    Parameters
    ----------
    features : list of (N, C, H_l, W_l) Tensors
        The pyramid, finest first, on the CPU or one CUDA device.
    boxes : (K, 5) Tensor or list of (L_i, 4) Tensors
        ``[batch_index, x1, y1, x2, y2]``, or one ``[x1, y1, x2, y2]`` tensor per image, in
        image coordinates.
    output_size, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
        As in :func:`cuproi.multi_scale_roi_align`.

    Returns
    -------
    (K, C, PH, PW) Tensor
        Differentiable with respect to every level of ``features`` (not the boxes).

    Examples
    --------
    >>> p2 = torch.rand(1, 4, 64, 64, requires_grad=True)
    >>> p3 = torch.rand(1, 4, 32, 32, requires_grad=True)
    >>> boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 250.0, 250.0]])]
    >>> out = cuproi.torch.multi_scale_roi_align([p2, p3], boxes, 7, [1 / 4, 1 / 8], 2)
    >>> out.sum().backward()
    >>> tuple(out.shape), p2.grad.abs().sum() > 0, p3.grad.abs().sum() > 0
    ((2, 4, 7, 7), tensor(True), tensor(True))
    """
    count = _pyramid.count_levels(features, "features")
    pooled_h, pooled_w = _validate.output_size(output_size)
    features = list(features)
    return _forward_mode.call(
        _multi_scale_roi_align,
        features,
        _common.rois(boxes, features[0]),
        pooled_h,
        pooled_w,
        _pyramid.level_scales(spatial_scales, count),
        _validate.sampling_ratio(sampling_ratio),
        _validate.flag(aligned, "aligned"),
        *_pyramid.canonical(canonical_scale, canonical_level),
    )


torch.fx.wrap("multi_scale_roi_align")  # a leaf of torch.fx graphs, as torchvision's ops


def _infer_scale(feature, image_size):
    """The scale of a level by torchvision's rule: 2**round(log2(height / image height))."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


def _levels(x, featmap_names, image_shapes):
    """The feature maps of ``x`` named in ``featmap_names``, in the order of ``x``."""
    features = [v for k, v in x.items() if k in featmap_names]
    if not features:
        raise ValueError(f"x holds none of the feature maps {featmap_names}")
    if not image_shapes:
        raise ValueError("image_shapes must not be empty")
    return features


def _level_scales(features, image_shapes):
    """The scale of every level, from the largest image height and width (torchvision's rule)."""
    size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [_infer_scale(f, size) for f in features]
    _check_halving(scales, [f.shape[-2] for f in features], size[0])
    return scales


def _check_halving(scales: list[float], heights: list[int], height: int):
    """ValueError where the inferred ``scales`` do not halve from each level to the next.

    Maps of levels that are not consecutive, or ``image_shapes`` of other images, give such
    scales; torchvision then pools some boxes from another level's map, or not at all, and
    says nothing. Plain string concatenation: TorchScript compiles this too.
    """
    for i in range(1, len(scales)):
        if scales[i] * 2.0 != scales[i - 1]:
            raise ValueError(
                "the scales inferred from the maps' heights "
                + str(heights)
                + " and the largest image height "
                + str(height)
                + " (2**round(log2(map height / image height)), as torchvision infers them) are "
                + str(scales)
                + ", which do not halve from each level to the next: give the maps of "
                "consecutive levels, finest first, and the sizes of the images they come from"
            )


# Leaves of torch.fx graphs: they read the dict of levels and the image sizes, which a traced
# graph holds as values it cannot iterate.
torch.fx.wrap("_levels")
torch.fx.wrap("_level_scales")


class MultiScaleRoIAlign(nn.Module):
    """FPN pooler with torchvision's interface (``torchvision.ops.MultiScaleRoIAlign``).

    Pools every box from the level of ``x`` its size selects, all levels in one kernel launch
    on the GPU (see :func:`cuproi.multi_scale_roi_align` for the level rule).

    Parameters
    ----------
    featmap_names : list of str
        Keys of the feature maps of ``x`` to pool from; they are taken in the order of ``x``.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    sampling_ratio : int
        Samples per bin and axis; ``<= 0`` adaptive.
    canonical_scale, canonical_level : optional
        The level rule's constants (224 and 4, as in the FPN paper and torchvision).
    aligned : bool, optional
        Half-pixel boxes; torchvision has no such switch (always False).

    Notes
    -----
    As torchvision, the scale of each level is inferred from its height and the largest image
    height of ``image_shapes``, rounded to a power of two. Unlike torchvision, which infers the
    scales on the first call and keeps them, they are inferred on every call (they depend
    only on shapes: no device synchronisation); the last ones are in :attr:`scales` (not
    set by a ``torch.fx`` graph of the module). Scales that do not halve from each level to
    the next (the maps of levels that are not consecutive, or ``image_shapes`` of other
    images) raise ValueError, where torchvision pools some boxes from another level's map.
    """

    scales: list[float] | None  # for torch.jit.script, which types the attributes from None

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: OutputSize,
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _validate.output_size(output_size)
        self.sampling_ratio = _validate.sampling_ratio(sampling_ratio)
        canonical = _pyramid.canonical(canonical_scale, canonical_level)
        self.canonical_scale, self.canonical_level = canonical
        self.aligned = _validate.flag(aligned, "aligned")
        self.scales = None

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        if torch.jit.is_scripting():  # what follows is eager and torch.fx, which TorchScript skips
            return self._scripted(x, boxes, image_shapes)
        features = _levels(x, self.featmap_names, image_shapes)
        scales = _level_scales(features, image_shapes)
        if not isinstance(scales, torch.fx.Proxy):  # a traced graph keeps none
            self.scales = scales
        return self._pool(features, boxes, scales)

    def _scripted(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """:meth:`forward` as TorchScript compiles it (no comprehension with ``if``)."""
        features: list[Tensor] = []
        for k, v in x.items():
            if k in self.featmap_names:
                features.append(v)
        if len(features) == 0:
            raise ValueError(f"x holds none of the feature maps {self.featmap_names}")
        if len(image_shapes) == 0:
            raise ValueError("image_shapes must not be empty")
        height, width = 0, 0
        for s in image_shapes:
            height, width = max(height, s[0]), max(width, s[1])
        scales: list[float] = []
        heights: list[int] = []
        for f in features:  # _infer_scale's rule; TorchScript has no math.log2
            scales.append(2.0 ** round(math.log(f.shape[-2] / height) / math.log(2.0)))
            heights.append(f.shape[-2])
        _check_halving(scales, heights, height)
        self.scales = scales
        return self._pool(features, boxes, scales)

    def _pool(self, features: list[Tensor], boxes: list[Tensor], scales: list[float]) -> Tensor:
        """:func:`multi_scale_roi_align` of the levels with this module's options."""
        options = (self.sampling_ratio, self.aligned, self.canonical_scale, self.canonical_level)
        return multi_scale_roi_align(features, boxes, self.output_size, scales, *options)

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, canonical_scale={self.canonical_scale}, "
            f"canonical_level={self.canonical_level}, aligned={self.aligned}"
        )
