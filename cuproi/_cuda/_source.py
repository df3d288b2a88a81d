"""Where the CUDA sources are, and their text with the local includes inlined.

CuPy's on-disk kernel cache is keyed by the source string, not by the headers it includes, so a
header edit would keep loading a stale binary. Inlining every quoted include (paths relative to
kernels/) makes the string CuPy hashes exactly what gets compiled; #line markers keep compiler
messages pointing at the real files.
"""

import functools
import os
import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")


@functools.cache
def kernels_dir() -> Path:
    """The kernels/ folder.

    $CUPROI_KERNELS_DIR if set, else inside the installed package (wheel), else at the top of
    the source checkout.
    """
    package = Path(__file__).resolve().parent.parent
    candidates = [package / "kernels", package.parent / "kernels"]
    if os.environ.get("CUPROI_KERNELS_DIR"):
        candidates.insert(0, Path(os.environ["CUPROI_KERNELS_DIR"]))
    for folder in candidates:
        if (folder / "roi_align.cu").is_file():
            return folder
    raise FileNotFoundError(
        "cuproi cannot find its CUDA sources (kernels/*.cu); looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Reinstall cuproi or set CUPROI_KERNELS_DIR to the kernels folder."
    )


@functools.cache
def source(name: str) -> str:
    """Text of kernels/<name>.cu with every quoted include inlined once."""
    root = kernels_dir()
    done = set()

    def expand(relative: str) -> list[str]:
        if relative in done:  # each file once: the inliner does what #pragma once would
            return []
        done.add(relative)
        lines = [f'#line 1 "{relative}"']
        for number, line in enumerate((root / relative).read_text().splitlines(), start=1):
            match = _INCLUDE.match(line)
            if match:
                lines += expand(match.group(1))
                lines.append(f'#line {number + 1} "{relative}"')
            elif _PRAGMA_ONCE.match(line):
                lines.append("")
            else:
                lines.append(line)
        return lines

    return "\n".join(expand(f"{name}.cu")) + "\n"
