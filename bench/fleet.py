"""The local fleets: a CA, one leaf per host, and an nginx serving them.

- The modern fleet (`build_fleet`, regimes A and B): an ECDSA P-256 CA and one P-256 leaf per
  host 127.88.x.y, TLS 1.3 only.
- The legacy fleet (`build_legacy_fleet`, regime L): an RSA-2048 CA and hosts 127.90.x.y of
  five kinds an inventory still meets (LEGACY_KINDS, host i is of kind i % 5): TLS 1.0 only,
  TLS 1.2 with CBC suites only, static RSA key exchange only (all three beyond rustls), an
  RSA-1024 leaf, a SHA-1-signed leaf (both within rustls's reach).

Certificates are cached under bench/out/fleet/ and bench/out/fleet-legacy/ and reused across
runs (they are made again only when missing, close to expiry or of an older layout). nginx
runs with its own prefix, config, pid file and logs under a temporary directory, in the
foreground as our child: the system nginx and its config are never touched.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from measure import descendants

OUT = Path(__file__).resolve().parent / "out"
FLEET_DIR = OUT / "fleet"
LEGACY_DIR = OUT / "fleet-legacy"
HOSTS_PER_BLOCK = 250  # 127.88.x.1 .. 127.88.x.250, x = 1, 2, ...
VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


def host_address(index: int, second_octet: int = 88) -> str:
    """The loopback address of host number `index` (0-based): 127.88.1.1, 127.88.1.2, ..."""
    block, offset = divmod(index, HOSTS_PER_BLOCK)
    if block >= 254:
        raise ValueError(f"host index {index} past the 127.{second_octet}.0.0/16 range")
    return f"127.{second_octet}.{block + 1}.{offset + 1}"


def backend_address(index: int) -> str:
    """Where nginx listens for host `index` when a delay proxy sits on the public address."""
    return host_address(index, second_octet=89)


def legacy_address(index: int) -> str:
    """The legacy fleet's host `index`: 127.90.1.1, 127.90.1.2, ..."""
    return host_address(index, second_octet=90)


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of legacy server: its certificate and its nginx TLS settings."""

    name: str
    label: str
    key_bits: int  # the leaf's RSA key
    sha1: bool  # the leaf is signed sha1WithRSAEncryption (else SHA-256)
    nginx: tuple[str, ...]  # directives in its server block, over the http block's
    rustls: bool  # whether rustls can speak to it (else certscan auto falls back to OpenSSL)


# OpenSSL 3.0 speaks TLS 1.0/1.1 only at security level 0; nginx refuses to load a
# SHA-1-signed certificate at level 1 or more ("ca md too weak") and a 1024-bit key at level
# 2 or more ("ee key too small"; Debian's default level is 2).
# (d) and (e): what a modern server speaks, at the level that lets nginx load their leaves.
_MODERN_AT_LEVEL_0 = ("ssl_protocols TLSv1.2 TLSv1.3", "ssl_ciphers 'ECDHE+AESGCM:@SECLEVEL=0'")
LEGACY_KINDS = (
    Kind("tls1.0", "(a) TLS 1.0 only", 2048, False,
         ("ssl_protocols TLSv1",
          "ssl_ciphers 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0'"),
         rustls=False),
    Kind("cbc", "(b) TLS 1.2, CBC only", 2048, False,
         ("ssl_protocols TLSv1.2", "ssl_ciphers 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA'"),
         rustls=False),
    Kind("static-rsa", "(c) static RSA only", 2048, False,
         ("ssl_protocols TLSv1.2",
          "ssl_ciphers 'AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384'"),
         rustls=False),
    Kind("rsa-1024", "(d) RSA-1024 leaf", 1024, False, _MODERN_AT_LEVEL_0, rustls=True),
    Kind("sha1", "(e) SHA-1-signed leaf", 2048, True, _MODERN_AT_LEVEL_0, rustls=True),
)
# Bump when LEGACY_KINDS or the legacy certificates change: the cache is then made again.
LEGACY_LAYOUT = 1


@dataclass(frozen=True, slots=True)
class Fleet:
    ca_pem: Path
    hosts: tuple[str, ...]  # the addresses, index i -> certificate leaf-i
    directory: Path = FLEET_DIR
    kinds: tuple[Kind, ...] = ()  # legacy fleet: the kind of each host; empty otherwise

    def cert(self, index: int) -> Path:
        return self.directory / "leaves" / f"leaf-{index}.pem"

    def key(self, index: int) -> Path:
        if self.kinds:  # one key per kind, shared by its hosts (see build_legacy_fleet)
            return self.directory / "keys" / f"{self.kinds[index].name}.key"
        return self.directory / "leaves" / f"leaf-{index}.key"

    def server_directives(self, index: int) -> tuple[str, ...]:
        return self.kinds[index].nginx if self.kinds else ()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscan bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _make_ca(now: dt.datetime, key: CaKey | None = None,
             common_name: str = "certscan bench CA") -> tuple[x509.Certificate, CaKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALIDITY + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    address: str, ca: x509.Certificate, ca_key: CaKey, now: dt.datetime, *,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    sha1: bool = False,
) -> tuple[bytes, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(address))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    if sha1:
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        cert = _signed_again_with_sha1(cert, ca_key)
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


# sha256WithRSAEncryption and sha1WithRSAEncryption: OIDs of the same length.
_SHA256_RSA_OID = bytes.fromhex("06092a864886f70d01010b")
_SHA1_RSA_OID = bytes.fromhex("06092a864886f70d010105")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _signed_again_with_sha1(cert: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """`cert` (sha256WithRSAEncryption) as sha1WithRSAEncryption, signed again by `ca_key`.
    cryptography no longer signs certificates with SHA-1 ("not supported for signatures"),
    so the to-be-signed part is edited (the signature algorithm's OID, same length) and
    signed with SHA-1, and the certificate put together again in DER."""
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA_OID) == 1
    tbs = tbs.replace(_SHA256_RSA_OID, _SHA1_RSA_OID)
    signature = ca_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    algorithm = _der_tlv(0x30, _SHA1_RSA_OID + b"\x05\x00")
    der = _der_tlv(0x30, tbs + algorithm + _der_tlv(0x03, b"\x00" + signature))
    signed = x509.load_der_x509_certificate(der)
    assert isinstance(signed.signature_hash_algorithm, hashes.SHA1)
    return signed


def _cache_meta(path: Path, now: dt.datetime) -> tuple[dict[str, object], bool]:
    """A cached fleet's meta.json ({} when there is none), and whether its certificates are
    still far from expiry."""
    meta: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    created = dt.datetime.fromisoformat(str(meta.get("created", "1970-01-01T00:00:00+00:00")))
    return meta, now - created < VALIDITY - RENEW_BEFORE


def build_fleet(count: int) -> Fleet:
    """CA + `count` leaves, reusing the cache when it is complete and far from expiry."""
    leaves = FLEET_DIR / "leaves"
    meta_path = FLEET_DIR / "meta.json"
    now = dt.datetime.now(dt.UTC)
    meta, fresh = _cache_meta(meta_path, now)
    ca_pem, ca_key_pem = FLEET_DIR / "ca.pem", FLEET_DIR / "ca.key"
    if not (fresh and ca_pem.exists() and ca_key_pem.exists()):
        shutil.rmtree(FLEET_DIR, ignore_errors=True)
        leaves.mkdir(parents=True)
        ca, ca_key = _make_ca(now)
        ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        ca_key_pem.write_bytes(_pem_key(ca_key))
        meta = {"created": now.isoformat(), "leaves": 0}
    else:
        ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = _load_key(ca_key_pem)
    have = int(str(meta.get("leaves", 0)))
    if have < count:
        started = time.monotonic()
        for index in range(have, count):
            cert, key = _make_leaf(host_address(index), ca, ca_key, now)
            (leaves / f"leaf-{index}.pem").write_bytes(cert)
            (leaves / f"leaf-{index}.key").write_bytes(key)
        meta["leaves"] = count
        meta_path.write_text(json.dumps(meta))
        print(f"fleet: made {count - have} leaf certificates in "
              f"{time.monotonic() - started:.1f}s (cached in {FLEET_DIR})", flush=True)
    return Fleet(ca_pem=ca_pem, hosts=tuple(host_address(i) for i in range(count)))


def build_legacy_fleet(count: int) -> Fleet:
    """The legacy fleet: an RSA-2048 CA and `count` hosts 127.90.x.y, host i of kind
    LEGACY_KINDS[i % 5], each with its own leaf (SAN = its address). The leaves of a kind
    share one RSA key: generating 1,600 RSA-2048 keys would take about two minutes, and
    neither a handshake nor the captured record depends on whether keys are shared."""
    leaves, keys = LEGACY_DIR / "leaves", LEGACY_DIR / "keys"
    meta_path = LEGACY_DIR / "meta.json"
    now = dt.datetime.now(dt.UTC)
    meta, fresh = _cache_meta(meta_path, now)
    fresh = fresh and meta.get("layout") == LEGACY_LAYOUT
    ca_pem, ca_key_pem = LEGACY_DIR / "ca.pem", LEGACY_DIR / "ca.key"
    kind_keys: dict[str, rsa.RSAPrivateKey] = {}
    if not (fresh and ca_pem.exists() and ca_key_pem.exists()):
        shutil.rmtree(LEGACY_DIR, ignore_errors=True)
        leaves.mkdir(parents=True)
        keys.mkdir()
        ca, ca_key = _make_ca(now, rsa.generate_private_key(65537, 2048),
                              "certscan bench legacy CA")
        ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        ca_key_pem.write_bytes(_pem_key(ca_key))
        for kind in LEGACY_KINDS:
            kind_keys[kind.name] = rsa.generate_private_key(65537, kind.key_bits)
            (keys / f"{kind.name}.key").write_bytes(_pem_key(kind_keys[kind.name]))
        meta = {"created": now.isoformat(), "leaves": 0, "layout": LEGACY_LAYOUT}
    else:
        ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = _load_key(ca_key_pem)
    have = int(str(meta.get("leaves", 0)))
    if have < count:
        started = time.monotonic()
        for kind in LEGACY_KINDS:
            if kind.name not in kind_keys:
                loaded = _load_key(keys / f"{kind.name}.key")
                assert isinstance(loaded, rsa.RSAPrivateKey)
                kind_keys[kind.name] = loaded
        for index in range(have, count):
            kind = LEGACY_KINDS[index % len(LEGACY_KINDS)]
            cert, _ = _make_leaf(legacy_address(index), ca, ca_key, now,
                                 key=kind_keys[kind.name], sha1=kind.sha1)
            (leaves / f"leaf-{index}.pem").write_bytes(cert)
        meta["leaves"] = count
        meta_path.write_text(json.dumps(meta))
        print(f"legacy fleet: made {count - have} leaf certificates in "
              f"{time.monotonic() - started:.1f}s (cached in {LEGACY_DIR})", flush=True)
    return Fleet(
        ca_pem=ca_pem, hosts=tuple(legacy_address(i) for i in range(count)),
        directory=LEGACY_DIR,
        kinds=tuple(LEGACY_KINDS[i % len(LEGACY_KINDS)] for i in range(count)),
    )


def _load_key(path: Path) -> CaKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return loaded


# --- nginx -----------------------------------------------------------------------------

NGINX_CONF = """\
# Generated by bench/fleet.py; one server block per fleet host (a legacy host's block sets
# its own ssl_protocols and ssl_ciphers).
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    ssl_protocols TLSv1.3;
    # Every handshake is a full one: no session cache, no tickets.
    ssl_session_cache off;
    ssl_session_tickets off;
    keepalive_timeout 5s;
{servers}
}}
"""

SERVER_BLOCK = """\
    server {{
        listen {address}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};{directives}
        return 204;
    }}
"""


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("nginx not found: run bench/setup.sh (apt-get install nginx-light)")


SERVER_NICE = -10


def end_process(process: subprocess.Popen[Any], signum: int = signal.SIGTERM) -> None:
    """Ask a child to stop with `signum`; kill it if it has not within 10 s."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_priority(command: list[str]) -> list[str]:
    """`command` run at a higher priority: nginx and the delay proxy stand for remote
    machines and the network, which a busy client cannot slow down. On one shared 2-core
    box a CPU-hungry client would otherwise starve them, and the timeouts that follow would
    be the bench's, not the client's. Applied to every tool's run alike. (nice(1) rather
    than a preexec_fn: this process has threads.)"""
    if os.geteuid() != 0:
        return command  # only root may raise a priority; then all run at equal priority
    return ["nice", "-n", str(SERVER_NICE), *command]


class Nginx:
    """An nginx of our own: foreground child, own prefix; `stop()` is safe to call twice."""

    def __init__(
        self,
        fleet: Fleet,
        serve: Sequence[tuple[int, str]],  # (host index, listen address)
        port: int,
        workers: str = "auto",
    ) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="certbench-nginx-"))
        (self.prefix / "tmp").mkdir()
        servers = "".join(
            SERVER_BLOCK.format(
                address=address, port=port, cert=fleet.cert(index), key=fleet.key(index),
                directives="".join(f"\n        {directive};"
                                   for directive in fleet.server_directives(index)),
            )
            for index, address in serve
        )
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(workers=workers, nofile=65536, connections=20000,
                              prefix=self.prefix, servers=servers)
        )
        self.command = [find_nginx(), "-p", str(self.prefix), "-c", str(self.conf)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, probe: tuple[str, int], timeout: float = 60.0) -> None:
        if _listening(probe):
            raise RuntimeError(f"something already listens on {probe}: a leftover nginx?")
        self.process = subprocess.Popen(server_priority(self.command),
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                # A bad config is reported on stderr, before the error log is opened.
                log_file = self.prefix / "error.log"
                log = (log_file.read_text(errors="replace")[-2000:] if log_file.exists()
                       else "(see nginx's stderr)")
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{log}")
            # Workers are forked only once every listen socket is bound.
            if descendants(self.process.pid) and _listening(probe):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {probe} within {timeout}s")

    def worker_pids(self) -> list[int]:
        """Master and workers, for their CPU counters."""
        if self.process is None:
            return []
        return [self.process.pid, *descendants(self.process.pid)]

    def stop(self) -> None:
        if self.process is None:
            return
        end_process(self.process, signal.SIGQUIT)  # graceful: workers close their sockets
        self.process = None
        shutil.rmtree(self.prefix, ignore_errors=True)


def _listening(address: tuple[str, int]) -> bool:
    """True when something accepts TCP at `address`."""
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False
