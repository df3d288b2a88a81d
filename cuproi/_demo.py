"""``python -m cuproi demo``: the three ops on a built-in scene, a table and a comparison figure.

The scene is drawn by code (nothing to download): a 384x576 picture of a house, a tree, a car,
a person and the sun. Its feature map at stride ``s`` holds ``s x s`` block means of simple
channels (colour, brightness, edge strength), a stand-in for a CNN backbone that keeps the
objects visible in every channel.
"""

from pathlib import Path

import numpy as np

import cuproi
from cuproi import _timing, _workloads

HEIGHT, WIDTH = 384, 576
CHANNELS = ("red", "green", "blue", "brightness", "edges x", "edges y", "edges", "objects")
SHOWN = CHANNELS.index("objects")  # the channel the figure draws
SKY, GRASS, HORIZON = (0.55, 0.75, 0.95), (0.35, 0.6, 0.3), 300
FIGURE = "cuproi_demo.png"
OFFSETS = "synthetic, spreading the bins outwards; not learned"  # see offsets()

# name: (x1, y1, x2, y2) in scene pixels, deliberately off the stride-16 grid.
BOXES = {
    "house": (75.0, 141.0, 251.0, 302.0),
    "tree": (300.0, 102.0, 379.0, 300.0),
    "car": (393.0, 247.0, 551.0, 322.0),
    "person": (262.0, 212.0, 291.0, 310.0),
    "sun": (461.0, 27.0, 531.0, 97.0),
}


def scene():
    """The built-in picture: (HEIGHT, WIDTH, 3) float32 RGB in [0, 1]."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    img[:] = SKY
    img[yy > HORIZON] = GRASS

    def paint(mask, rgb):
        img[mask] = rgb

    paint((xx - 496) ** 2 + (yy - 62) ** 2 < 33**2, (1.0, 0.85, 0.2))  # sun
    paint((xx > 90) & (xx < 236) & (yy > 205) & (yy < 302), (0.8, 0.45, 0.35))  # house walls
    paint((yy > 141) & (yy <= 205) & (np.abs(xx - 163) < (yy - 141) * 1.37), (0.5, 0.2, 0.2))
    paint((xx > 148) & (xx < 178) & (yy > 250) & (yy < 302), (0.35, 0.22, 0.12))  # door
    paint((xx > 105) & (xx < 135) & (yy > 222) & (yy < 246), (0.85, 0.95, 1.0))  # window
    paint((xx > 331) & (xx < 348) & (yy > 230) & (yy < 300), (0.4, 0.27, 0.15))  # trunk
    paint((xx - 339.5) ** 2 / 39**2 + (yy - 170) ** 2 / 68**2 < 1, (0.15, 0.45, 0.15))  # crown
    paint((xx > 393) & (xx < 551) & (yy > 265) & (yy < 305), (0.15, 0.3, 0.7))  # car body
    paint((xx > 425) & (xx < 515) & (yy > 247) & (yy <= 265), (0.2, 0.35, 0.75))  # car roof
    for cx in (425, 518):
        paint((xx - cx) ** 2 + (yy - 305) ** 2 < 17**2, (0.1, 0.1, 0.1))  # wheels
    paint((xx - 276.5) ** 2 + (yy - 224) ** 2 < 11**2, (0.95, 0.8, 0.65))  # head
    paint((xx > 264) & (xx < 289) & (yy > 235) & (yy < 275), (0.85, 0.2, 0.2))  # shirt
    paint((xx > 266) & (xx < 287) & (yy >= 275) & (yy < 310), (0.2, 0.2, 0.35))  # legs
    return img


def features(image, stride):
    """(1, C, H // stride, W // stride) float32 block means of the channels in CHANNELS."""
    gray = image.mean(-1)
    dy, dx = np.gradient(gray)
    background = np.where((np.arange(len(gray)) + 0.5 > HORIZON)[:, None, None], GRASS, SKY)
    objects = np.linalg.norm(image - background, axis=-1)  # how far from sky or grass
    planes = [*np.moveaxis(image, -1, 0), gray, np.abs(dx), np.abs(dy), np.hypot(dx, dy), objects]
    h, w = gray.shape[0] // stride, gray.shape[1] // stride
    x = np.stack(planes)[:, : h * stride, : w * stride]
    x = x.reshape(len(planes), h, stride, w, stride).mean((2, 4))
    x /= np.maximum(x.max((1, 2), keepdims=True), 1e-6)  # every channel on [0, 1]
    return x[None].astype(np.float32)


def offsets(k, pooled):
    """(K, 2, PH, PW) offsets that spread the bins outwards, a stand-in for learned ones.

    With gamma 0.1 the outermost bins move by about 10% of the box width and 6% of its height.
    """
    ph, pw = pooled
    v, u = np.meshgrid(np.linspace(-1, 1, ph), np.linspace(-1, 1, pw), indexing="ij")
    field = np.stack([1.0 * u * (1 - 0.3 * v**2), 0.6 * v])
    return np.broadcast_to(field, (k, 2, ph, pw)).astype(np.float32)


# The rows of the method table: (op shown, pass, op, call of _workloads.calls).
ROWS = [
    (op, way, op, way)
    for op in ("roi_pool", "roi_align", "deform_roi_pool")
    for way in ("forward", "backward")
]


def run(out, boxes, pooled, stride, ratio, cupy):
    """Print the tables, write the figure; returns the figure's path or None."""
    image = scene()
    x = features(image, stride)
    names = list(boxes)
    rois = np.array([[0, *boxes[n]] for n in names], np.float32)
    scale = 1 / stride
    offset = offsets(len(rois), pooled)
    grad = _workloads.gradient(len(rois), x.shape[1], pooled)
    problem = _workloads.Problem(x, rois, grad, pooled, scale, ratio, offset=offset)
    err = cuproi.quantization_error(rois, scale, pooled)
    print(
        f"Example: built-in scene {HEIGHT}x{WIDTH} px; features {x.shape} float32 at stride "
        f"{stride}; {len(rois)} boxes; output {pooled[0]}x{pooled[1]}; sampling_ratio {ratio}; "
        "RoI Align aligned=True; Deformable RoI Pool gamma 0.1\n"
    )
    _box_table(names, rois, stride, err)
    print()
    _method_table(problem, err, _timing.backends(cupy))
    print()
    return _figure(out, image, x, rois, offset, pooled, scale, ratio)


def _box_table(names, rois, stride, err):
    header = (
        f"{'box':<8}{'x1, y1, x2, y2 (px)':<26}{'size (px)':>11}{'in cells':>12}"
        f"   RoI Pool error: {'box edge':>8}{'bin edge':>10}{'area lost':>11}{'added':>8}"
    )
    print(header)
    print("-" * len(header))
    for k, name in enumerate(names):
        x1, y1, x2, y2 = rois[k, 1:].tolist()
        corners = f"{x1:g}, {y1:g}, {x2:g}, {y2:g}"
        size = f"{x2 - x1:g}x{y2 - y1:g}"
        cells = f"{(x2 - x1) / stride:.1f}x{(y2 - y1) / stride:.1f}"
        print(
            f"{name:<8}{corners:<26}{size:>11}{cells:>12}   {'':16}"
            f"{err.box_shift_pixels[k]:>6.1f}px{err.bin_shift_pixels[k]:>8.1f}px"
            f"{err.area_lost[k]:>11.0%}{err.area_added[k]:>8.0%}"
        )


def _method_table(problem, err, found):
    quantization = {
        "roi_pool": f"edges {err.bin_shift_pixels.max():.0f} px, area {err.area_error.mean():.0%}",
        "roi_align": "none (exact box)",
        "deform_roi_pool": "none (+ per-bin shifts)",
    }
    header = (
        f"{'method':<17}{'pass':<10}{'backend':<9}{'output shape':<18}{'time':>10}  "
        f"{'quantization error':<28}agreement (max |diff| vs numpy)"
    )
    print(header)
    print("-" * len(header))
    ops = dict.fromkeys(op for _, _, op, _ in ROWS)
    calls = {}
    for backend in found:
        arrays = problem.to(backend.xp)
        calls.update({(backend.name, op): _workloads.calls(op, arrays) for op in ops})
    for method, direction, op, name in ROWS:
        reference = None
        for backend in found:
            call = calls[backend.name, op][name]
            result, seconds = _timing.host_seconds(call, backend.sync)
            if isinstance(result, tuple):  # Deformable RoI Pool's (grad_input, grad_offset)
                result = result[0]
            result = np.asarray(backend.back(result), np.float64)
            if reference is None:
                reference = result
                agreement = "reference" if len(found) > 1 else "numpy only (no GPU backend)"
            else:
                agreement = f"{np.abs(result - reference).max():.2e}"
            print(
                f"{method:<17}{direction:<10}{backend.name:<9}{str(result.shape):<18}"
                f"{seconds * 1e3:>8.2f}ms  {quantization[method]:<28}{agreement}"
            )
    print(
        "\nquantization error: the largest shift of a RoI Pool bin edge over the boxes, and the "
        "mean misplaced area\n(lost + added, as a fraction of the box); see "
        "cuproi.quantization_error. RoI Align and Deformable RoI Pool sample the exact box."
    )


def _figure(out, image, x, rois, offset, pooled, scale, ratio):
    try:
        from cuproi import viz

        fig = viz.plot_comparison(
            x[0],
            rois[:1],
            pooled,
            scale,
            ratio,
            offset[:1],
            offset_source=OFFSETS,
            channel=SHOWN,
            image=image,
        )
    except ImportError:
        print("figure: not drawn, matplotlib is missing (pip install matplotlib)")
        return None
    path = Path(out) / FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path.resolve()}")
    return path
