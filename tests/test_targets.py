from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from scanner import targets
from scanner.targets import (
    MAX_BLOCK_ADDRESSES,
    BadLine,
    Target,
    TargetError,
    parse_line,
    parse_lines,
    parse_port,
    read_targets,
    split_host_port,
)


def one(text: str, ports: tuple[int, ...] = (443,), sni: str | None = None) -> Target:
    (target,) = list(parse_line(text, ports=ports, sni=sni))
    return target


@pytest.mark.parametrize(
    ("text", "host", "port", "sni", "ip"),
    [
        ("example.org", "example.org", 443, "example.org", None),
        ("Example.ORG.", "example.org", 443, "example.org", None),
        ("example.org:8443", "example.org", 8443, "example.org", None),
        ("192.0.2.7", "192.0.2.7", 443, None, "192.0.2.7"),
        ("192.0.2.7:8443", "192.0.2.7", 8443, None, "192.0.2.7"),
        ("[2001:db8::1]:443", "2001:db8::1", 443, None, "2001:db8::1"),
        ("[2001:DB8::1]", "2001:db8::1", 443, None, "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1", 443, None, "2001:db8::1"),
        ("::1", "::1", 443, None, "::1"),
        ("https://example.org:8443/path?q=1", "example.org", 8443, "example.org", None),
        ("https://example.org/", "example.org", 443, "example.org", None),
        ("https://[2001:db8::1]:9443/", "2001:db8::1", 9443, None, "2001:db8::1"),
        ("ldaps://ldap.example.org", "ldap.example.org", 636, "ldap.example.org", None),
        ("192.0.2.7:443 example.org", "192.0.2.7", 443, "example.org", "192.0.2.7"),
        ("[::1]:8443 Example.org", "::1", 8443, "example.org", "::1"),
        ("bücher.example", "xn--bcher-kva.example", 443, "xn--bcher-kva.example", None),
        ("my_host.corp.example", "my_host.corp.example", 443, "my_host.corp.example", None),
        ("127.0.0.1 192.0.2.9", "127.0.0.1", 443, "192.0.2.9", "127.0.0.1"),
    ],
)
def test_every_target_form(text: str, host: str, port: int, sni: str | None,
                           ip: str | None) -> None:
    target = one(text)
    assert (target.text, target.host, target.port, target.sni, target.ip) == (
        text, host, port, sni, ip
    )


def test_ports_apply_only_without_an_explicit_port() -> None:
    assert [t.port for t in parse_line("example.org", ports=(443, 8443))] == [443, 8443]
    assert [t.port for t in parse_line("example.org:25", ports=(443, 8443))] == [25]
    assert [t.port for t in parse_line("https://example.org", ports=(8443,))] == [443]


def test_default_sni_applies_only_without_an_explicit_name() -> None:
    assert one("192.0.2.1", sni="a.example").sni == "a.example"
    assert one("192.0.2.1 b.example", sni="a.example").sni == "b.example"
    assert one("host.example", sni="a.example").sni == "a.example"


def test_cidr_expands_every_address_and_port() -> None:
    targets = list(parse_line("192.0.2.0/30", ports=(443, 8443), sni=None))
    assert [(t.host, t.port) for t in targets] == [
        (f"192.0.2.{i}", p) for i in range(4) for p in (443, 8443)
    ]
    assert {t.text for t in targets} == {"192.0.2.0/30"}
    assert all(t.sni is None and t.ip == t.host for t in targets)
    v6 = [t.host for t in parse_line("2001:db8::/126 example.org", ports=(443,))]
    assert v6 == ["2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8::3"]


def test_cidr_is_lazy() -> None:
    block = parse_line("10.0.0.0/8", ports=(443,))
    assert not isinstance(block, list)
    assert next(iter(block)).host == "10.0.0.0"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("example.org:0", "out of range"),
        ("example.org:70000", "out of range"),
        ("example.org:https", "invalid port"),
        ("999.1.1.1", "neither an IP address"),
        ("[2001:db8::1", "unclosed"),
        ("[example.org]:443", "not an IPv6"),
        ("2001:db8::zz", "invalid IPv6"),
        ("gopher://example.org", "unsupported URL scheme"),
        ("https://", "without a host"),
        ("10.0.0.0/33", "invalid CIDR"),
        ("2001:db8::/64", "at most"),
        ("192.0.2.7 a.example b..example", "invalid host name"),
        ("exa mple..org", "invalid host name"),
        ("-bad-.example", "invalid host name"),
    ],
)
def test_bad_lines_raise_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(TargetError, match=why):
        list(parse_line(text, ports=(443,)))


def test_block_limit_is_what_it_says() -> None:
    assert MAX_BLOCK_ADDRESSES == 1 << 24
    parse_line("10.0.0.0/8", ports=(443,))  # exactly the limit: accepted


def test_parse_lines_skips_comments_and_reports_bad_lines() -> None:
    lines = [
        "# a comment",
        "",
        "   ",
        "example.org  # trailing comment",
        "bad:port:x:y:z:",
        "192.0.2.1\t# tab comment",
    ]
    items = list(parse_lines(lines, ports=(443,), source="list.txt"))
    assert isinstance(items[0], Target) and items[0].host == "example.org"
    assert items[0].line == 4 and items[0].text == "example.org"
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert (bad.text, bad.line, bad.source) == ("bad:port:x:y:z:", 5, "list.txt")
    assert bad.message.startswith("list.txt:5: ")
    assert isinstance(items[2], Target) and items[2].host == "192.0.2.1"
    assert len(items) == 3


async def test_read_targets_streams_files_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "targets.txt"
    body = "one.example\n\xff\xfe bad utf8\n# skip\n" + "".join(
        f"h{i}.example\n" for i in range(20000)
    )
    path.write_bytes(body.encode("utf-8", errors="surrogateescape").replace(
        "\xff\xfe".encode(), b"\xff\xfe"))
    items = [item async for item in read_targets([str(path)], ["argv.example:8443"],
                                                 ports=(443,))]
    assert isinstance(items[0], Target) and items[0].source == "argv"
    assert isinstance(items[1], Target) and items[1].line == 1
    assert isinstance(items[2], BadLine) and items[2].line == 2
    assert "\ufffd" in items[2].text  # undecodable bytes shown, not fatal
    last = items[-1]
    assert isinstance(last, Target) and last.host == "h19999.example" and last.line == 20003
    assert len(items) == 3 + 20000


async def test_read_targets_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a.example\r\nb.example")
    items = [item async for item in read_targets([str(path)], ports=(443,))]
    assert [i.host for i in items if isinstance(i, Target)] == ["a.example", "b.example"]


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("example.org", ("example.org", None)),
        ("example.org:8443", ("example.org", "8443")),
        ("192.0.2.7", ("192.0.2.7", None)),
        ("192.0.2.7:53", ("192.0.2.7", "53")),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:443", ("2001:db8::1", "443")),
        ("[192.0.2.7]:53", ("192.0.2.7", "53")),  # the brackets' contents are the caller's
        ("2001:db8::1", ("2001:db8::1", None)),  # bare IPv6: no colon separates a port
        ("::1", ("::1", None)),
        ("host:", ("host", "")),  # the port is the caller's to check
        ("[::1]:", ("::1", "")),
    ],
)
def test_split_host_port_is_the_syntax_alone(text: str, split: tuple[str, str | None]) -> None:
    assert split_host_port(text) == split


@pytest.mark.parametrize(("text", "why"), [("[::1", "unclosed"), ("[::1]53", "unexpected '53'")])
def test_split_host_port_refuses_broken_brackets(text: str, why: str) -> None:
    with pytest.raises(TargetError, match=why):
        split_host_port(text)


def test_both_callers_share_the_split_and_keep_their_own_words() -> None:
    from scanner.resolve import check_nameserver

    for text in ("192.0.2.7", "192.0.2.7:5353", "[2001:db8::1]:5353", "2001:db8::1"):
        assert check_nameserver(text) == text
        host, port = split_host_port(text)
        (target,) = parse_line(text, ports=(443,))
        assert (target.host, target.port) == (host, 443 if port is None else int(port))
    with pytest.raises(ValueError, match=r"^nameserver '\[::1': expected \[IPv6\]:PORT$"):
        check_nameserver("[::1")  # once taken for "::1", port 53
    with pytest.raises(TargetError, match="unclosed"):
        list(parse_line("[::1", ports=(443,)))
    with pytest.raises(ValueError, match=r"bad port '99999'"):
        check_nameserver("192.0.2.7:99999")
    with pytest.raises(TargetError, match=r"port 99999 out of range"):
        list(parse_line("192.0.2.7:99999", ports=(443,)))


@pytest.mark.parametrize("text", ["\u00b2", "\u0664\u0664\u0663", "", "-1", "+443", " 443"])
def test_a_port_is_ascii_digits(text: str) -> None:
    with pytest.raises(TargetError, match="invalid port"):
        parse_port(text)


def test_a_port_int_cannot_read_is_a_bad_line_not_a_crash() -> None:
    # str.isdigit takes "²", int() does not: this line once raised ValueError out of
    # parse_lines, which ended the whole scan.
    (bad,) = parse_lines(["example.org:\u00b2"], ports=(443,))
    assert isinstance(bad, BadLine) and "invalid port" in bad.reason
    assert parse_port("443") == 443


def _ipaddress_literal(text: str) -> str | None:
    """What `_ip_literal` must answer: ipaddress's canonical form, or None."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def test_ip_literals_are_read_as_ipaddress_reads_them() -> None:
    """The inet_pton fast path for IPv4 answers exactly as ipaddress does, on the forms a
    list holds and on near misses: leading zeros, short and long forms, octets past 255,
    non-ASCII digits, a NUL, signs, spaces, IPv6 and its IPv4-mapped form."""
    rng = random.Random(1729)
    alphabet = "0123456789.:abcdefx%/ +-\x00\u0661"
    samples = ["127.0.0.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3",
               "1.2.3.4.5", "1.2.3.04", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\x00", "\u0661.2.3.4",
               "+1.2.3.4", "1..2.3", "0x7f.0.0.1", "::1", "::ffff:1.2.3.4", "fe80::1%lo",
               "1.2.3.4%lo", "", ".", "1", "example.com", "1e3.0.0.1", "127.1"]
    samples += [".".join(str(rng.randrange(300)).zfill(rng.choice((1, 1, 1, 2, 3)))
                         for _ in range(rng.choice((3, 4, 4, 4, 5)))) for _ in range(20000)]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 16)))
                for _ in range(20000)]
    for text in samples:
        assert targets._ip_literal(text) == _ipaddress_literal(text), repr(text)
