"""`python -m scanner.selfcheck`: run every self-test of `scanner.hooks` now and print how
this process serves each private hook ("private", "public fallback: why", "refused: why").

A module of its own because `python -m scanner.hooks` would run hooks.py as a second copy
of the module the package has already imported (runpy warns about exactly that).
"""

from __future__ import annotations

import sys

from .hooks import main

if __name__ == "__main__":
    sys.exit(main())
