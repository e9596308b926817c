"""`python -m scanner.selfcheck`: run every self-test of `scanner.hooks` now and print how
this process serves each private hook ("private", "public fallback: why", "refused: why"),
then which handshake engine `--engine auto` would use here (engines.py) and how verdicts
decode DER certificates (openssl.py, `_LegacyKeys`).

A module of its own because `python -m scanner.hooks` would run hooks.py as a second copy
of the module the package has already imported (runpy warns about exactly that).
"""

from __future__ import annotations

import sys

from .engines import rustls_missing
from .hooks import UnsupportedPlatform, main


def engine_line() -> str:
    missing = rustls_missing()
    if missing is None:
        return "engine auto      rustls, OpenSSL for what it cannot speak"
    return f"engine auto      openssl ({missing})"


def keys_line() -> str:
    from .openssl import bind

    try:
        why = bind().legacy_keys_why
    except UnsupportedPlatform as exc:
        why = f"no verdicts here ({exc})"
    return f"verdict keys     {why}"


if __name__ == "__main__":
    status = main()
    print(engine_line())
    print(keys_line())
    sys.exit(status)
