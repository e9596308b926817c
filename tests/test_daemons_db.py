"""STARTTLS against real Debian daemons (tests/daemons_db.py): slapd's LDAP StartTLS,
PostgreSQL's SSLRequest and MariaDB's CLIENT_SSL upgrade, each scanned through the library
face and judged against the certificate the daemon was configured with; and the upgrade
refused by a real daemon that serves no TLS."""

from __future__ import annotations

import re
from typing import Any

import pytest

import daemons_db
from daemons_db import DbDaemon
from scanner.api import scan
from schema import checked

pytestmark = [pytest.mark.daemons, pytest.mark.slow]

# The daemons (module-scoped fixtures), asked for by name through `daemon`.
slapd = daemons_db.slapd
postgres = daemons_db.postgres
mariadb = daemons_db.mariadb
slapd_without_tls = daemons_db.slapd_without_tls
postgres_without_ssl = daemons_db.postgres_without_ssl
mariadb_without_ssl = daemons_db.mariadb_without_ssl


async def scanned(line: str, ca_pem: str, **options: Any) -> dict[str, Any]:
    """The one record of scanning one target line."""
    records = [r async for r in scan([line], ca_bundle=ca_pem, timeout=10, **options)]
    assert len(records) == 1, records
    return checked(records[0])


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> DbDaemon:
    """The daemon fixture named by the test's `daemon` parameter."""
    served: DbDaemon = request.getfixturevalue(request.param)
    return served


# How a target line names the daemon: the URL form (with the port, and without it for the
# scheme's usual one), postgresql:// as an alias of postgres://, and a line without a
# scheme that the `starttls` option gives its protocol.
FORMS = {
    "url": "{protocol}://{host}:{port} {name}",
    "usual-port": "{protocol}://{host} {name}",
    "alias": "postgresql://{host}:{port} {name}",
    "alias-usual-port": "postgresql://{host} {name}",
    "option": "{host}:{port} {name}",
}


@pytest.mark.parametrize(
    ("daemon", "form"),
    [
        *[pytest.param(name, form, id=f"{name}-{form}")
          for name in ("slapd", "postgres", "mariadb") for form in ("url", "usual-port", "option")],
        pytest.param("postgres", "alias", id="postgres-alias"),
        pytest.param("postgres", "alias-usual-port", id="postgres-alias-usual-port"),
    ],
    indirect=["daemon"],
)
async def test_starttls_gets_the_daemons_certificate(
    daemon: DbDaemon, form: str, ca_pem: str
) -> None:
    target = FORMS[form].format(protocol=daemon.protocol, host=daemon.host, port=daemon.port,
                                name=daemon.name)
    options = {"starttls": daemon.protocol} if form == "option" else {}
    record = await scanned(target, ca_pem, **options)
    assert record["status"] == "ok", record["error"]
    assert (record["host"], record["port"], record["ip"]) == (daemon.host, daemon.port,
                                                              daemon.host)
    assert record["starttls"] == daemon.protocol
    assert record["sni"] == daemon.name
    validation = record["validation"]
    assert validation["trusted"] is True, validation
    assert validation["hostname_match"] is True, validation
    assert validation["server_name"] == daemon.name
    assert record["tls"]["version"] in {"TLSv1.2", "TLSv1.3"}
    assert record["certificate"]["sha256"] == daemon.leaf_sha256
    assert record["certificate"]["san"]["dns"] == [daemon.name]
    assert record["chain"][0]["sha256"] == daemon.leaf_sha256


# What each refusal must say (None: any message), beyond error type and stage `starttls`.
NOT_OFFERED = re.compile(r"(?is)\b(ssl|tls)\b.*\b(not|no|without)\b"
                         r"|\b(not|no|without)\b.*\b(ssl|tls)\b")


@pytest.mark.parametrize(
    ("daemon", "message"),
    [
        # its handshake packet lacks CLIENT_SSL (capability flags f7fe, not fffe)
        pytest.param("mariadb_without_ssl", NOT_OFFERED, id="mariadb"),
        # the SSLRequest is answered b"N"
        pytest.param("postgres_without_ssl", None, id="postgres"),
        # ExtendedResponse resultCode 2 (protocolError), "unsupported extended operation"
        pytest.param("slapd_without_tls", None, id="slapd"),
    ],
    indirect=["daemon"],
)
async def test_a_daemon_without_tls_refuses_the_upgrade(
    daemon: DbDaemon, message: re.Pattern[str] | None, ca_pem: str
) -> None:
    record = await scanned(daemon.target, ca_pem)
    assert record["status"] == "error", record
    error = record["error"]
    assert (error["type"], error["stage"]) == ("starttls", "starttls"), error
    if message is not None:
        assert message.search(error["message"]), error
    assert record["starttls"] == daemon.protocol
    assert (record["tls"], record["certificate"], record["chain"]) == (None, None, [])
