"""cuproi.viz: figures are made headless (no pyplot), hold the expected artists, and put them
where the published semantics of the ops say (checked here from those semantics, not from
cuproi's geometry code)."""

import doctest
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cuproi

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from cuproi import viz  # noqa: E402

ROOT = Path(__file__).parents[1]
SCALE = 1 / 16
# Two boxes inside a 20 x 30 map at stride 16, of different sizes and aspect ratios.
BOXES = np.array([[0, 40.0, 56.0, 300.0, 200.0], [0, 200.0, 100.0, 260.0, 290.0]])
MAP = (20, 30)  # the map's (H, W) alone: figures without features


def features(seed=0):
    return np.random.default_rng(seed).random((1, 3, 20, 30)).astype(np.float32)


def patches(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def collection(ax, gid):
    (found,) = [c for c in ax.collections if c.get_gid() == gid]
    return found


def offsets(ax, gid):
    return np.asarray(collection(ax, gid).get_offsets())


def gid_lines(ax, gid):
    return [line for line in ax.lines if line.get_gid() == gid]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def legend_entries(ax, text):
    """The entries of ``ax``'s legend that say ``text``."""
    return [t for t in legend_texts(ax) if text in t]


def panel(fig, title):
    """The one panel of ``fig`` whose title says ``title``."""
    (ax,) = [ax for ax in fig.axes if title in ax.get_title()]
    return ax


def corners(patch):
    x, y = patch.get_xy()
    return np.array([x, y, x + patch.get_width(), y + patch.get_height()])


def test_importing_cuproi_and_drawing_need_no_pyplot():
    code = (
        "import sys, cuproi, cuproi.viz\n"
        "assert 'matplotlib' not in sys.modules, 'import cuproi imported matplotlib'\n"
        "fig = cuproi.viz.plot_comparison((12, 16), [20.0, 24.0, 150.0, 120.0], 3, 1 / 16)\n"
        "fig.savefig(sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    out = Path(__import__("tempfile").mkdtemp()) / "f.png"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": ""}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=out.parent)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roi_pool_figure():
    x = features()
    fig = viz.plot_roi_pool(x, BOXES, (3, 4), SCALE, channel=1)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(patches(ax, "bin")) == 2 * 3 * 4
    exact = np.array([corners(p) for p in patches(ax, "exact box")])
    np.testing.assert_allclose(exact, BOXES[:, 1:] * SCALE)
    # The cells RoI Pool reads: rounded corners (half away from zero), end inclusive.
    quantized = np.array([corners(p) for p in patches(ax, "quantized box")])
    first = np.floor(BOXES[:, 1:3] * SCALE + 0.5)
    last = np.floor(BOXES[:, 3:5] * SCALE + 0.5) + 1
    np.testing.assert_array_equal(quantized, np.column_stack([first, last]))
    # The max-pooled cell of every bin, as roi_pool's argmax says.
    _, argmax = cuproi.roi_pool(x[:, 1:2], BOXES, (3, 4), SCALE, return_argmax=True)
    rows, cols = np.divmod(argmax.ravel(), 30)
    np.testing.assert_array_equal(offsets(ax, "max cells"), np.column_stack([cols, rows]) + 0.5)
    # The highlighted areas are the misalignment quantization_error measures.
    err = cuproi.quantization_error(BOXES, SCALE, (3, 4))
    area = np.prod(np.diff(exact.reshape(2, 2, 2), axis=1), axis=(1, 2))
    for gid, fraction in (("lost", err.area_lost), ("added", err.area_added)):
        drawn = sum(p.get_width() * p.get_height() for p in patches(ax, gid))
        np.testing.assert_allclose(drawn, (fraction * area).sum())


def test_roi_pool_bins_clipped_by_the_map_and_a_box_off_it():
    boxes = np.array([[-40.0, -24.0, 100.0, 90.0], [600.0, 400.0, 700.0, 500.0]])
    fig = viz.plot_roi_pool(MAP, boxes, 2, SCALE)
    ax = fig.axes[0]
    assert len(patches(ax, "bin")) == 8
    assert len(patches(ax, "quantized box")) == 1  # the second box reads no cell
    assert len(offsets(ax, "max cells")) == 4  # its bins are empty: argmax -1, no marker
    # x: round(-2.5) = -3 to round(6.25) = 6; y: round(-1.5) = -2 to round(5.625) = 6; clipped.
    np.testing.assert_array_equal(corners(patches(ax, "quantized box")[0]), [0, 0, 7, 7])


def c_round(v):
    """C round(), half away from zero, as torchvision's roi_pool rounds box corners."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def test_roi_pool_bins_are_the_box_cut_evenly_not_the_cells_they_read():
    # 17 x 10 cells in 7 x 7 bins: bin edges fall inside cells, so neighbouring bins read a
    # cell in common. The bins drawn are the PH x PW parts of the rounded box, one outline
    # each, not their overlapping cell ranges (whose outlines drew every cell line).
    x, box, pooled = features(), BOXES[:1], (7, 7)
    fig = viz.plot_roi_pool(x, box, pooled, SCALE)
    ax = fig.axes[0]
    bins = np.array([corners(p) for p in patches(ax, "bin")])
    assert len(bins) == 7 * 7
    start = c_round(box[0, 1:3] * SCALE)
    size = np.maximum(c_round(box[0, 3:5] * SCALE) - start + 1, 1) / 7  # x, y
    assert size[0] % 1 and size[1] % 1  # edges inside cells
    for axis in (0, 1):
        edges = np.unique(np.round(bins[:, [axis, axis + 2]], 6))
        np.testing.assert_allclose(edges, start[axis] + size[axis] * np.arange(8), atol=1e-5)
    quantized = corners(patches(ax, "quantized box")[0])
    area = np.prod(quantized[2:] - quantized[:2])
    np.testing.assert_allclose(np.prod(bins[:, 2:] - bins[:, :2], axis=1).sum(), area)
    # The middle bin reads every cell it touches, floor of its start to ceil of its end, and
    # its maximum (as roi_pool's argmax says) is among them.
    lo = start + 3 * size
    cells = np.concatenate([np.floor(lo), np.ceil(lo + size)])
    (read,) = patches(ax, "bin cells")
    np.testing.assert_array_equal(corners(read), cells)
    _, argmax = cuproi.roi_pool(x[:, :1], box, pooled, SCALE, return_argmax=True)
    row, col = divmod(int(argmax[0, 0, 3, 3]), 30)
    assert cells[0] <= col < cells[2] and cells[1] <= row < cells[3]
    # One star per bin, fewer where bins share their maximum cell: the legend says so.
    stars = offsets(ax, "max cells")
    assert len(stars) == 49
    distinct = len(np.unique(argmax))
    assert distinct < 49
    (entry,) = legend_entries(fig.axes[1], "max of each bin")
    assert f"{distinct} stars for 49 bins" in entry and "share a star" in entry


def test_roi_pool_legend_counts_empty_bins():
    fig = viz.plot_roi_pool(MAP, [[600.0, 400.0, 700.0, 500.0]], 2, SCALE)
    (entry,) = legend_entries(fig.axes[1], "max of each bin")
    assert "0 stars for 0 bins" in entry and "4 empty" in entry
    assert not patches(fig.axes[0], "bin cells")  # the middle bin reads nothing


@pytest.mark.parametrize(("ratio", "aligned"), [(2, True), (3, False), (0, True), (-1, False)])
def test_roi_align_figure(ratio, aligned):
    pooled = (3, 2)
    fig = viz.plot_roi_align(features(), BOXES, pooled, SCALE, ratio, aligned, channel=2)
    ax = fig.axes[0]
    assert len(patches(ax, "bin")) == 2 * 6
    assert len(patches(ax, "exact box")) == 2
    # Every sample (the boxes lie inside the map), where torchvision puts it: bin start plus
    # (i + 0.5) / grid of the bin, grid = sampling_ratio or ceil(bin size), drawn at + 0.5.
    shift = 0.5 if aligned else 0.0
    expected = []
    for _, x1, y1, x2, y2 in BOXES:
        start = np.array([x1, y1]) * SCALE - shift
        size = np.array([x2, y2]) * SCALE - shift - start
        if not aligned:
            size = np.maximum(size, 1.0)
        bins = size / np.array(pooled[::-1])
        grid = np.full(2, ratio) if ratio > 0 else np.ceil(bins).astype(int)
        for ph, pw, i, j in itertools.product(*map(range, (*pooled, grid[1], grid[0]))):
            x = start[0] + pw * bins[0] + (j + 0.5) * bins[0] / grid[0]
            y = start[1] + ph * bins[1] + (i + 0.5) * bins[1] / grid[1]
            expected.append((x + 0.5, y + 0.5))
    drawn = offsets(ax, "samples")
    assert len(drawn) == len(expected)
    assert len(offsets(ax, "samples off the map")) == 0
    np.testing.assert_allclose(np.sort(drawn, 0), np.sort(np.array(expected), 0), atol=1e-5)


def test_roi_align_neighbours_and_weights():
    x = features()
    fig = viz.plot_roi_align(x, BOXES, 3, SCALE, 2, True, sample=(1, 2, 0, 1, 0))
    ax, zoom = fig.axes[0], fig.axes[1]
    (sx, sy) = offsets(ax, "chosen sample")[0] - 0.5  # the ops' index coordinates
    # Box 1, bin row 2, sample row 1; bin column 0, sample column 0.
    start = BOXES[1, 1:3] * SCALE - 0.5
    bins = (BOXES[1, 3:5] * SCALE - 0.5 - start) / 3
    np.testing.assert_allclose([sx, sy], start + [0.25 * bins[0], (2 + 0.75) * bins[1]], atol=1e-5)
    lines = gid_lines(ax, "neighbour")
    assert len(lines) == 4
    ends = sorted((line.get_xdata()[1] - 0.5, line.get_ydata()[1] - 0.5) for line in lines)
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    assert ends == sorted((x0 + dx, y0 + dy) for dx in (0, 1) for dy in (0, 1))
    weights = [float(t.get_text()) for t in ax.texts if t.get_gid() == "weight"]
    fx, fy = sx - x0, sy - y0
    expected = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    np.testing.assert_allclose(sorted(weights), sorted(expected), atol=0.006)  # 2 decimals
    assert zoom.get_title().startswith("RoI Align: bilinear interpolation")
    value = sum(
        w * x[0, 0, y0 + dy, x0 + dx]
        for w, (dx, dy) in zip(expected, [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True)
    )
    assert f"= {value:.3f}" in zoom.get_xlabel()


def test_roi_align_samples_off_the_map_and_at_the_edge():
    # Half of this box lies left of the map: samples left of -1 add zero and are crossed out.
    box = [[-80.0, 16.0, 48.0, 80.0]]
    fig = viz.plot_roi_align(MAP, box, 2, SCALE, 2, True, sample=(0, 0, 0, 0, 0))
    ax = fig.axes[0]
    inside, outside = offsets(ax, "samples"), offsets(ax, "samples off the map")
    assert len(inside) + len(outside) == 2 * 2 * 2 * 2 and len(outside) > 0
    assert (outside[:, 0] - 0.5 < -1).all() and (inside[:, 0] - 0.5 >= -1).all()
    assert not gid_lines(ax, "neighbour")
    assert "adds 0" in fig.axes[1].get_xlabel()
    # A sample in the band [-1, 0) is clamped to 0: all its weight on column 0 (at -0.5 here).
    fig = viz.plot_roi_align(MAP, [[-16.0, 16.0, 16.0, 64.0]], 1, SCALE, 1, True)
    weights = {t.xy: float(t.get_text()) for t in fig.axes[0].texts if t.get_gid() == "weight"}
    assert sum(w for (x, _), w in weights.items() if x == 0.5) == 1.0
    assert sum(w for (x, _), w in weights.items() if x != 0.5) == 0.0
    # Past the last cell the two taps of a row are one cell: two neighbours, not four.
    fig = viz.plot_roi_align(MAP, [[464.0, 16.0, 496.0, 64.0]], 1, SCALE, 1, True)
    lines = gid_lines(fig.axes[0], "neighbour")
    assert len(lines) == 2 and {line.get_xdata()[1] for line in lines} == {29.5}


def test_legends_list_samples_off_the_map_only_when_drawn():
    inside = viz.plot_roi_align(MAP, BOXES, 2, SCALE, 2)
    assert not offsets(inside.axes[0], "samples off the map").size
    assert not legend_entries(inside.axes[2], "off the map")
    half_out = viz.plot_roi_align(MAP, [[-80.0, 16.0, 48.0, 80.0]], 2, SCALE, 2)
    assert legend_entries(half_out.axes[2], "off the map")
    # Deformable: offsets pushing the bins of a box at the left edge off the map.
    offset = np.zeros((1, 2, 2, 2), np.float32)
    offset[:, 0] = -10.0  # 4 cells left: samples before -1
    deform = viz.plot_deform_roi_pool(MAP, [[16.0, 16.0, 80.0, 80.0]], offset, 2, SCALE)
    assert offsets(deform.axes[0], "samples off the map").size
    assert legend_entries(deform.axes[1], "off the map")
    still = viz.plot_deform_roi_pool(MAP, [[16.0, 16.0, 80.0, 80.0]], None, 2, SCALE)
    assert not legend_entries(still.axes[1], "off the map")


def test_deform_roi_pool_figure():
    pooled, gamma = (2, 3), 0.2
    offset = np.random.default_rng(1).normal(0, 1, (2, 2, *pooled)).astype(np.float32)
    fig = viz.plot_deform_roi_pool(features(), BOXES, offset, pooled, SCALE, 2, gamma)
    ax = fig.axes[0]
    assert len(patches(ax, "bin")) == len(patches(ax, "regular bin")) == 2 * 6
    assert len(offsets(ax, "samples")) == 2 * 6 * 4
    # The regular bins are a grid only: their samples (RoI Align's) would double the dots.
    assert not [c for c in ax.collections if c.get_gid() == "regular samples"]
    arrows = collection(ax, "offsets")
    assert arrows.N == 2 * 6
    # mmcv: bin (ph, pw) moves by gamma * (box width, box height) * offset[:, (0, 1), ph, pw].
    size = (BOXES[:, 3:5] - BOXES[:, 1:3]) * SCALE
    for drawn, axis in ((arrows.U, 0), (arrows.V, 1)):
        moves = gamma * size[:, axis, None, None] * offset[:, axis]
        np.testing.assert_allclose(drawn, moves.ravel(), atol=1e-5)
    # Without offsets the bins stay: arrows of length zero, bins on the regular ones.
    fig = viz.plot_deform_roi_pool(features(), BOXES, None, pooled, SCALE, 2)
    ax = fig.axes[0]
    np.testing.assert_array_equal(collection(ax, "offsets").U, 0)
    shifted = [corners(p) for p in patches(ax, "bin")]
    np.testing.assert_allclose(shifted, [corners(p) for p in patches(ax, "regular bin")])
    assert "no offset" in ax.get_title()


def test_comparison_figure():
    image = np.random.default_rng(2).random((320, 480, 3))
    x = features()
    offset = np.random.default_rng(3).normal(0, 0.5, (2, 2, 3, 3))
    fig = viz.plot_comparison(x, BOXES, 3, SCALE, 2, offset, 0.3, image=image, channel=1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("RoI Pool") and titles[1].startswith("RoI Align")
    assert titles[2].startswith("Deformable RoI Pool")
    pool, align, deform = fig.axes[:3]
    assert pool.get_xlim() == align.get_xlim() == deform.get_xlim()  # one view for the three
    for ax in (pool, align, deform):
        assert len(patches(ax, "bin")) == 2 * 9
    assert len(offsets(align, "samples")) == 2 * 9 * 4
    deformed = len(offsets(deform, "samples")) + len(offsets(deform, "samples off the map"))
    assert deformed == 2 * 9 * 4
    assert collection(deform, "offsets").N == 2 * 9
    assert any("bilinear interpolation" in t for t in titles)
    assert any("input image" in t for t in titles)
    # The pooled outputs shown are the ops' own, for the first box.
    shown = [image.get_array() for image in panel(fig, "pooled output").images]
    plane = x[:, 1:2].astype(np.float32)
    common = {"output_size": 3, "spatial_scale": SCALE, "sampling_ratio": 2}
    expected = [
        cuproi.roi_pool(plane, BOXES[:1], 3, SCALE),
        cuproi.roi_align(plane, BOXES[:1], aligned=True, **common),
        cuproi.deform_roi_pool(plane, BOXES[:1], offset[:1], gamma=0.3, **common),
    ]
    for got, want in zip(shown, expected, strict=True):
        np.testing.assert_allclose(got, want[0, 0], rtol=1e-6)
    without = viz.plot_comparison(MAP, BOXES, 3, SCALE, sample=None)
    assert not gid_lines(without.axes[1], "neighbour")


@pytest.mark.parametrize("pooled", [(7, 7), (7, 14), (14, 7)])
def test_comparison_outputs_share_one_colour_scale_and_fit_their_aspect(pooled):
    x = features()
    fig = viz.plot_comparison(x, BOXES[:1], pooled, SCALE, 2, channel=1)
    ax = panel(fig, "pooled output")
    images = ax.images
    assert len(images) == 3
    # One norm for the three thumbnails, drawn by one colour bar, spanning their values.
    norm = images[0].norm
    assert all(image.norm is norm for image in images)
    colorbar = images[-1].colorbar
    assert colorbar is not None and colorbar.norm is norm
    values = np.stack([image.get_array() for image in images])
    assert (norm.vmin, norm.vmax) == (values.min(), values.max())
    # Each thumbnail at the output's aspect, and large: at least 10% of the panel (7x14
    # outputs in a row of three filled 6% each).
    fig.draw_without_rendering()  # constrained layout and equal aspect applied
    panel_size = ax.get_position(original=True).size * fig.get_size_inches()
    for image in images:
        left, right, bottom, top = image.get_extent()
        box = ax.transData.transform([(left, top), (right, bottom)]) / fig.dpi
        width, height = np.abs(np.diff(box, axis=0))[0]
        np.testing.assert_allclose(width / height, pooled[1] / pooled[0], rtol=1e-6)
        assert width * height >= 0.1 * np.prod(panel_size)


def chosen_neighbours(fig, plane):
    """Values of the (up to) four cells around the chosen sample of a figure's first panels."""
    (chosen,) = [
        np.asarray(c.get_offsets())[0]
        for ax in fig.axes
        for c in ax.collections
        if c.get_gid() == "chosen sample"
    ][:1]
    x, y = chosen - 0.5  # the ops' index coordinates, where cell i's value sits at i
    h, w = plane.shape
    rows = {min(max(int(np.floor(y)) + d, 0), h - 1) for d in (0, 1)}
    cols = {min(max(int(np.floor(x)) + d, 0), w - 1) for d in (0, 1)}
    return np.array([plane[r, c] for r in rows for c in cols])


def test_zoomed_sample_lies_on_a_non_zero_part_of_the_map():
    # Zero features but for a patch at the bottom right of the box: the middle of the box,
    # where the zoom used to go, is empty.
    plane = np.zeros((20, 30), np.float32)
    plane[9:12, 14:18] = np.arange(1, 13).reshape(3, 4)
    box = [[40.0, 40.0, 280.0, 190.0]]
    for fig in (
        viz.plot_roi_align(plane, box, 7, SCALE, 2, True),
        viz.plot_comparison(plane, box, 7, SCALE, 2),
    ):
        assert (chosen_neighbours(fig, plane) != 0).all()
    # Nothing non-zero: the sample nearest the centre, as before.
    fig = viz.plot_roi_align(np.zeros((20, 30)), box, 7, SCALE, 2, True)
    assert "bin (3, 3)" in fig.axes[1].get_title()
    # A sample given in full is drawn as given, on zeros or not.
    fig = viz.plot_roi_align(plane, box, 7, SCALE, 2, True, sample=(0, 0, 0, 0, 0))
    assert "bin (0, 0), sample (0, 0)" in fig.axes[1].get_title()
    # Entries given are kept, the others picked: bin row 6 holds no non-zero cell below it.
    fig = viz.plot_roi_align(plane, box, 7, SCALE, 2, True, sample=(0, None, 2, None, None))
    assert ", 2), sample" in fig.axes[1].get_title()


def test_demo_wide_box_zooms_on_the_features_not_the_sky():
    # The user's case: --boxes "10,10,300,200" --output-size 7x14. The box's middle is sky,
    # whose features are zero up to rounding dust (about 1e-8).
    from cuproi import _demo

    x = _demo.features(_demo.scene(), 16)[0, _demo.SHOWN]
    box, pooled = [[10.0, 10.0, 300.0, 200.0]], (7, 14)
    offset = _demo.offsets(1, pooled)
    fig = viz.plot_comparison(x, box, pooled, 1 / 16, 2, offset, offset_source=_demo.OFFSETS)
    assert (chosen_neighbours(fig, x) > 1e-3 * x.max()).all()
    assert float(panel(fig, "bilinear interpolation").get_xlabel().rsplit("= ", 1)[1]) > 0.01
    # The demo's offsets are made up, and the titles say so.
    deform = fig.axes[2].get_title()
    suptitle = fig.texts[0].get_text()  # Figure.get_suptitle needs matplotlib 3.8
    assert "not learned" in deform and "not learned" in suptitle
    assert "learned offset" not in suptitle


def test_figures_save_as_png_and_svg(tmp_path):
    fig = viz.plot_comparison(MAP, BOXES, 2, SCALE)
    fig.savefig(tmp_path / "c.png")
    fig.savefig(tmp_path / "c.svg")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "c.svg").read_text()[:1000]


def test_drawing_into_a_given_axes():
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert viz.plot_roi_pool(MAP, BOXES, 2, SCALE, ax=axes[0]) is fig
    assert viz.plot_roi_align(MAP, BOXES, 2, SCALE, 2, ax=axes[1]) is fig
    assert viz.plot_deform_roi_pool(MAP, BOXES, None, 2, SCALE, ax=axes[2]) is fig
    assert len(fig.axes) == 3  # no new panels
    assert all(len(patches(ax, "bin")) == 8 for ax in axes)


def test_inputs():
    x = features()
    a = viz.plot_roi_pool(x[0, 2], BOXES[:, 1:], 2, SCALE)
    b = viz.plot_roi_pool(x, BOXES, 2, SCALE, channel=2)
    np.testing.assert_array_equal(offsets(a.axes[0], "max cells"), offsets(b.axes[0], "max cells"))
    one = viz.plot_roi_pool(x[0], BOXES[0, 1:].tolist(), 2, SCALE)
    assert len(patches(one.axes[0], "exact box")) == 1


POOL, ALIGN, DEFORM = viz.plot_roi_pool, viz.plot_roi_align, viz.plot_deform_roi_pool


@pytest.mark.parametrize(
    ("plot", "args", "options", "error", "match"),
    [
        (POOL, (features(), BOXES, 2, SCALE), {"channel": 3}, IndexError, "channel 3"),
        (POOL, (np.zeros((2, 1, 4, 4)), BOXES, 2), {}, ValueError, r"\(H, W\)"),
        (POOL, (np.zeros((4, 4), int), BOXES, 2), {}, TypeError, "float"),
        (POOL, (MAP, np.zeros((2, 3)), 2), {}, ValueError, r"\(K, 4\)"),
        (POOL, (MAP, BOXES, 0), {}, ValueError, "output_size"),
        (POOL, (MAP, BOXES, 2, -1.0), {}, ValueError, "spatial_scale"),
        (POOL, ((0, 30), BOXES, 2), {}, ValueError, "height and width"),
        (ALIGN, (MAP, np.zeros((0, 4)), 2), {}, ValueError, "empty"),
        (ALIGN, (MAP, BOXES, 2, SCALE, 2), {"sample": (2, 0, 0, 0, 0)}, IndexError, "sample"),
        (ALIGN, (MAP, BOXES, 2, SCALE, 2), {"sample": (0, 0, 0, 2, 0)}, IndexError, "sample"),
        (DEFORM, (MAP, BOXES, np.zeros((2, 2, 3, 3)), 2), {}, ValueError, "offset"),
    ],
)
def test_bad_arguments(plot, args, options, error, match):
    with pytest.raises(error, match=match):
        plot(*args, **options)


def test_docstring_examples():
    result = doctest.testmod(viz, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
