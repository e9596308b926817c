"""The one place foreign exceptions are translated into the taxonomy (values.Failure).

A probe never raises to the engine: every exception met in a stage becomes a
`Failure(type, stage, message)` here, at the probe's edge, and lands in the record as
`error: {type, stage, message}` (docs/architecture.md, "Errors").
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import traceback

from .starttls import UpgradeError
from .values import ErrorType, Failure, Stage

__all__ = ["ErrorType", "Failed", "Failure", "Stage", "classify", "classify_tls", "internal"]


class Failed(Exception):
    """Raised inside a probe for a failure certscan itself decides (an overloaded scanner, a
    server that sent no certificate): carries the Failure the record will hold."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


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
# "ALERT" in them (seen under asyncio and uvloop alike), so we match on the reason.
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


# rustls's alert names (its Debug spelling) -> the OpenSSL reasons records have always
# carried for the same alert, so that a record reads the same whichever engine met it.
_RUSTLS_ALERTS = {
    "HandshakeFailure": "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "IllegalParameter": "SSLV3_ALERT_ILLEGAL_PARAMETER",
    "BadCertificate": "SSLV3_ALERT_BAD_CERTIFICATE",
    "UnexpectedMessage": "SSLV3_ALERT_UNEXPECTED_MESSAGE",
    "UnrecognisedName": "TLSV1_UNRECOGNIZED_NAME",
}
_RUSTLS_ALERT = "received fatal alert: "
# "received corrupt message of type KIND" -> what OpenSSL says of the same bytes.
_RUSTLS_CORRUPT = {
    "InvalidContentType": ("WRONG_VERSION_NUMBER", ErrorType.NOT_TLS),  # not TLS records
    "HandshakePayloadTooLarge": ("EXCESSIVE_MESSAGE_SIZE", ErrorType.TLS_ERROR),
}


def _rustls_failure(exc: ssl.SSLError, stage: Stage) -> Failure:
    """An rtls (rustls) error: its text is rustls's own ("received fatal alert:
    HandshakeFailure", "received corrupt message of type InvalidContentType", "peer is
    incompatible: ..."); alerts get the OpenSSL reason OpenSSL would have given."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if text.startswith(_RUSTLS_ALERT):
        name = text.removeprefix(_RUSTLS_ALERT)
        reason = _RUSTLS_ALERTS.get(name) or "TLSV1_ALERT_" + "".join(
            f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()
        return Failure(ErrorType.TLS_ALERT, stage, f"{reason}: {text} (rustls)")
    kind = text.rsplit(" ", 1)[-1]
    if text.startswith("received corrupt message") and kind in _RUSTLS_CORRUPT:
        reason, error = _RUSTLS_CORRUPT[kind]
        return Failure(error, stage, f"{reason}: {text} (rustls)")
    return Failure(ErrorType.TLS_ERROR, stage, f"{text} (rustls)")


def classify_tls(exc: ssl.SSLError, stage: Stage) -> Failure:
    """Translate an SSL failure; kept public for the alert name mapping tests."""
    if getattr(exc, "library", None) == "rtls":
        return _rustls_failure(exc, stage)
    reason = _ssl_reason(exc)
    message = f"{reason}: {exc}" if reason and reason not in str(exc) else str(exc)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Failure(ErrorType.CLOSED, stage, message or "peer closed the connection")
    if reason.startswith(_ALERT_PREFIXES) or reason in _BARE_ALERT_REASONS:
        return Failure(ErrorType.TLS_ALERT, stage, message)
    if reason in _NOT_TLS_REASONS:
        return Failure(ErrorType.NOT_TLS, stage, message)
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return Failure(ErrorType.CLOSED, stage, message)
    return Failure(ErrorType.TLS_ERROR, stage, message)


def classify(exc: BaseException, stage: Stage) -> Failure:
    """Map any exception raised inside a probe stage to the taxonomy.

    Never called with CancelledError: cancellation is the caller's business and propagates.
    Anything not recognised is INTERNAL, with the traceback, so a bug is never reported as a
    flaky network.
    """
    if isinstance(exc, Failed):
        return exc.failure
    if isinstance(exc, UpgradeError):  # the server would not upgrade, in its own words
        return Failure(ErrorType.STARTTLS, Stage.STARTTLS, str(exc))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Failure(ErrorType.TIMEOUT, stage, f"no answer within the deadline ({stage})")
    if isinstance(exc, socket.gaierror):
        return Failure(ErrorType.DNS, Stage.RESOLVE, exc.strerror or str(exc))
    if isinstance(exc, ssl.SSLError):
        return classify_tls(exc, stage)
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS
    ):
        return Failure(ErrorType.REFUSED, stage, exc.strerror or "connection refused")
    if isinstance(exc, ConnectionResetError) and exc.errno is None:
        # asyncio's SSL streams report a FIN during the handshake as a bare
        # ConnectionResetError without errno; a real RST carries ECONNRESET.
        return Failure(ErrorType.CLOSED, stage, str(exc) or "peer closed the connection")
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return Failure(ErrorType.RESET, stage, exc.strerror or "connection reset by peer")
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return Failure(ErrorType.UNREACHABLE, stage, exc.strerror or str(exc))
    if isinstance(exc, asyncio.IncompleteReadError | EOFError | BrokenPipeError):
        return Failure(ErrorType.CLOSED, stage, str(exc) or "peer closed the connection")
    return internal(exc, stage)


def internal(exc: BaseException, stage: Stage) -> Failure:
    """A bug in certscan: keep the whole traceback for the report."""
    trace = "".join(traceback.format_exception(exc)).strip()
    return Failure(ErrorType.INTERNAL, stage, trace)
