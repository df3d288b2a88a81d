"""The README's Python examples run as written, in order, in one namespace (examples that need
a framework or a GPU this machine lacks are left out)."""

import importlib.util
import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _runnable(code):
    for framework in ("cupy", "torch", "jax"):
        uses = re.search(rf"^(import|from) {framework}\b|cuproi\.{framework}\b", code, re.M)
        if uses and importlib.util.find_spec(framework) is None:
            return False
    if re.search(r"^import cupy", code, re.M):
        import cupy

        try:
            return cupy.cuda.runtime.getDeviceCount() > 0
        except cupy.cuda.runtime.CUDARuntimeError:
            return False
    return True


def test_readme_examples_run():
    ran, namespace = 0, {}
    for code in BLOCKS:
        if _runnable(code):
            exec(code, namespace)
            ran += 1
    assert ran >= 2
