"""``python -m cuproi``: the demo (default), ``info`` and ``bench``; see ``cuproi._cli``."""

import sys

from cuproi._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
