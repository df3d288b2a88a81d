"""Saved programs that call every op of cuproi.torch, loaded in a fresh process: a torch.export
program (``torch.export.save``) and an AOTInductor package load after ``import cuproi.torch``,
which defines the ``cuproi::`` ops, and give eager's values for another box count; without the
import they do not load. (Each op's cases, exported, saved and loaded in this process:
``TorchOpTester.test_exported_program_saves_and_loads``.)"""

import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cuproi.torch")


class EveryOp(torch.nn.Module):
    """Every function of cuproi.torch, with options of each kind (bools, strings, lists)."""

    def forward(self, x, scores, boxes, rotated, offset, mask):
        return [
            ct.roi_align(x, boxes, 3, 0.5, 2, True),
            ct.roi_align(x, boxes, (3, 2), 0.5, -1, False, "max"),
            ct.roi_pool(x, boxes, (3, 2), 0.5),
            ct.deform_roi_pool(x, boxes, offset, 3, 0.5, 2, 0.1),
            ct.deform_roi_pool(x, boxes, None, 3, 0.5, 0, 0.1, mask),
            ct.ps_roi_align(scores, boxes, 3, 0.5, 2),
            ct.ps_roi_pool(scores, boxes, 3, 0.5),
            ct.roi_align_rotated(x, rotated, 3, 0.5, 2, True, True),
            ct.prroi_pool(x, boxes, 3, 0.5),
            ct.multi_scale_roi_align([x, x[:, :, ::2, ::2]], boxes, 3, [0.5, 0.25], 2, True),
        ]


def inputs(k, seed=0):
    """The tensors of :class:`EveryOp` with ``k`` boxes."""
    g = torch.Generator().manual_seed(seed)
    corner, size = 20 * torch.rand(k, 2, generator=g), 1 + 8 * torch.rand(k, 2, generator=g)
    image = (torch.arange(k) % 2)[:, None]
    angle = 360 * torch.rand(k, 1, generator=g) - 180
    boxes = torch.cat([image, corner, corner + size], 1)
    rotated = torch.cat([image, corner + size / 2, size, angle], 1)
    return (
        torch.randn(2, 4, 12, 14, generator=g),
        torch.randn(2, 2 * 9, 12, 14, generator=g),  # 2 channels of 3 x 3 score maps
        boxes,
        rotated,
        torch.randn(k, 2, 3, 3, generator=g),
        torch.rand(k, 1, 3, 3, generator=g),
    )


def export():
    """EveryOp exported with a dynamic box count."""
    k = torch.export.Dim("k", min=0)
    count = {0: k}
    dims = (None, None, count, count, count, count)
    return torch.export.export(EveryOp(), inputs(5), dynamic_shapes=dims)


# Loads a saved program in a fresh process and checks it against eager's values on 7 boxes.
LOAD = """
import sys, torch
path, expected, imported, loader = sys.argv[1:]
if imported == "yes":
    import cuproi.torch
if loader == "export":
    run = torch.export.load(path).module()
else:
    run = torch._inductor.aoti_load_package(path)
args, want = torch.load(expected)
for got, value in zip(run(*args), want, strict=True):
    torch.testing.assert_close(got, value, rtol=0, atol=0)
print("loaded and equal")
"""


def load_apart(path, tmp_path, imported, loader):
    """The finished process of :data:`LOAD` on the program at ``path``."""
    args = inputs(7, seed=1)
    torch.save((args, EveryOp()(*args)), tmp_path / "expected.pt")
    command = [sys.executable, "-c", LOAD, str(path), str(tmp_path / "expected.pt"), imported]
    return subprocess.run([*command, loader], capture_output=True, text=True, timeout=300)


def test_a_saved_program_loads_after_import_cuproi_torch(tmp_path):
    torch.export.save(export(), tmp_path / "program.pt2")
    done = load_apart(tmp_path / "program.pt2", tmp_path, "yes", "export")
    assert done.returncode == 0, done.stderr
    assert "loaded and equal" in done.stdout
    done = load_apart(tmp_path / "program.pt2", tmp_path, "no", "export")
    assert done.returncode != 0
    # torch names the op it does not know; torch 2.8 reports its retry as an archive of the
    # old format instead, which has no record 'version'.
    assert "cuproi" in done.stderr or "no item named 'version'" in done.stderr


@pytest.mark.slow  # compiles C++
@pytest.mark.skipif(shutil.which("g++") is None, reason="AOTInductor compiles with g++")
def test_an_aotinductor_package_loads_after_import_cuproi_torch(tmp_path):
    """The ops are Python custom ops: the package calls them through Python, so it runs in a
    Python process that imported cuproi.torch (not in a C++-only runtime: docs/deploy.md)."""
    path = torch._inductor.aoti_compile_and_package(export(), package_path=str(tmp_path / "m.pt2"))
    done = load_apart(path, tmp_path, "yes", "aoti")
    assert done.returncode == 0, done.stderr
    assert "loaded and equal" in done.stdout
    done = load_apart(path, tmp_path, "no", "aoti")
    assert done.returncode != 0
    assert "cuproi::" in done.stderr
