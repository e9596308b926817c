"""The library face: what `scanner.scan()` accepts (ScanConfig's checks and conversions,
shared with the command line), and `scanner.get_server_certificate` failing exactly as
`ssl.get_server_certificate` does, compared case by case against the real one run in a
thread on the very same loopback servers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

import scanner
from dnsserver import dns_server
from scanner.cli import build_parser
from scanner.config import ConfigError, ScanConfig, parse_alpn, parse_ports
from schema import checked
from servers import (
    Behaviour,
    alert,
    fin_after_hello,
    free_port,
    garbage,
    next_address,
    raw_server,
    rst_after_hello,
    server_context,
    silent,
    tls_server,
)

# --- scan(): targets and options -----------------------------------------------------------


async def test_a_str_target_is_one_line(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("one.test"))) as server:
        records = [checked(r) async for r in scanner.scan(server.target, timeout=2)]
    assert len(records) == 1
    (record,) = records
    assert record["status"] == "ok", record["error"]
    assert (record["host"], record["port"]) == (server.host, server.port)


async def test_ports_as_an_int_or_the_cli_string_through_scan(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("ports.test"))) as server:
        quiet = free_port(server.host)
        (one,) = [r async for r in scanner.scan([server.host], ports=server.port, timeout=2)]
        two = [r async for r in scanner.scan([server.host], ports=f"{quiet},{server.port}",
                                             timeout=2)]
    assert (one["port"], one["status"]) == (server.port, "ok")
    by_port = {r["port"]: r for r in map(checked, two)}
    assert by_port[server.port]["status"] == "ok"
    assert by_port[quiet]["error"]["type"] == "refused"


async def test_alpn_as_a_string_is_the_cli_list(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("alpn.test"))
    ctx.set_alpn_protocols(["h2"])
    async with tls_server(ctx) as server:
        (record,) = [r async for r in scanner.scan([server.target], alpn="h2", timeout=2)]
    assert record["tls"]["alpn"] == "h2"


@pytest.mark.parametrize(
    ("given", "ports"),
    [
        (8443, (8443,)),
        ("8443", (8443,)),
        ("443,8443", (443, 8443)),
        (" 443 , 8443 ", (443, 8443)),
        ("8000-8002", (8000, 8001, 8002)),
        ("443,8000-8001,443", (443, 8000, 8001)),
        ([443, 8443], (443, 8443)),
        ((8443, 443, 8443), (8443, 443)),
        (range(1, 3), (1, 2)),
        ((p for p in (25, 465)), (25, 465)),
    ],
)
def test_ports_accepted(given: Any, ports: tuple[int, ...]) -> None:
    assert ScanConfig(ports=given).ports == ports


@pytest.mark.parametrize(
    "given",
    [True, 443.0, b"443", "", "x", "443,", "0", "70000", "9-1", "1-70000", "0-99999999999",
     "²", "44 3", [], [0], [True], ["443"], [443.0], object()],
)
def test_bad_ports_are_a_config_error_naming_ports(given: Any) -> None:
    with pytest.raises(ConfigError, match=r"^ports: "):
        ScanConfig(ports=given)


def test_the_cli_parses_ports_and_alpn_with_the_shared_functions() -> None:
    assert parse_ports("443,8000-8001") == (443, 8000, 8001)
    assert parse_alpn(" h2 , http/1.1,") == ("h2", "http/1.1")
    args = build_parser().parse_args(["scan", "-p", "443,8000-8001", "--alpn", "h2"])
    assert (args.ports, args.alpn) == ((443, 8000, 8001), ("h2",))


@pytest.mark.parametrize("bad", ["x", "0", "9-1", ""])
def test_the_cli_keeps_its_argparse_error_for_ports(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["scan", "-p", bad])
    assert exited.value.code == 2
    assert "argument -p/--ports: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "alpn"),
    [
        ("h2", ("h2",)),
        ("h2,http/1.1", ("h2", "http/1.1")),
        ("", ()),
        (["h2"], ("h2",)),
        (("acme-tls/1", "h2"), ("acme-tls/1", "h2")),
        (["a,b"], ("a,b",)),  # an iterable is taken as is
        ((), ()),
    ],
)
def test_alpn_accepted(given: Any, alpn: tuple[str, ...]) -> None:
    assert ScanConfig(alpn=given).alpn == alpn


@pytest.mark.parametrize(
    "given", [5, None, b"h2", [b"h2"], ["h2", 5], [""], ["h\u00e9"], ["x" * 256], object()]
)
def test_bad_alpn_is_a_config_error_naming_alpn(given: Any) -> None:
    with pytest.raises(ConfigError, match=r"^alpn: "):
        ScanConfig(alpn=given)


@pytest.mark.parametrize(
    ("field", "given"),
    [
        ("concurrency", "5"),
        ("concurrency", 5.0),
        ("concurrency", True),
        ("timeout", "x"),
        ("timeout", None),
        ("timeout", True),
        ("timeout", math.inf),
        ("timeout", math.nan),
        ("retries", 1.5),
        ("retries", "1"),
        ("sni", 5),
        ("sni", b"a.test"),
        ("sni", ""),
        ("sni", "bad name!"),
        ("ca_bundle", 5),
        ("ca_bundle", b"/etc/ssl/cert.pem"),
        ("ca_bundle", ""),
        ("rate", "10"),
        ("rate", True),
        ("rate", math.inf),
        ("resolver", 5),
        ("resolver_threads", "8"),
        ("resolver_threads", 0),
        ("handshakes", 2.5),
        ("loop", None),
    ],
)
def test_each_field_is_type_checked(field: str, given: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        ScanConfig(**{field: given})


@pytest.mark.parametrize("given", [5, [5], [b"127.0.0.1"], ["bogus"], ["127.0.0.1:99999"]])
def test_bad_nameservers_are_a_config_error(given: Any) -> None:
    with pytest.raises(ConfigError, match=r"^nameserver: "):
        ScanConfig(resolver="aiodns", nameservers=given)


def test_good_values_are_normalised(tmp_path: Path) -> None:
    config = ScanConfig(
        timeout=3, rate=10, sni="Example.ORG.", ca_bundle=tmp_path, resolver="aiodns",
        nameservers="127.0.0.1:5353",
    )
    assert isinstance(config.timeout, float) and config.timeout == 3.0
    assert isinstance(config.rate, float) and config.rate == 10.0
    assert config.sni == "example.org"
    assert config.ca_bundle == str(tmp_path)
    assert config.nameservers == ("127.0.0.1:5353",)
    assert ScanConfig(sni="2001:DB8::1").sni == "2001:db8::1"
    assert config.with_concurrency(7) == ScanConfig(
        timeout=3.0, rate=10.0, sni="example.org", ca_bundle=str(tmp_path), resolver="aiodns",
        nameservers=("127.0.0.1:5353",), concurrency=7,
    )


async def test_scan_raises_config_errors_before_any_record() -> None:
    assert issubclass(ConfigError, ValueError)
    assert scanner.ConfigError is ConfigError
    for options in ({"concurrency": "5"}, {"ports": 8443.0}, {"alpn": 2}):
        with pytest.raises(ConfigError):
            [r async for r in scanner.scan(["127.0.0.1:9"], **options)]


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "empty-directory"])
async def test_a_bad_ca_bundle_is_a_config_error_naming_it(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    if kind == "empty":
        path.write_text("")
    elif kind == "garbage":
        path.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    elif kind == "empty-directory":
        path.mkdir()
    with pytest.raises(ConfigError, match=r"^ca_bundle: ") as raised:
        [r async for r in scanner.scan(["127.0.0.1:9"], ca_bundle=str(path))]
    assert isinstance(raised.value, ValueError)


# --- get_server_certificate(): the stdlib's exceptions -------------------------------------


def _described(exc: BaseException) -> tuple[object, ...]:
    """Everything a caller may look at: class, errno, str, args (and SSL's extras)."""
    return (
        type(exc), getattr(exc, "errno", None), str(exc), exc.args,
        getattr(exc, "library", None), getattr(exc, "reason", None),
        getattr(exc, "verify_code", None), getattr(exc, "verify_message", None),
    )


async def _both(addr: tuple[str, int], **options: Any) -> tuple[BaseException, BaseException]:
    """The stdlib's exception and the twin's, for the same call."""
    with pytest.raises(Exception) as theirs:  # any exception: compared below
        await asyncio.to_thread(ssl.get_server_certificate, addr, **options)
    with pytest.raises(Exception) as ours:
        await scanner.get_server_certificate(addr, **options)
    return theirs.value, ours.value


async def test_twin_refused_is_the_stdlibs() -> None:
    host = next_address()
    theirs, ours = await _both((host, free_port(host)))
    assert isinstance(ours, ConnectionRefusedError)
    assert _described(ours) == _described(theirs)


@pytest.mark.both_loops
@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (garbage, ssl.SSLError),  # non-TLS bytes: WRONG_VERSION_NUMBER
        (alert(40), ssl.SSLError),  # a handshake_failure alert
        (alert(112), ssl.SSLError),  # unrecognized_name: an alert named without "ALERT"
        (fin_after_hello, ssl.SSLEOFError),
        (rst_after_hello, ConnectionResetError),
        pytest.param(silent, TimeoutError, marks=pytest.mark.slow),  # the timeout: ~1 s
    ],
    ids=["not-tls", "alert-40", "alert-112", "fin", "rst", "timeout"],
)
async def test_twin_misbehaving_peers_fail_like_the_stdlib(
    behaviour: Behaviour, expected: type[BaseException]
) -> None:
    async with raw_server(behaviour) as server:
        theirs, ours = await _both((server.host, server.port), timeout=0.5)
    assert type(ours) is expected
    assert _described(ours) == _described(theirs)


async def test_twin_verification_failure_is_the_stdlibs(ca: trustme.CA, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with tls_server(server_context(ca.issue_cert("twin.test"))) as server:
        theirs, ours = await _both((server.host, server.port), ca_certs=str(other))
    assert isinstance(ours, ssl.SSLCertVerificationError)
    assert _described(ours) == _described(theirs)


@pytest.mark.parametrize("kind", ["missing", "empty", "no-certificate", "directory"])
async def test_twin_bad_ca_certs_fail_like_the_stdlib(
    kind: str, ca: trustme.CA, tmp_path: Path
) -> None:
    path = tmp_path / "roots.pem"
    expected: type[BaseException] = ssl.SSLError
    if kind == "missing":
        expected = FileNotFoundError
    elif kind == "empty":
        path.write_text("")
    elif kind == "no-certificate":
        path.write_text("just text, no PEM block\n")
    else:
        path.mkdir()
        expected = IsADirectoryError
    async with tls_server(server_context(ca.issue_cert("twin.test"))) as server:
        theirs, ours = await _both((server.host, server.port), ca_certs=str(path))
    assert type(ours) is expected
    assert _described(ours) == _described(theirs)
    assert server.accepts == 0  # the file is read before any connection, as in the stdlib


# --- DNS failures: both through getaddrinfo, in a private mount namespace ----------------
#
# The names below must fail, and no query may leave this machine: the comparison runs in a
# child process whose /etc/resolv.conf (bind-mounted in a private mount namespace) names
# only a DNS server of ours on loopback, and whose nsswitch.conf says "files dns". nscd
# would answer from outside the namespace, so its presence skips the test.

_DNS_NAMES = {
    "nxdomain": "missing.twin.test",  # NXDOMAIN from our server
    "nodata": "empty.twin.test",  # the name exists, with no address
    "unparsable": "no such host!",  # not a host name to certscan: getaddrinfo decides
    "long-label": "a" * 64 + ".twin.test",  # UnicodeError from the socket module's IDNA
}


def _namespace_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "private mount namespaces are Linux-only"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    if os.geteuid() != 0:
        return "needs root: a mount namespace, and a DNS server on port 53"
    if any(os.path.exists(p) for p in ("/run/nscd/socket", "/var/run/nscd/socket")):
        return "nscd is running: lookups would be answered outside the namespace"
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"`unshare --mount` is not permitted here: {probe.stderr.strip()}"
    return None


def test_twin_dns_failures_are_the_stdlibs(tmp_path: Path) -> None:
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server_ip = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
    (tmp_path / "resolv.conf").write_text(
        f"nameserver {server_ip}\noptions timeout:2 attempts:1\n"
    )
    (tmp_path / "nsswitch.conf").write_text("hosts: files dns\n")
    script = (
        f"mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf && "
        f"mount --bind {tmp_path / 'nsswitch.conf'} /etc/nsswitch.conf && "
        f'exec "$0" {Path(__file__)} --child {server_ip}'
    )
    child = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, sys.executable],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    for loop in ("uvloop", "asyncio"):
        for case in _DNS_NAMES:
            theirs, ours = seen[loop][case]
            # Python 3.13's idna codec raises UnicodeEncodeError (a UnicodeError) for a long label
            assert theirs[0] in ("gaierror", "UnicodeError", "UnicodeEncodeError"), (loop, case,
                                                                                  theirs)
            assert ours == theirs, (loop, case)
        assert seen[loop]["nxdomain"][0][1] == socket.EAI_NONAME
    for loop in ("uvloop", "asyncio"):  # answered by our server, for both callers
        assert seen[loop]["asked"]["missing.twin.test"] >= 2, seen[loop]["asked"]
        assert seen[loop]["asked"]["empty.twin.test"] >= 2, seen[loop]["asked"]


async def _child_checks(server_ip: str) -> dict[str, Any]:
    def described(exc: BaseException) -> list[Any]:
        return [type(exc).__name__, getattr(exc, "errno", None), str(exc), list(exc.args)]

    seen: dict[str, Any] = {}
    async with dns_server(
        server_ip, 53, zone="twin.test", records={"empty.twin.test": []}
    ) as (server, _):
        for case, name in _DNS_NAMES.items():
            pair = []
            for twin in (False, True):
                try:
                    if twin:
                        await scanner.get_server_certificate((name, 443), timeout=5)
                    else:
                        await asyncio.to_thread(ssl.get_server_certificate, (name, 443),
                                                timeout=5)
                except Exception as exc:
                    pair.append(described(exc))
                else:
                    pair.append(["no exception"])
            seen[case] = pair
        seen["asked"] = {name: sum(n for (asked, _), n in server.queries.items()
                                   if asked == name) for name in _DNS_NAMES.values()}
    return seen


def _child_main(server_ip: str) -> None:
    """Both loops certscan supports, one after the other, in one child."""
    import uvloop

    seen = {
        "uvloop": uvloop.run(_child_checks(server_ip)),
        "asyncio": asyncio.run(_child_checks(server_ip)),
    }
    print(json.dumps(seen))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(sys.argv[2])
