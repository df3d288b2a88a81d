"""The README's Python examples run as written, in order, in one namespace (examples that need
a framework, matplotlib or a GPU this machine lacks are left out)."""

import importlib.util
import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# Names the README binds to an adapter (``import cuproi.torch as ct``): a block that uses one
# needs that adapter's framework, though it does not import it again.
ALIASES = dict(re.findall(r"^import cuproi\.(torch|jax) as (\w+)", README, re.M))


def _runnable(code):
    for framework in ("cupy", "torch", "jax"):
        alias = rf"|\b{ALIASES[framework]}\." if framework in ALIASES else ""
        pattern = rf"^(import|from) {framework}\b|cuproi\.{framework}\b{alias}"
        if re.search(pattern, code, re.M) and importlib.util.find_spec(framework) is None:
            return False
    # cuproi.viz draws with matplotlib (the test extra has it; an environment may not).
    if re.search(r"\bviz\b", code) and importlib.util.find_spec("matplotlib") is None:
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
