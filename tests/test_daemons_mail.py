"""STARTTLS against the real daemons (tests/daemons_mail.py): postfix's SMTP on 25 and
587, dovecot's IMAP and POP3, vsftpd's FTP (AUTH TLS) and prosody's XMPP, each on its own
loopback address with a certificate from the session CA. Each service is scanned by its
URL scheme (with and without the port, which the scheme implies) and by the `starttls`
option for a line without a scheme; each record must show the upgrade, a verified
chain for the service's name, and the very certificate the daemon was given."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

import daemons_mail
from daemons import Daemon
from daemons_mail import Served
from scanner.api import scan
from schema import checked

pytestmark = [pytest.mark.daemons, pytest.mark.slow]

# The daemons' module-scoped fixtures, made this module's: each starts on the first test
# that needs it and stops after the module.
postfix = daemons_mail.postfix
dovecot = daemons_mail.dovecot
vsftpd = daemons_mail.vsftpd
prosody = daemons_mail.prosody

# (fixture, port) of every STARTTLS service, grouped by daemon.
SERVICES = [("postfix", 25), ("postfix", 587), ("dovecot", 143), ("dovecot", 110),
            ("vsftpd", 21), ("prosody", 5222)]
# The services on their protocol's usual port, which a URL without a port means.
USUAL_PORT = [service for service in SERVICES if service != ("postfix", 587)]


def _service(request: pytest.FixtureRequest) -> tuple[Served, Daemon]:
    fixture, port = request.param
    served: Served = request.getfixturevalue(fixture)
    return served, served.on(port)


@pytest.fixture(params=SERVICES, ids=[f"{f}-{p}" for f, p in SERVICES])
def service(request: pytest.FixtureRequest) -> tuple[Served, Daemon]:
    return _service(request)


@pytest.fixture(params=USUAL_PORT, ids=[f"{f}-{p}" for f, p in USUAL_PORT])
def usual(request: pytest.FixtureRequest) -> tuple[Served, Daemon]:
    return _service(request)


async def _scan_one(line: str, ca_pem: str, **options: Any) -> dict[str, Any]:
    records = [checked(r) async for r in scan([line], ca_bundle=ca_pem, timeout=10,
                                              **options)]
    assert len(records) == 1, records
    return records[0]


def _assert_upgraded(record: dict[str, Any], served: Served, daemon: Daemon) -> None:
    """A successful STARTTLS scan of `daemon`, that saw the daemon's own certificate."""
    assert record["status"] == "ok", f"{record['error']}\n{served.log.name}:\n{served.tail()}"
    assert record["error"] is None
    assert record["starttls"] == daemon.protocol
    assert (record["host"], record["port"], record["ip"]) == (daemon.host, daemon.port,
                                                             daemon.host)
    assert record["sni"] == daemon.name
    validation = record["validation"]
    assert validation["trusted"] is True, validation
    assert validation["hostname_match"] is True, validation
    assert validation["server_name"] == daemon.name
    assert record["tls"]["version"] in {"TLSv1.2", "TLSv1.3"}, record["tls"]
    # The leaf is the daemon's own, not some other certificate for the name.
    leaf = served.leaf()
    captured = load_pem_x509_certificate(record["chain"][0]["pem"].encode("ascii"))
    assert captured.public_bytes(Encoding.DER) == leaf.public_bytes(Encoding.DER)
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    assert record["chain"][0]["sha256"] == fingerprint
    assert record["certificate"]["sha256"] == fingerprint


async def test_the_scheme_says_starttls(service: tuple[Served, Daemon], ca_pem: str) -> None:
    served, daemon = service
    record = await _scan_one(daemon.target, ca_pem)
    assert record["target"] == daemon.target
    _assert_upgraded(record, served, daemon)


async def test_the_scheme_alone_implies_the_usual_port(usual: tuple[Served, Daemon],
                                                       ca_pem: str) -> None:
    served, daemon = usual
    line = f"{daemon.protocol}://{daemon.host} {daemon.name}"
    record = await _scan_one(line, ca_pem)
    _assert_upgraded(record, served, daemon)  # port included


async def test_the_option_for_a_line_without_a_scheme(service: tuple[Served, Daemon],
                                                      ca_pem: str) -> None:
    served, daemon = service
    line = f"{daemon.host}:{daemon.port} {daemon.name}"
    record = await _scan_one(line, ca_pem, starttls=daemon.protocol)
    _assert_upgraded(record, served, daemon)
