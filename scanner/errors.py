"""The error taxonomy, and the one place foreign exceptions are translated.

A probe never raises to the pool: every failure becomes a `ProbeError(type, stage, message)`
that lands in the record as `error: {type, stage, message}`. The type strings are part of the
output contract (DESIGN.md, "Error types"); add new ones, never rename.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
import ssl
import traceback
from dataclasses import dataclass


class ErrorType(enum.StrEnum):
    INVALID_TARGET = "invalid_target"  # the input line could not be parsed into a target
    DNS = "dns"  # the name did not resolve (NXDOMAIN, no address, resolver failure)
    REFUSED = "refused"  # nothing listening: the peer answered the SYN with RST
    UNREACHABLE = "unreachable"  # no route to the host or network
    TIMEOUT = "timeout"  # a stage did not finish within the target's deadline
    RESET = "reset"  # the peer reset the connection (a real RST) after it was up
    CLOSED = "closed"  # the peer closed cleanly (FIN) before the handshake finished
    TLS_ALERT = "tls_alert"  # the peer refused the handshake with a TLS alert
    NOT_TLS = "not_tls"  # the peer answered with something that is not TLS
    STARTTLS = "starttls"  # the plaintext protocol before STARTTLS went wrong
    TLS_ERROR = "tls_error"  # any other TLS failure (no shared cipher or version, bad message)
    INTERNAL = "internal"  # a bug in certscan; never a network failure


class Stage(enum.StrEnum):
    TARGET = "target"  # parsing the input line
    RESOLVE = "resolve"
    CONNECT = "connect"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    CERTIFICATE = "certificate"  # reading the chain out of a finished handshake
    SCAN = "scan"  # outside any single stage (the pool's own bookkeeping)


@dataclass(frozen=True, slots=True)
class ProbeError(Exception):
    """A failure with the context a record needs; raised inside a probe, caught at its edge."""

    type: ErrorType
    stage: Stage
    message: str

    def __str__(self) -> str:
        return f"{self.type} at {self.stage}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"type": str(self.type), "stage": str(self.stage), "message": self.message}


# OpenSSL reasons that mean "the bytes that came back are not TLS at all": plain HTTP, SSH
# banners, random garbage all fail the record-layer checks first.
_NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_TOO_LARGE",
        "ENCRYPTED_LENGTH_TOO_LONG",
        "WRONG_SSL_VERSION",
        "UNEXPECTED_RECORD",
    }
)

# Alerts arrive as SSLV3_ALERT_*, TLSV1_ALERT_*, TLSV13_ALERT_* and also as bare names with no
# "ALERT" in them (DESIGN.md, "Decisions already measured"), so we match on the reason.
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")
_BARE_ALERT_REASONS = frozenset(
    {
        "TLSV1_UNRECOGNIZED_NAME",
        "TLSV1_BAD_CERTIFICATE_STATUS_RESPONSE",
        "TLSV1_BAD_CERTIFICATE_HASH_VALUE",
        "TLSV1_CERTIFICATE_UNOBTAINABLE",
        "TLSV1_UNSUPPORTED_EXTENSION",
    }
)

_REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED})
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    # Some paths (uvloop's SSL protocol among them) only keep the text.
    text = str(exc)
    if "[" in text and "]" in text:
        return text[text.rfind("[") + 1 : text.rfind("]")].split(":", maxsplit=1)[0].strip().upper()
    return ""


def classify_tls(exc: ssl.SSLError, stage: Stage) -> ProbeError:
    """Translate an SSL failure; kept public for the alert name mapping tests."""
    reason = _ssl_reason(exc)
    message = f"{reason}: {exc}" if reason and reason not in str(exc) else str(exc)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return ProbeError(ErrorType.CLOSED, stage, message or "peer closed the connection")
    if reason.startswith(_ALERT_PREFIXES) or reason in _BARE_ALERT_REASONS:
        return ProbeError(ErrorType.TLS_ALERT, stage, message)
    if reason in _NOT_TLS_REASONS:
        return ProbeError(ErrorType.NOT_TLS, stage, message)
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return ProbeError(ErrorType.CLOSED, stage, message)
    return ProbeError(ErrorType.TLS_ERROR, stage, message)


def classify(exc: BaseException, stage: Stage) -> ProbeError:
    """Map any exception raised inside a probe stage to the taxonomy.

    Never called with CancelledError: cancellation is the caller's business and propagates.
    Anything not recognised is INTERNAL, with the traceback, so a bug is never reported as a
    flaky network.
    """
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ProbeError(ErrorType.TIMEOUT, stage, f"no answer within the deadline ({stage})")
    if isinstance(exc, socket.gaierror):
        return ProbeError(ErrorType.DNS, Stage.RESOLVE, exc.strerror or str(exc))
    if isinstance(exc, ssl.SSLError):
        return classify_tls(exc, stage)
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS
    ):
        return ProbeError(ErrorType.REFUSED, stage, exc.strerror or "connection refused")
    if isinstance(exc, ConnectionResetError) and exc.errno is None:
        # asyncio's SSL streams report a FIN during the handshake as a bare
        # ConnectionResetError without errno; a real RST carries ECONNRESET.
        return ProbeError(ErrorType.CLOSED, stage, str(exc) or "peer closed the connection")
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return ProbeError(ErrorType.RESET, stage, exc.strerror or "connection reset by peer")
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return ProbeError(ErrorType.UNREACHABLE, stage, exc.strerror or str(exc))
    if isinstance(exc, asyncio.IncompleteReadError | EOFError | BrokenPipeError):
        return ProbeError(ErrorType.CLOSED, stage, str(exc) or "peer closed the connection")
    return internal(exc, stage)


def internal(exc: BaseException, stage: Stage) -> ProbeError:
    """A bug in certscan: keep the whole traceback for the report."""
    trace = "".join(traceback.format_exception(exc)).strip()
    return ProbeError(ErrorType.INTERNAL, stage, trace)
