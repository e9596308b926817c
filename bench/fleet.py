"""The local fleet: a CA, one ECDSA P-256 leaf per host 127.88.x.y, and an nginx serving them.

Certificates are cached under bench/out/fleet/ and reused across runs (they are made again
only when missing or close to expiry). nginx runs with its own prefix, config, pid file and
logs under a temporary directory, in the foreground as our child: the system nginx and its
config are never touched.
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from measure import descendants

OUT = Path(__file__).resolve().parent / "out"
FLEET_DIR = OUT / "fleet"
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


@dataclass(frozen=True, slots=True)
class Fleet:
    ca_pem: Path
    hosts: tuple[str, ...]  # the addresses, index i -> certificate leaf-i

    def cert(self, index: int) -> Path:
        return FLEET_DIR / "leaves" / f"leaf-{index}.pem"

    def key(self, index: int) -> Path:
        return FLEET_DIR / "leaves" / f"leaf-{index}.key"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscan bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("certscan bench CA")
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
    address: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
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
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def build_fleet(count: int) -> Fleet:
    """CA + `count` leaves, reusing the cache when it is complete and far from expiry."""
    leaves = FLEET_DIR / "leaves"
    meta_path = FLEET_DIR / "meta.json"
    now = dt.datetime.now(dt.UTC)
    meta: dict[str, object] = {}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    created = dt.datetime.fromisoformat(str(meta.get("created", "1970-01-01T00:00:00+00:00")))
    fresh = now - created < VALIDITY - RENEW_BEFORE
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
        loaded = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
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


# --- nginx -----------------------------------------------------------------------------

NGINX_CONF = """\
# Generated by bench/fleet.py; one server block per fleet host.
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
        ssl_certificate_key {key};
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
            SERVER_BLOCK.format(address=address, port=port, cert=fleet.cert(index),
                                key=fleet.key(index))
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
                log = (self.prefix / "error.log").read_text(errors="replace")[-2000:]
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
