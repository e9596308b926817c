"""TLS engines for the probe, side by side: stdlib ssl, rtls (rustls) and pyOpenSSL.

    python bench/engines.py --handshakes 500 --runs 3   # client CPU per handshake and verdict
    python bench/engines.py --cases                     # what each engine makes of odd servers

Needs cryptography (to mint the certificates) and the `openssl` command (RSA-512/768 keys,
DH parameters); rtls and pyOpenSSL are used where installed, in a venv of their own
(`python3 -m venv V && V/bin/pip install -e . rtls pyopenssl`: pyOpenSSL 26.4 pins
cryptography < 51, so it is not for the project's own venv).

The servers are Python ssl servers (system OpenSSL, SECLEVEL=0 where a case needs it; blocking
sockets, a thread per connection, so a failing server sends its alert as real ones do) and
raw TCP peers, all on 127.0.0.1 in a child process: the client's CPU is counted apart,
`time.process_time` in this process only.

Speed (default): sequential handshakes, one at a time, over a blocking socket and memory BIOs
as the probe drives them: ClientHello out, the server's flight in, done when the client has
the server's Finished (in TLS 1.3 our own Finished is not sent, as in scanner/probe.py).
The server sends an ECDSA P-256 leaf and its intermediate, TLS 1.3, and the client does not
verify. Columns, in microseconds of this process's CPU per handshake (median of --runs runs,
[min-max]): "engine" is the TLS object's own work (wrap_bio, every do_handshake, version,
cipher, ALPN), "of which hello" its part up to the ClientHello (wrap_bio and the first
do_handshake); "chain" is getting the chain as DER; "total" also counts the socket calls and
the loop. Runs are interleaved across engines. Then rustls's ClientHello alone, as TLS 1.3
makes it (two key shares, generated per connection) and as a TLS 1.2-only client does (no
key share). Then verdicts of the same 2-certificate chain,
per call: certscan's verify_chain given DER, given the handshake's own _ssl.Certificate
objects and given both (the leaf as DER), pyOpenSSL's X509StoreContext and cryptography's
x509.verification.

Cases (--cases): one handshake per engine against each odd server: what it returns or raises
(exception class, `.reason`, message), and the API facts (SNI sent, ALPN, chain as sent).
"""

from __future__ import annotations

import _ssl
import argparse
import contextlib
import datetime as dt
import functools
import ipaddress
import json
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import (  # noqa: E402
    dsa,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from scanner import hooks  # noqa: E402
from scanner.tls import capture_context, rustls_context  # noqa: E402

try:
    import rtls
except ImportError:  # optional: its columns are left out
    rtls = None
try:
    from OpenSSL import SSL as OSSL
    from OpenSSL import crypto as OCRYPTO
except ImportError:  # optional: its columns are left out
    OSSL = OCRYPTO = None

NAME = "bench.example"  # the SAN of the speed leaf (with 127.0.0.1)
HOST = "127.0.0.1"
ALPN = ("h2", "http/1.1")
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


# -- certificates -------------------------------------------------------------------------

def _key(kind: str) -> Any:
    if kind in ("rsa512", "rsa768"):  # cryptography makes none under 1024 bits: openssl does
        made = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                               f"rsa_keygen_bits:{kind[3:]}"], check=True, capture_output=True)
        return serialization.load_pem_private_key(made.stdout, password=None)
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind.startswith("dsa"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dsa.generate_private_key(key_size=int(kind[3:]))
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    if kind in curves:
        return ec.generate_private_key(curves[kind]())
    return {"ed25519": ed25519.Ed25519PrivateKey, "ed448": ed448.Ed448PrivateKey}[kind].generate()


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def issue(cn: str, issuer: Issued | None = None, *, kind: str = "p256", ca: bool = False,
          sans: tuple[str, ...] = (NAME, HOST), days: tuple[int, int] = (-10, 30),
          digest: hashes.HashAlgorithm | None = None) -> Issued:
    """A certificate for `cn` signed by `issuer` (self-signed when None)."""
    key = _key(kind)
    signer = issuer.key if issuer else key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + days[0] * DAY)
        .not_valid_after(NOW + days[1] * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return Issued(builder.sign(signer, None), key)
    cert = builder.sign(signer, hashes.SHA256())
    if isinstance(digest, hashes.SHA1):
        cert = _resign_sha1(cert, signer)
    return Issued(cert, key)


_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSAEncryption
_SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")  # sha1WithRSAEncryption


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _resign_sha1(cert: x509.Certificate, signer: rsa.RSAPrivateKey) -> x509.Certificate:
    """cryptography no longer signs certificates with SHA-1: swap the OID in the TBS (same
    length) and sign it by hand (as tests/pki.py does)."""
    tbs = cert.tbs_certificate_bytes.replace(_SHA256_RSA, _SHA1_RSA, 1)
    signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    body = tbs + _SHA1_RSA + _der(0x03, b"\x00" + signature)
    return x509.load_der_x509_certificate(_der(0x30, body))


def pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def key_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# -- the servers (a child process) ----------------------------------------------------------

# Each case: how its server is set up. "chain" names certificates minted by `mint_cases`,
# leaf first, as the server sends them. "raw" cases are plain TCP peers.
CASES: dict[str, dict[str, Any]] = {
    "ok-tls13": {"chain": ["leaf", "inter"], "alpn": ["http/1.1"],
                 "why": "ECDSA P-256 leaf + intermediate, TLS 1.3, ALPN http/1.1"},
    "ok-tls12": {"chain": ["leaf", "inter"], "max": "TLSv1_2",
                 "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256", "why": "TLS 1.2 ECDHE-ECDSA GCM"},
    "misordered": {"chain": ["leaf", "root", "inter", "inter"],
                   "why": "leaf, root, intermediate, intermediate again"},
    "self-signed": {"chain": ["selfsigned"], "why": "self-signed leaf"},
    "expired": {"chain": ["expired", "inter"], "why": "leaf expired 10 days ago"},
    "wrong-name": {"chain": ["wrongname", "inter"], "why": "SAN other.example only"},
    "tls10": {"chain": ["leaf", "inter"], "min": "TLSv1", "max": "TLSv1", "sec0": True,
              "why": "TLS 1.0 only"},
    "tls11": {"chain": ["leaf", "inter"], "min": "TLSv1_1", "max": "TLSv1_1", "sec0": True,
              "why": "TLS 1.1 only"},
    "cbc12": {"chain": ["leaf", "inter"], "max": "TLSv1_2", "sec0": True,
              "ciphers": "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA",
              "why": "TLS 1.2, ECDHE-ECDSA CBC suites only"},
    "krsa12": {"chain": ["rsa2048", "inter"], "max": "TLSv1_2", "sec0": True,
               "ciphers": "AES128-GCM-SHA256:AES128-SHA", "why": "TLS 1.2, static RSA only"},
    "dhe12": {"chain": ["rsa2048", "inter"], "max": "TLSv1_2",
              "ciphers": "DHE-RSA-AES128-GCM-SHA256", "why": "TLS 1.2, DHE-RSA only"},
    "p521-kx": {"chain": ["leaf", "inter"], "curve": "secp521r1",
                "why": "TLS 1.3, key exchange group secp521r1 only"},
    "rsa1024-13": {"chain": ["rsa1024", "inter"], "sec0": True, "why": "RSA-1024 leaf, TLS 1.3"},
    "rsa1024-12": {"chain": ["rsa1024", "inter"], "sec0": True, "max": "TLSv1_2",
                   "ciphers": "ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
                   "why": "RSA-1024 leaf, TLS 1.2 ECDHE-RSA"},
    "rsa768-13": {"chain": ["rsa768", "inter"], "sec0": True, "why": "RSA-768 leaf, TLS 1.3"},
    "rsa512-12": {"chain": ["rsa512", "inter"], "sec0": True, "max": "TLSv1_2",
                  "ciphers": "ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
                  "why": "RSA-512 leaf, TLS 1.2 ECDHE-RSA"},
    "sha1-leaf": {"chain": ["sha1", "inter"], "sec0": True,
                  "why": "RSA-2048 leaf signed with SHA-1"},
    "rsa4096": {"chain": ["rsa4096", "inter"], "why": "RSA-4096 leaf"},
    "p384": {"chain": ["p384", "inter"], "why": "ECDSA P-384 leaf"},
    "p521": {"chain": ["p521", "inter"], "why": "ECDSA P-521 leaf"},
    "ed25519": {"chain": ["ed25519", "inter"], "why": "Ed25519 leaf"},
    "ed448": {"chain": ["ed448", "inter"], "why": "Ed448 leaf"},
    "dsa": {"chain": ["dsa", "inter"], "sec0": True, "max": "TLSv1_2",
            "ciphers": "DHE-DSS-AES128-GCM-SHA256:DHE-DSS-AES128-SHA", "why": "DSA-2048 leaf"},
    "alert-112": {"raw": "alert", "why": "fatal alert unrecognized_name after the ClientHello"},
    "http": {"raw": "garbage", "why": "HTTP/1.1 400 after the ClientHello"},
    "fin": {"raw": "fin", "why": "FIN after the ClientHello"},
    "rst": {"raw": "rst", "why": "RST after the ClientHello"},
    "alert-then-fin": {"raw": "alert-fin", "why": "alert handshake_failure, then FIN"},
}


def mint_cases(directory: Path) -> dict[str, list[bytes]]:
    """Every certificate the cases use, written to `directory`; the DER of each."""
    root = issue("bench root", ca=True)
    inter = issue("bench intermediate", root, ca=True)
    rsa_inter = inter  # an ECDSA intermediate signs every leaf but the SHA-1 one
    sha1_ca = issue("bench sha1 CA", root, kind="rsa2048", ca=True)
    made = {
        "root": root, "inter": inter,
        "leaf": issue("leaf", inter),
        "selfsigned": issue("selfsigned", None),
        "expired": issue("expired", inter, days=(-40, -10)),
        "wrongname": issue("wrongname", inter, sans=("other.example",)),
        "rsa2048": issue("rsa2048", rsa_inter, kind="rsa2048"),
        "rsa1024": issue("rsa1024", rsa_inter, kind="rsa1024"),
        "rsa4096": issue("rsa4096", rsa_inter, kind="rsa4096"),
        "rsa768": issue("rsa768", rsa_inter, kind="rsa768"),
        "rsa512": issue("rsa512", rsa_inter, kind="rsa512"),
        "sha1": issue("sha1", sha1_ca, kind="rsa2048", digest=hashes.SHA1()),
        "p384": issue("p384", inter, kind="p384"),
        "p521": issue("p521", inter, kind="p521"),
        "ed25519": issue("ed25519", inter, kind="ed25519"),
        "ed448": issue("ed448", inter, kind="ed448"),
        "dsa": issue("dsa", inter, kind="dsa2048"),
    }
    ders: dict[str, list[bytes]] = {}
    for case, spec in CASES.items():
        if "chain" not in spec:
            continue
        names = ["sha1", "sha1ca"] if case == "sha1-leaf" else spec["chain"]
        chain = [(sha1_ca if n == "sha1ca" else made[n]).der for n in names]
        ders[case] = chain
        leaf_key = made[names[0]].key
        (directory / f"{case}.pem").write_text(key_pem(leaf_key) + "".join(map(pem, chain)))
    (directory / "root.pem").write_text(pem(root.der))
    # RFC 7919 ffdhe2048, for the DHE servers (Python's server contexts have no DH otherwise).
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                    "group:ffdhe2048", "-out", str(directory / "dh.pem")], check=True)
    return ders


def _server_context(spec: dict[str, Any], path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if spec.get("sec0"):
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        if "ciphers" in spec:
            sec = ":@SECLEVEL=0" if spec.get("sec0") and "@" not in spec["ciphers"] else ""
            ctx.set_ciphers(spec["ciphers"] + sec)
        if "min" in spec:
            ctx.minimum_version = ssl.TLSVersion[spec["min"]]
        if "max" in spec:
            ctx.maximum_version = ssl.TLSVersion[spec["max"]]
    if "curve" in spec:
        ctx.set_ecdh_curve(spec["curve"])
    if "alpn" in spec:
        ctx.set_alpn_protocols(spec["alpn"])
    if "DHE" in spec.get("ciphers", ""):
        ctx.load_dh_params(path.parent / "dh.pem")
    ctx.options |= ssl.OP_NO_TICKET
    ctx.load_cert_chain(path)
    return ctx


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def _raw(kind: str, sock: socket.socket) -> None:
    header = _recv_exactly(sock, 5)
    _recv_exactly(sock, struct.unpack("!H", header[3:5])[0])  # the ClientHello
    if kind == "alert":
        sock.sendall(bytes([21, 3, 3, 0, 2, 2, 112]))
    elif kind == "alert-fin":
        sock.sendall(bytes([21, 3, 3, 0, 2, 2, 40]))
        sock.shutdown(socket.SHUT_WR)
    elif kind == "garbage":
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    elif kind == "fin":
        sock.shutdown(socket.SHUT_WR)  # FIN, the socket kept open: no RST
    elif kind == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    sock.recv(1)  # until the client leaves


def _tls(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    # Blocking, as a real server: a failed handshake sends its alert before the close.
    with ctx.wrap_socket(sock, server_side=True) as tls:
        tls.recv(1)


def _serve(directory: Path) -> None:
    """Every case on its own port, a thread per connection; the ports go to stdout as JSON."""
    names: dict[str, list[str | None]] = {}
    ports: dict[str, int] = {}

    def listen(handler: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server((HOST, 0), backlog=512)

        def one(sock: socket.socket) -> None:
            with sock, contextlib.suppress(OSError, ValueError):
                sock.settimeout(10)
                handler(sock)

        def accept() -> None:
            while True:
                sock, _ = listener.accept()
                threading.Thread(target=one, args=(sock,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        port: int = listener.getsockname()[1]
        return port

    for case, spec in CASES.items():
        if "raw" in spec:
            ports[case] = listen(functools.partial(_raw, spec["raw"]))
            continue
        ctx = _server_context(spec, directory / f"{case}.pem")
        seen = names.setdefault(case, [])
        ctx.sni_callback = lambda _obj, name, _ctx, seen=seen: seen.append(name)  # type: ignore[misc]
        ports[case] = listen(functools.partial(_tls, ctx))

    def report(sock: socket.socket) -> None:
        sock.sendall(json.dumps(names).encode())

    ports["names"] = listen(report)
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # until the parent closes our stdin


@contextlib.contextmanager
def servers(directory: Path) -> Iterator[dict[str, int]]:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError("the server process did not start")
        yield json.loads(line)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def sni_seen(ports: dict[str, int]) -> dict[str, list[str | None]]:
    with socket.create_connection((HOST, ports["names"]), 5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    seen: dict[str, list[str | None]] = json.loads(data)
    return seen


# -- the engines ------------------------------------------------------------------------------

class WantRead(Exception):
    """The engine needs more bytes from the server."""


@dataclass
class Conn:
    """One client TLS object on memory BIOs: what the probe needs of it."""

    feed: Callable[[bytes], object]
    eof: Callable[[], object]
    drain: Callable[[], bytes]
    step: Callable[[], bool]  # True: handshake done; False: wants to read
    facts: Callable[[], tuple[Any, Any, Any]]  # version, cipher name, ALPN
    chain: Callable[[], list[bytes]]  # DER, as sent
    obj: Any = None


@dataclass
class Engine:
    name: str
    connect: Callable[[str], Conn]  # server_hostname -> a fresh Conn
    note: str = ""


def _ssl_step(tls: Any, want: type[BaseException]) -> Callable[[], bool]:
    def step() -> bool:
        try:
            tls.do_handshake()
        except want:
            return False
        return True
    return step


def _ssl_facts(tls: Any) -> Callable[[], tuple[Any, Any, Any]]:
    def facts() -> tuple[Any, Any, Any]:
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None, tls.selected_alpn_protocol()
    return facts


def stdlib_engine(alpn: tuple[str, ...]) -> Engine:
    ctx = capture_context(alpn)

    def connect(name: str) -> Conn:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)

        def chain() -> list[bytes]:
            native = tls._sslobj.get_unverified_chain() or ()
            return [c.public_bytes(_ssl.ENCODING_DER) for c in native]

        return Conn(incoming.write, incoming.write_eof, outgoing.read,
                    _ssl_step(tls, ssl.SSLWantReadError), _ssl_facts(tls), chain, tls)

    return Engine("ssl SSLObject", connect, "stdlib, public wrap_bio")


def _certscan_conn(wrap: Callable[..., Any], ctx: Any, name: str,
                   chain: Callable[[Any], list[bytes]]) -> Conn:
    """A Conn over a TLS object one of certscan's hooks makes on memory BIOs."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = wrap(ctx, incoming, outgoing, name)
    return Conn(incoming.write, incoming.write_eof, outgoing.read,
                _ssl_step(tls, ssl.SSLWantReadError), _ssl_facts(tls),
                lambda: chain(tls), tls)


def hooks_engine(alpn: tuple[str, ...]) -> Engine:
    ctx = capture_context(alpn)

    def connect(name: str) -> Conn:
        return _certscan_conn(hooks.wrap_bio, ctx, name,
                              lambda tls: list(hooks.unverified_chain(tls)[0]))

    return Engine("ssl certscan", connect, "hooks.wrap_bio + hooks.unverified_chain (today)")


def rtls_context(alpn: tuple[str, ...]) -> Any:
    """capture_context's settings, as rtls takes them."""
    assert rtls is not None
    ctx = rtls.SSLContext(rtls.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = rtls.CERT_NONE
    ctx.minimum_version = rtls.TLSVersion.MINIMUM_SUPPORTED  # TLS 1.2: rustls has no older
    ctx.maximum_version = rtls.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers("ALL:COMPLEMENTOFDEFAULT:!aNULL:!eNULL:@SECLEVEL=0")
    ctx.options |= rtls.OP_NO_TICKET
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def rtls_engine(alpn: tuple[str, ...], *, stdlib_bios: bool = False) -> Engine:
    assert rtls is not None
    ctx = rtls_context(alpn)
    bio = ssl.MemoryBIO if stdlib_bios else rtls.MemoryBIO

    def connect(name: str) -> Conn:
        incoming, outgoing = bio(), bio()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)

        def chain() -> list[bytes]:
            return [c.public_bytes() for c in tls.get_unverified_chain() or ()]

        return Conn(incoming.write, incoming.write_eof, outgoing.read,
                    _ssl_step(tls, ssl.SSLWantReadError), _ssl_facts(tls), chain, tls)

    label = "rtls, ssl.MemoryBIO" if stdlib_bios else "rtls"
    return Engine(label, connect, "rtls.SSLContext.wrap_bio, get_unverified_chain")


def rtls_certscan_engine(alpn: tuple[str, ...]) -> Engine:
    """The rustls engine as certscan drives it: hooks.rustls_wrap (rtls's connection
    object without its TLSObject, where the hook's self-test passes)."""
    ctx = rustls_context(alpn)

    def connect(name: str) -> Conn:
        return _certscan_conn(hooks.rustls_wrap, ctx, name, lambda tls: list(tls.chain()))

    return Engine("rtls certscan", connect,
                  f"hooks.rustls_wrap ({hooks.STATUS['rustls_connection']})")


def pyopenssl_context(alpn: tuple[str, ...]) -> Any:
    assert OSSL is not None
    ctx = OSSL.Context(OSSL.TLS_CLIENT_METHOD)
    ctx.set_verify(OSSL.VERIFY_NONE)
    ctx.set_min_proto_version(OSSL.TLS1_VERSION)
    ctx.set_cipher_list(b"ALL:COMPLEMENTOFDEFAULT:!aNULL:!eNULL:@SECLEVEL=0")
    ctx.set_options(OSSL.OP_NO_TICKET | 0x4)  # 0x4: SSL_OP_LEGACY_SERVER_CONNECT
    if alpn:
        ctx.set_alpn_protos([p.encode() for p in alpn])
    return ctx


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def pyopenssl_engine(alpn: tuple[str, ...]) -> Engine:
    assert OSSL is not None and OCRYPTO is not None
    ctx = pyopenssl_context(alpn)
    want, asn1, dump = OSSL.WantReadError, OCRYPTO.FILETYPE_ASN1, OCRYPTO.dump_certificate

    def connect(name: str) -> Conn:
        conn = OSSL.Connection(ctx, None)
        conn.set_connect_state()
        if not _is_ip(name):
            conn.set_tlsext_host_name(name.encode("idna"))

        def drain() -> bytes:
            out = b""
            while True:
                try:
                    out += conn.bio_read(65536)
                except want:
                    return out

        def step() -> bool:
            try:
                conn.do_handshake()
            except want:
                return False
            return True

        def facts() -> tuple[Any, Any, Any]:
            alpn_got = conn.get_alpn_proto_negotiated()
            return (conn.get_protocol_version_name(), conn.get_cipher_name(),
                    alpn_got.decode() if alpn_got else None)

        def chain() -> list[bytes]:
            return [dump(asn1, c) for c in conn.get_peer_cert_chain() or ()]

        return Conn(conn.bio_write, conn.bio_shutdown, drain, step, facts, chain, conn)

    return Engine("pyOpenSSL", connect, "OpenSSL.SSL.Connection(ctx, None), bio_read/bio_write")


def engines(alpn: tuple[str, ...] = ()) -> list[Engine]:
    found = [stdlib_engine(alpn), hooks_engine(alpn)]
    if rtls is not None:
        found += [rtls_engine(alpn), rtls_engine(alpn, stdlib_bios=True),
                  rtls_certscan_engine(alpn)]
    if OSSL is not None:
        found.append(pyopenssl_engine(alpn))
    return found


# -- one handshake over a blocking socket -----------------------------------------------------

@dataclass
class Tally:
    hello_ns: int = 0
    engine_ns: int = 0
    chain_ns: int = 0


class Stuck(Exception):
    """The engine asked for more bytes after the server's EOF: the probe would time out."""


def handshake(engine: Engine, port: int, name: str, tally: Tally | None = None,
              timeout: float = 5.0) -> tuple[Conn, tuple[Any, Any, Any], list[bytes]]:
    clock = time.process_time_ns
    tally = tally or Tally()
    with socket.create_connection((HOST, port), timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = clock()
        conn = engine.connect(name)
        done = conn.step()  # writes the ClientHello
        hello = conn.drain()
        spent = clock() - t0
        tally.hello_ns += spent
        tally.engine_ns += spent
        sock.sendall(hello)
        ended = False
        while not done:
            data = sock.recv(65536)  # ConnectionResetError for an RST: the engine's not in it
            t0 = clock()
            if data:
                conn.feed(data)
            elif ended:
                raise Stuck("asked for more bytes after the server's EOF (would wait for "
                            "the deadline)")
            else:
                conn.eof()
                ended = True
            done = conn.step()
            out = b"" if done else conn.drain()  # TLS 1.3: our Finished is not sent
            tally.engine_ns += clock() - t0
            if out:
                sock.sendall(out)
        t0 = clock()
        facts = conn.facts()
        t1 = clock()
        chain = conn.chain()
        t2 = clock()
        tally.engine_ns += t1 - t0
        tally.chain_ns += t2 - t1
        return conn, facts, chain


# -- cases --------------------------------------------------------------------------------

def describe(exc: BaseException) -> str:
    kind = type(exc)
    label = f"{kind.__module__}.{kind.__qualname__}"
    reason = getattr(exc, "reason", None)
    text = str(exc).replace("\n", " ")
    if len(text) > 110:
        text = text[:107] + "..."
    errno_ = getattr(exc, "errno", None)
    extra = f" errno={errno_}" if isinstance(exc, OSError) and errno_ is not None else ""
    return f"{label} reason={reason!r}{extra}: {text}"


def run_cases() -> None:
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        directory = Path(tmp)
        expected = mint_cases(directory)
        with servers(directory) as ports:
            found = engines(ALPN)
            print(f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}"
                  + (f"; rtls {rtls.__version__} ({rtls.OPENSSL_VERSION})" if rtls else "")
                  + (f"; pyOpenSSL on {OSSL.OpenSSL_version(OSSL.OPENSSL_VERSION).decode()}"
                     if OSSL else ""))
            print(f"client offers ALPN {list(ALPN)}; server_hostname {NAME!r} unless noted\n")
            for case, spec in CASES.items():
                print(f"== {case}: {spec['why']}")
                for engine in found:
                    result = one_case(engine, ports[case], NAME, expected.get(case))
                    print(f"   {engine.name:<20} {result}")
            print(f"== ok-tls13 with server_hostname {HOST!r} (an IP literal)")
            for engine in found:
                result = one_case(engine, ports["ok-tls13"], HOST, expected["ok-tls13"])
                print(f"   {engine.name:<20} {result}")
            seen = sni_seen(ports)["ok-tls13"]
            print(f"\nSNI the ok-tls13 server saw, in order ({len(found)} engines by name, "
                  f"then by IP): {seen}")
            if rtls is not None:
                misuse(ports)


def one_case(engine: Engine, port: int, name: str, expected: list[bytes] | None) -> str:
    try:
        _, facts, chain = handshake(engine, port, name)
    except Exception as exc:
        return describe(exc)
    version, cipher, alpn = facts
    same = "chain == sent" if chain == expected else f"chain DIFFERS ({len(chain)} certs)"
    return f"ok {version} {cipher} alpn={alpn!r} {len(chain)} certs, {same}"


def misuse(ports: dict[str, int]) -> None:
    """An rtls context is an ssl.SSLContext subclass: hooks.wrap_bio takes it and drives the
    stdlib's own (default, verifying) SSL_CTX underneath."""
    ctx = rtls_context(())
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hooks.wrap_bio(ctx, incoming, outgoing, NAME)
    engine = Engine("x", lambda _name: Conn(
        incoming.write, incoming.write_eof, outgoing.read, _ssl_step(tls, ssl.SSLWantReadError),
        _ssl_facts(tls), lambda: [], tls))
    try:
        handshake(engine, ports["ok-tls13"], NAME)
        result = "completed"
    except Exception as exc:
        result = describe(exc)
    print(f"\nhooks.wrap_bio(rtls context) -> {type(tls).__module__}.{type(tls).__name__}; "
          f"handshake: {result}")


# -- speed ------------------------------------------------------------------------------------

@dataclass
class Samples:
    total: list[float] = field(default_factory=list)
    hello: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    chain: list[float] = field(default_factory=list)


def run_speed(handshakes: int, runs: int, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        directory = Path(tmp)
        expected = mint_cases(directory)["ok-tls13"]
        with servers(directory) as ports:
            port = ports["ok-tls13"]
            found = engines()
            for engine in found:  # warm up (hooks' self-test), and check the chain
                for _ in range(20):
                    _, facts, chain = handshake(engine, port, NAME)
                assert chain == expected, engine.name
                assert facts[0] == "TLSv1.3", (engine.name, facts)
            samples = {engine.name: Samples() for engine in found}
            for _ in range(runs):
                for engine in found:
                    tally = Tally()
                    t0 = time.process_time_ns()
                    for _ in range(handshakes):
                        handshake(engine, port, NAME, tally)
                    spent = time.process_time_ns() - t0
                    sample = samples[engine.name]
                    sample.total.append(spent / handshakes / 1e3)
                    sample.hello.append(tally.hello_ns / handshakes / 1e3)
                    sample.engine.append(tally.engine_ns / handshakes / 1e3)
                    sample.chain.append(tally.chain_ns / handshakes / 1e3)
        print(f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}"
              + (f"; rtls {rtls.__version__} ({rtls.OPENSSL_VERSION})" if rtls else "")
              + (f"; pyOpenSSL on {OSSL.OpenSSL_version(OSSL.OPENSSL_VERSION).decode()}"
                 if OSSL else ""))
        print(f"client CPU per handshake, us: median [min-max] of {runs} runs x {handshakes} "
              f"sequential TLS 1.3 handshakes, ECDSA P-256 leaf + intermediate, no "
              f"verification, server in another process\n")
        print(f"{'':<20}{'of which hello':>22}{'engine':>22}{'chain as DER':>22}"
              f"{'total':>22}")
        for engine in found:
            s = samples[engine.name]
            print(f"{engine.name:<20}{spread(s.hello):>22}{spread(s.engine):>22}"
                  f"{spread(s.chain):>22}{spread(s.total):>22}")
        print()
        if rtls is not None:
            rustls_hellos(runs, calls)
        verdicts(directory, expected, runs, calls)


def rustls_hellos(runs: int, calls: int) -> None:
    """What rustls's ClientHello costs alone: TLS 1.3's, with its two key shares
    (X25519MLKEM768 and X25519, keys generated for each connection), against a TLS 1.2-only
    hello, which carries none: the difference is the key generation."""
    rows = []
    for label, maximum in (("TLS 1.3: X25519MLKEM768 + X25519 shares", None),
                           ("TLS 1.2 only: no key share", ssl.TLSVersion.TLSv1_2)):
        ctx = rustls_context(())
        if maximum is not None:
            ctx.maximum_version = maximum
        times = []
        for _ in range(runs):
            t0 = time.process_time_ns()
            for _ in range(calls):
                hooks.rustls_wrap(ctx, ssl.MemoryBIO(), ssl.MemoryBIO(), NAME)
            times.append((time.process_time_ns() - t0) / calls / 1e3)
        rows.append((label, times))
    print(f"rustls's ClientHello alone (hooks.rustls_wrap), us per hello: median [min-max] "
          f"of {runs} runs x {calls}")
    for label, times in rows:
        print(f"{label:<45}{spread(times):>22}")
    print()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def per_call(fn: Callable[[], object], calls: int, runs: int) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        t0 = time.process_time_ns()
        for _ in range(calls):
            fn()
        out.append((time.process_time_ns() - t0) / calls / 1e3)
    return out


def verdicts(directory: Path, chain: list[bytes], runs: int, calls: int) -> None:
    from scanner.verify import TrustStore, verify_chain

    root_pem = directory / "root.pem"
    natives = native_chain(directory / "ok-tls13.pem")
    assert [c.public_bytes(_ssl.ENCODING_DER) for c in natives] == chain
    rows: list[tuple[str, list[float], str]] = []
    with TrustStore.load(str(root_pem)) as store:
        by_der = verify_chain(chain, store, server_name=NAME)
        by_obj = verify_chain(natives, store, server_name=NAME)
        assert by_der == by_obj and by_der.trusted and by_der.hostname_match, (by_der, by_obj)
        rows.append(("verify_chain(DER): d2i_X509 x2 + verify", per_call(
            lambda: verify_chain(chain, store, server_name=NAME), calls, runs),
            "certscan, system OpenSSL 3.0; verdict = stdlib's"))
        rows.append(("verify_chain(_ssl.Certificate, lent)", per_call(
            lambda: verify_chain(natives, store, server_name=NAME), calls, runs),
            "today's path after an ssl handshake"))
        rows.append(("verify_chain(leaf DER, intermediate lent)", per_call(
            lambda: verify_chain([chain[0], natives[1]], store, server_name=NAME), calls, runs),
            "DER with a cache of decoded intermediates"))
        from scanner.openssl import bind, decode

        lib = bind().crypto

        def d2i_both() -> None:
            for index, der in enumerate(chain):
                lib.X509_free(decode(lib, der, index))

        rows.append(("  of which d2i_X509 x2 (system 3.0)", per_call(d2i_both, calls, runs),
                     "what DER costs over lending"))
    if OCRYPTO is not None:
        pstore = OCRYPTO.X509Store()
        pstore.add_cert(OCRYPTO.load_certificate(OCRYPTO.FILETYPE_PEM, root_pem.read_bytes()))
        load, asn1 = OCRYPTO.load_certificate, OCRYPTO.FILETYPE_ASN1

        def pyopenssl_verify() -> None:
            leaf, inter = load(asn1, chain[0]), load(asn1, chain[1])
            OCRYPTO.X509StoreContext(pstore, leaf, [inter]).verify_certificate()

        rows.append(("pyOpenSSL X509StoreContext (DER)", per_call(pyopenssl_verify, calls,
                                                                   runs),
                     "chain only: no name, purpose or auth level settable"))
        rows.append(("  of which load_certificate x2", per_call(
            lambda: [load(asn1, der) for der in chain], calls, runs),
            "d2i in the cryptography wheel's OpenSSL"))
    from cryptography.x509 import DNSName, load_der_x509_certificate
    from cryptography.x509.verification import PolicyBuilder, Store

    root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(DNSName(NAME))

    def cryptography_verify() -> None:
        verifier.verify(load_der_x509_certificate(chain[0]), [load_der_x509_certificate(chain[1])])

    rows.append(("cryptography x509.verification (DER)", per_call(cryptography_verify, calls,
                                                                   runs),
                 "webpki-like CA/B policy: not the stdlib's verdict"))
    signer = ec.generate_private_key(ec.SECP256R1())
    message, public, ecdsa = b"x" * 130, signer.public_key(), ec.ECDSA(hashes.SHA256())
    signature = signer.sign(message, ecdsa)
    rows.append(("for scale: one ECDSA P-256 verify", per_call(
        lambda: public.verify(signature, message, ecdsa), calls, runs),
        "a CertificateVerify check (cryptography); rtls skips it"))
    print(f"verdict of that chain for {NAME!r}, us per call: median [min-max] of {runs} runs "
          f"x {calls} calls")
    for label, values, note in rows:
        print(f"{label:<42}{spread(values):>24}   {note}")


def native_chain(path: Path) -> list[Any]:
    """The served chain as _ssl.Certificate objects, from an in-memory stdlib handshake."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(path)
    client = capture_context()
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls = client.wrap_bio(c_in, c_out, server_hostname=NAME)
    peer = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):
        for side in (tls, peer):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    natives: list[Any] = tls._sslobj.get_unverified_chain()
    return natives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=500, help="per run and engine")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="verdicts per run")
    parser.add_argument("--cases", action="store_true", help="the odd-server table instead")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve)
    elif args.cases:
        run_cases()
    else:
        run_speed(args.handshakes, args.runs, args.calls)


if __name__ == "__main__":
    main()
