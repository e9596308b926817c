"""Milliseconds per ``verify_chain`` call: DER bytes vs the handshake's ``_ssl.Certificate``s.

    python bench/verify_speed.py                       # the fleet's leaf-0 (made if missing)
    python bench/verify_speed.py --calls 5000 --reps 7
    python bench/verify_speed.py --cert C.pem --key K.pem --ca CA.pem --name host

The chain is what a server sends (leaf first, then any intermediates in --cert). The
Certificate objects come from a real in-memory handshake (ssl.MemoryBIO) with a server
serving --cert/--key, as the scanner's probe gets them: ``_sslobj.get_unverified_chain()``.
DER is timed two ways: decoded at every call (a store without a decode cache: what a new
leaf costs) and from the store's cache (a repeat), and the decoded one again with plain
``d2i_X509`` keys (without ``scanner.openssl._LegacyKeys``, which OpenSSL 3.0/3.1 use).
Also printed, for scale: decoding the leaf alone both ways, and ``X509_verify`` of the leaf
by its issuer's key (the signature check, a floor no verification gets under). Best of
--reps runs of --calls calls each; a number, not a test.
"""

from __future__ import annotations

import _ssl
import argparse
import contextlib
import ctypes
import dataclasses
import os
import platform
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from scanner import hooks, openssl  # noqa: E402
from scanner.verify import TrustStore, verify_chain  # noqa: E402

FLEET = HERE / "out" / "fleet"


def fleet_files() -> tuple[Path, Path, Path, str]:
    """leaf-0 of the benchmark fleet: ECDSA P-256, SAN = IP 127.88.1.1, signed by the CA."""
    cert, key = FLEET / "leaves" / "leaf-0.pem", FLEET / "leaves" / "leaf-0.key"
    if not (cert.exists() and key.exists() and (FLEET / "ca.pem").exists()):
        sys.path.insert(0, str(HERE))
        import fleet  # needs cryptography; only to make the files once

        fleet.build_fleet(1)
    return cert, key, FLEET / "ca.pem", "127.88.1.1"


def handshake_chain(cert: Path, key: Path, name: str) -> list[_ssl.Certificate]:
    """The server's chain as ``_ssl.Certificate`` objects, from an in-memory handshake."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        c_in.write(s_out.read())
    else:
        raise RuntimeError("in-memory handshake did not finish")
    certs: list[_ssl.Certificate] = client._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return certs


def per_call(fn: Callable[[], object], calls: int, reps: int) -> float:
    """Best-of-reps milliseconds per call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cert", type=Path, help="server chain PEM (leaf first)")
    parser.add_argument("--key", type=Path, help="server key PEM")
    parser.add_argument("--ca", type=Path, help="trust store bundle for verify_chain")
    parser.add_argument("--name", help="server name to verify")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.cert is None:
        cert, key, ca, name = fleet_files()
    else:
        if None in (args.key, args.ca, args.name):
            parser.error("--cert needs --key, --ca and --name")
        cert, key, ca, name = args.cert, args.key, args.ca, args.name

    certs = handshake_chain(cert, key, name)
    ders = [c.public_bytes(_ssl.ENCODING_DER) for c in certs]
    store = TrustStore.load(str(ca))
    uncached = TrustStore.load(str(ca), decode_cache=0)  # every DER certificate decoded
    bound = openssl.bind()
    plain = dataclasses.replace(bound, legacy_keys=None)
    try:
        from_der = verify_chain(ders, store, server_name=name)
        from_certs = verify_chain(certs, store, server_name=name)
        assert from_der == from_certs, (from_der, from_certs)
        verify_chain(certs, store, server_name=name)  # settles the lending self-test
        lent = hooks._LAYOUT.get("ok")
        print(f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, pid {os.getpid()}")
        print(f"chain: {len(ders)} certificate(s) from {cert}, name {name!r}: "
              f"trusted={from_der.trusted} reason={from_der.reason}")
        print(f"Certificate objects lend their X509: {lent}")
        print(f"DER certificates' keys: {bound.legacy_keys_why}")
        der_ms = per_call(lambda: verify_chain(ders, uncached, server_name=name),
                          args.calls, args.reps)
        cached_ms = per_call(lambda: verify_chain(ders, store, server_name=name),
                             args.calls, args.reps)
        obj_ms = per_call(lambda: verify_chain(certs, store, server_name=name),
                          args.calls, args.reps)
        print(f"verify_chain, DER bytes (decoded):  {der_ms:7.3f} ms/call   (a new leaf)")
        with contextlib.ExitStack() as stack:
            stack.callback(setattr, openssl, "bind", openssl.bind)
            openssl.bind = lambda: plain  # type: ignore[assignment]
            plain_ms = per_call(lambda: verify_chain(ders, uncached, server_name=name),
                                args.calls, args.reps)
        print(f"  the same, plain d2i_X509 keys:    {plain_ms:7.3f} ms/call")
        print(f"verify_chain, DER bytes (cached):   {cached_ms:7.3f} ms/call   (a repeat)")
        print(f"verify_chain, _ssl.Certificate:     {obj_ms:7.3f} ms/call")
        lib = bound.crypto

        def d2i() -> None:
            lib.X509_free(openssl.decode(lib, ders[0], 0))

        def plain_d2i() -> None:
            cursor = ctypes.c_char_p(ders[0])
            lib.X509_free(lib.d2i_X509(None, ctypes.byref(cursor), len(ders[0])))

        print(f"  for scale: decoding the leaf:     {per_call(d2i, args.calls, args.reps):7.3f}"
              " ms")
        print(f"  for scale: plain d2i_X509:        "
              f"{per_call(plain_d2i, args.calls, args.reps):7.3f} ms")
        print(f"  for scale: leaf signature check:  {signature_ms(lib, ders, ca, args):7.3f} ms")
    finally:
        store.close()
        uncached.close()


def signature_ms(lib: ctypes.CDLL, ders: list[bytes], ca: Path, args: argparse.Namespace
                 ) -> float:
    """X509_verify(leaf, issuer key): the issuer is the next certificate sent, else the CA."""
    issuer_der = ders[1] if len(ders) > 1 else ssl.PEM_cert_to_DER_cert(ca.read_text())
    get_key, check = lib.X509_get0_pubkey, lib.X509_verify
    get_key.restype, get_key.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
    check.restype, check.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_void_p)
    x509s = []
    for der in (ders[0], issuer_der):
        cursor = ctypes.c_char_p(der)
        x509s.append(lib.d2i_X509(None, ctypes.byref(cursor), len(der)))
    try:
        public_key = get_key(x509s[1])
        return per_call(lambda: check(x509s[0], public_key), args.calls, args.reps)
    finally:
        for x in x509s:
            lib.X509_free(x)


if __name__ == "__main__":
    main()
