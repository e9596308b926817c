"""The only place SSLContexts are built. Every option has its reason beside it."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Sequence

# OpenSSL's SSL_OP_LEGACY_SERVER_CONNECT; `ssl` names it only from Python 3.12 on.
_OP_LEGACY_SERVER_CONNECT = getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0x4)

# Every cipher OpenSSL has, at security level 0 so that RC4/3DES/export-grade servers and
# small keys still complete a handshake. Anonymous suites are left out: they carry no
# certificate, and a server that offers one next to an authenticated suite must not be
# tempted into the one that tells us nothing.
_CAPTURE_CIPHERS = "ALL:COMPLEMENTOFDEFAULT:!aNULL:!eNULL:@SECLEVEL=0"


def capture_context(alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context that completes a handshake with any server an inventory meets.

    It does not judge: the certificate is captured whatever it is, and verify.py gives the
    verdict afterwards from the captured chain (a verifying handshake would abort on a bad
    certificate and lose it: docs/architecture.md, "Verdicts"). Built once per scan and
    shared by every probe.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Capture, don't verify: the verdict comes from verify.py on the same chain.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # OpenSSL 3 refuses TLS 1.0/1.1 by default; an inventory must still see those servers.
    # (SSLv3 is not compiled into current OpenSSL builds; TLSv1 is the floor we can offer.)
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0; reaching such servers is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(_CAPTURE_CIPHERS)
    # Servers that never implemented RFC 5746 secure renegotiation are refused outright by
    # OpenSSL 3 ("unsafe legacy renegotiation disabled"); we only read their certificate.
    ctx.options |= _OP_LEGACY_SERVER_CONNECT
    # Each target is a fresh full handshake: no session tickets to store or offer.
    ctx.options |= ssl.OP_NO_TICKET
    if alpn:
        # Offering ALPN makes `tls.alpn` meaningful (what the endpoint would speak).
        ctx.set_alpn_protocols(list(alpn))
    return ctx



def rustls_context(alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """capture_context's settings for the rustls engine (rtls: rustls behind the `ssl`
    module's API; its SSLContext subclasses ssl.SSLContext). ImportError without rtls.

    What rustls cannot do, it does not pretend to: TLS 1.2 is its floor (no 1.0/1.1), its
    suites are the ECDHE-AEAD ones (no CBC, no static RSA, no DHE), and OP_NO_TICKET is
    moot (a fresh rustls config per connection resumes nothing). Servers that need more
    are the OpenSSL engine's (engines.py, the fallback).
    """
    import rtls

    ctx: ssl.SSLContext = rtls.SSLContext(rtls.PROTOCOL_TLS_CLIENT)
    # Capture, don't verify, as capture_context. (Under CERT_NONE rustls also skips the
    # server's handshake signature; OpenSSL checks it. The verdict judges the chain.)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
