"""Handshake engines: who speaks TLS for a probe, OpenSSL (the stdlib's `_ssl`) or rustls.

The probe (probe.py) drives a TLS object over memory BIOs and never cares which library
is behind it: an engine makes that object (`wrap`) and reads the chain out of it when the
handshake is done (`chain`). Both raise what `ssl` raises (SSLWantReadError to wait for
bytes, SSLError subclasses for failures), and errors.classify reads either.

- `openssl`: the interpreter's own `_ssl` on the system's OpenSSL (hooks.wrap_bio; the
  chain as sent with the handshake's decoded certificates, which the verdict borrows).
  It speaks everything an inventory meets: TLS 1.0 to 1.3, CBC, static RSA, DHE.
- `rustls`: rtls (rustls behind the `ssl` API, an optional dependency). About a quarter
  of OpenSSL 3.0's client CPU per handshake (bench/engines.py), but TLS 1.2 and 1.3 with
  ECDHE-AEAD suites only, and it refuses some server names OpenSSL sends as they are.
  The chain comes as DER only.

`auto` (the default) is rustls where rtls imports, with OpenSSL as the fallback: a server
rustls cannot speak to is tried again with OpenSSL in the same deadline (`falls_back`),
which costs that server one more connection and no other server anything.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import hooks
from .tls import capture_context, rustls_context
from .values import ErrorType, Failure, Stage

if TYPE_CHECKING:
    from .hooks import NativeCertificate

EngineName = Literal["auto", "openssl", "rustls"]


class Engine(Protocol):
    name: str

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
             server_hostname: str) -> Any:
        """A client TLS object over the two BIOs. ssl.SSLError when this engine cannot
        take `server_hostname` (the probe then uses the fallback engine, if any)."""
        ...

    def chain(self, tls: Any) -> tuple[tuple[bytes, ...], tuple[NativeCertificate, ...]]:
        """The certificates as the server sent them, leaf first: DER, and the decoded
        objects the verdict may borrow (empty where only DER can be had)."""
        ...


class OpenSSLEngine:
    name = "openssl"

    def __init__(self, alpn: Sequence[str]) -> None:
        self._context = capture_context(alpn)

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
             server_hostname: str) -> Any:
        return hooks.wrap_bio(self._context, incoming, outgoing, server_hostname)

    def chain(self, tls: Any) -> tuple[tuple[bytes, ...], tuple[NativeCertificate, ...]]:
        return hooks.unverified_chain(tls)


class RustlsEngine:
    name = "rustls"

    def __init__(self, alpn: Sequence[str]) -> None:
        self._context = rustls_context(alpn)

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
             server_hostname: str) -> Any:
        return hooks.rustls_wrap(self._context, incoming, outgoing, server_hostname)

    def chain(self, tls: Any) -> tuple[tuple[bytes, ...], tuple[NativeCertificate, ...]]:
        return tls.chain(), ()


@functools.cache
def rustls_missing() -> str | None:
    """Why the rustls engine cannot run here (None: it can): rtls must import and make a
    ClientHello.

    That hello is also the process's first random draw from aws-lc, rustls's crypto, which
    seeds its generator from CPU jitter: ~30 ms of CPU, once per process. Made here, it is
    made before lanes.fork_workers forks, and a worker only reseeds (~14 ms) instead."""
    try:
        context = rustls_context()
        outgoing = ssl.MemoryBIO()
        tls = hooks.rustls_wrap(context, ssl.MemoryBIO(), outgoing, "localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        if not outgoing.pending:
            return "rtls does not work here: it made no ClientHello"
    except ImportError as exc:
        return f"rtls is not installed ({exc}); pip install 'certscan[rustls]'"
    except Exception as exc:  # a broken build: say so, and scan with OpenSSL
        return f"rtls does not work here: {type(exc).__name__}: {exc}"
    return None


def engines(choice: EngineName, alpn: Sequence[str]) -> tuple[Engine, Engine | None]:
    """The engine to try first and its fallback (None: no second try), for a choice.
    ValueError when the choice cannot be had (rustls asked for, and missing)."""
    if choice == "openssl":
        return OpenSSLEngine(alpn), None
    if choice == "rustls":
        missing = rustls_missing()
        if missing is not None:
            raise ValueError(missing)
        return RustlsEngine(alpn), None
    if rustls_missing() is not None:
        return OpenSSLEngine(alpn), None
    return RustlsEngine(alpn), OpenSSLEngine(alpn)


# Alerts that say "not with this client": a server that can speak only what rustls does
# not (TLS 1.0/1.1, CBC, static RSA, DHE, other groups) answers the ClientHello with one.
_CANNOT_NEGOTIATE = ("HANDSHAKE_FAILURE", "PROTOCOL_VERSION", "INSUFFICIENT_SECURITY",
                     "ILLEGAL_PARAMETER", "DECODE_ERROR", "INTERNAL_ERROR")


def falls_back(failure: Failure) -> bool:
    """Whether a failure of the rustls engine is worth one try with OpenSSL: the server
    refused rustls's offer (an alert of the kinds above), rustls refused the server (its
    own errors: no common suite or version, a message it will not parse), or the server
    hung up or reset on the (larger, post-quantum) ClientHello. Not: a connection that
    never came, a timeout, bytes that are not TLS, an unrecognized name (OpenSSL would
    get the same), a STARTTLS dance that failed before TLS began."""
    if failure.stage is not Stage.HANDSHAKE:
        return False
    if failure.type in (ErrorType.CLOSED, ErrorType.RESET, ErrorType.TLS_ERROR):
        return True
    return failure.type is ErrorType.TLS_ALERT and any(
        kind in failure.message for kind in _CANNOT_NEGOTIATE)
