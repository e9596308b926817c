"""Scan configuration: one frozen dataclass, validated once when it is built."""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, SupportsIndex, TypedDict

from .engines import EngineName, rustls_missing
from .gate import HandshakeGate
from .keys import parse_shard
from .resolve import check_nameserver
from .starttls import DANCES
from .targets import TargetError, parse_server_name, starttls_protocol
from .values import Shard

LoopName = Literal["auto", "asyncio", "uvloop"]
ResolverName = Literal["thread", "aiodns"]
VerifyPolicyName = Literal["default", "strict"]

DEFAULT_PORTS = (443,)
DEFAULT_CONCURRENCY = 500
DEFAULT_TIMEOUT = 5.0
DEFAULT_ALPN = ("h2", "http/1.1")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting (the CLI maps it to a flag)."""


def parse_ports(text: str) -> tuple[int, ...]:
    """The command line's port list: ports and ranges, comma-separated ("443,8443",
    "8000-8010"), in order, duplicates dropped. ConfigError (naming `ports`) otherwise."""
    ports: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if "-" in part:
            low, _, high = part.partition("-")
            if not (_digits(low) and _digits(high)) or int(low) > int(high):
                raise ConfigError(f"ports: invalid port range {part!r}")
            if int(high) > 65535 or int(low) < 1:  # before a range of billions is built
                raise ConfigError(f"ports: {part} is not a range of TCP ports (1-65535)")
            ports.extend(range(int(low), int(high) + 1))
        elif _digits(part):
            ports.append(int(part))
        else:
            raise ConfigError(f"ports: invalid port {part!r}")
    return _port_tuple(ports)


def parse_alpn(text: str) -> tuple[str, ...]:
    """The command line's ALPN list: protocol names, comma-separated ("h2,http/1.1");
    "" offers none."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²", which int() won't


def _port_tuple(ports: Iterable[object]) -> tuple[int, ...]:
    checked: list[int] = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, SupportsIndex):
            raise ConfigError(f"ports: {port!r} is not a port number")
        number = operator.index(port)
        if not 1 <= number <= 65535:
            raise ConfigError(f"ports: {number} is not a TCP port (1-65535)")
        checked.append(number)
    if not checked:
        raise ConfigError("ports: at least one port is needed")
    return tuple(dict.fromkeys(checked))


def _ports(value: object) -> tuple[int, ...]:
    """A port, the command line's string, or an iterable of ports."""
    if isinstance(value, str):
        return parse_ports(value)
    if isinstance(value, SupportsIndex) and not isinstance(value, bool):
        return _port_tuple([value])
    if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        return _port_tuple(value)
    raise ConfigError(
        f"ports: expected a port, a string such as '443,8443' or '8000-8010', or an "
        f"iterable of ports; got {value!r}"
    )


def _alpn(value: object) -> tuple[str, ...]:
    """The command line's comma-separated string, or an iterable of names taken as is."""
    if isinstance(value, str):
        protocols = parse_alpn(value)
    elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        protocols = tuple(value)
    else:
        raise ConfigError(
            f"alpn: expected a string such as 'h2,http/1.1' or an iterable of protocol "
            f"names; got {value!r}"
        )
    for proto in protocols:
        # The ssl module takes ASCII names only; RFC 7301 allows 1 to 255 bytes.
        if not isinstance(proto, str) or not proto or not proto.isascii() or len(proto) > 255:
            raise ConfigError(f"alpn: {proto!r} is not a valid protocol name")
    return protocols


def _whole(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: expected a whole number, got {value!r}")
    return value


def _real(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _strings(field: str, value: object) -> tuple[str, ...]:
    """One string, or an iterable of strings."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, bytes | bytearray):
        raise ConfigError(f"{field}: expected a string or an iterable of strings, got {value!r}")
    strings = tuple(items)
    for item in strings:
        if not isinstance(item, str):
            raise ConfigError(f"{field}: {item!r} is not a string")
    return strings


class ScanOptions(TypedDict, total=False):
    """The keywords of the library's `scan()`: ScanConfig's fields, in every form its
    checks accept (ports as 8443, "443,8000-8010" or a list; alpn as "h2,http/1.1")."""

    ports: int | str | Iterable[int] | None
    sni: str | None
    concurrency: int
    timeout: float
    ca_bundle: str | os.PathLike[str] | None
    alpn: str | Iterable[str]
    retries: int
    rate: float | None
    resolver: ResolverName
    resolver_threads: int
    nameservers: str | Iterable[str]
    handshakes: int | None
    loop: LoopName
    verify_policy: VerifyPolicyName
    starttls: str | None
    all_addresses: bool
    shard: str | Shard | None
    engine: EngineName


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """Everything a scan needs to know, fixed before the first target is read.

    Built by the command line and by `scan(**options)` alike, and checked here, once: a
    value of the wrong type or out of range is a ConfigError naming the field. ports, alpn,
    nameservers, ca_bundle, timeout and rate also take other forms (below), converted here
    to the one each field holds; sni is normalised as on the command line.

    ports:        ports for targets that name none: a port, the command line's string
                  ("443,8443", "8000-8010") or an iterable of ports; stored as a tuple.
                  None (the default): 443, or with `starttls` that protocol's usual port
    sni:          server name for targets that name none (None: the hostname, or no SNI for IPs)
    concurrency:  targets in flight at once
    timeout:      the deadline of one attempt, in seconds (an int or a float, stored as a
                  float; so is rate), shared by its stages: resolve, connect, handshake.
                  Each retry starts a fresh one. Waiting for a handshake slot is not
                  counted against it but is bounded by it again, so one attempt takes at
                  most 2 x timeout + 0.5 s of wall time (probe.attempt_bound); waits for
                  a --rate turn and retry backoff come on top (docs/architecture.md,
                  "Deadlines")
    ca_bundle:    trust store for verdicts: a PEM file, a directory, "system" or "certifi"
                  (a str or a path); None leaves `validation` null
    alpn:         protocols offered in ALPN (empty: no ALPN extension): the command line's
                  comma-separated string ("h2,http/1.1"; "" for none) or an iterable of
                  names, taken as is
    retries:      extra attempts after a connect-stage failure (refused, unreachable,
                  timeout, reset), with backoff
    rate:         new connections per second across the scan (None: unlimited)
    resolver:     "thread" (getaddrinfo on a wide thread pool) or "aiodns" (c-ares)
    resolver_threads: width of that thread pool
    nameservers:  DNS servers for aiodns ("ip", "ip:port", "[v6]:port" or a bare v6), one
                  string or an iterable of them; () is the system's
    handshakes:   answered TLS handshakes worked through at once; None adapts the number
                  to the measured CPU cost per handshake (gate.py). Waiting for a slot is
                  not on the target's clock.
    verify_policy: the pinned verification parameters of verdicts (verify.POLICIES):
                  "default" (Python 3.11/3.12's default context) or "strict" (3.13's)
    starttls:     the STARTTLS protocol for lines without a scheme (starttls.DANCES: smtp,
                  imap, pop3, ftp, ldap, postgres or postgresql, mysql, xmpp); None: TLS
                  from the first byte
    all_addresses: a host name gives one target per address it resolves to (A and AAAA),
                  not one target tried on its addresses in turn
    shard:        scan only this part of the targets: "I/N" or a values.Shard (keys.py);
                  None: all of them
    engine:       the handshake engine (engines.py): "auto" (rustls where rtls is installed,
                  OpenSSL for what rustls cannot speak), "openssl" or "rustls" (no fallback)
    """

    ports: tuple[int, ...] = None  # type: ignore[assignment]  # None: normalised (above)
    sni: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    ca_bundle: str | None = None
    alpn: tuple[str, ...] = DEFAULT_ALPN
    retries: int = 0
    rate: float | None = None
    resolver: ResolverName = "thread"
    resolver_threads: int = 256
    nameservers: tuple[str, ...] = ()
    handshakes: int | None = None
    loop: LoopName = "auto"
    verify_policy: VerifyPolicyName = "default"
    starttls: str | None = None
    all_addresses: bool = False
    shard: Shard | None = None
    engine: EngineName = "auto"

    def __post_init__(self) -> None:
        self._normalise()
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be at least 1, got {self.concurrency}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout: must be a positive number of seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"retries: must be 0 or more, got {self.retries}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate: must be a positive number per second, got {self.rate}")
        if self.resolver not in ("thread", "aiodns"):
            raise ConfigError(f"resolver: unknown resolver {self.resolver!r}")
        if self.nameservers and self.resolver != "aiodns":
            raise ConfigError("nameserver: only the aiodns resolver can be pointed at servers")
        if self.resolver_threads < 1:
            raise ConfigError("resolver_threads: must be at least 1")
        if self.handshakes is not None and self.handshakes < 1:
            raise ConfigError("handshakes: must be at least 1")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(f"loop: unknown event loop {self.loop!r}")
        if self.engine not in ("auto", "openssl", "rustls"):
            raise ConfigError(f"engine: unknown engine {self.engine!r} (auto, openssl or "
                              "rustls)")
        if self.engine == "rustls" and rustls_missing() is not None:
            raise ConfigError(f"engine: {rustls_missing()}")
        if self.verify_policy not in ("default", "strict"):
            raise ConfigError(f"verify_policy: unknown policy {self.verify_policy!r} "
                              "(default or strict)")

    def _normalise(self) -> None:
        """Check each field's type and store it in its one form (frozen: object.__setattr__).
        Idempotent, as `replace()` runs it again on values it already converted."""

        def store(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        if self.starttls is not None:
            if not isinstance(self.starttls, str):
                raise ConfigError(f"starttls: expected a protocol name, got {self.starttls!r}")
            try:
                store("starttls", starttls_protocol(self.starttls))
            except TargetError as exc:
                raise ConfigError(f"starttls: {exc}") from None
        if self.ports is None:
            store("ports", DEFAULT_PORTS if self.starttls is None
                  else (DANCES[self.starttls].default_port,))
        store("ports", _ports(self.ports))
        if isinstance(self.shard, str):
            try:
                store("shard", parse_shard(self.shard))
            except ValueError as exc:
                raise ConfigError(f"shard: {exc}") from None
        elif self.shard is not None and not isinstance(self.shard, Shard):
            raise ConfigError(f"shard: expected 'INDEX/COUNT', got {self.shard!r}")
        if not isinstance(self.all_addresses, bool):
            raise ConfigError(f"all_addresses: expected True or False, got {self.all_addresses!r}")
        store("alpn", _alpn(self.alpn))
        for field in ("concurrency", "retries", "resolver_threads"):
            _whole(field, getattr(self, field))
        if self.handshakes is not None:
            _whole("handshakes", self.handshakes)
        store("timeout", _real("timeout", self.timeout))
        if self.rate is not None:
            store("rate", _real("rate", self.rate))
        if self.sni is not None:
            if not isinstance(self.sni, str):
                raise ConfigError(f"sni: expected a server name, got {self.sni!r}")
            try:
                store("sni", parse_server_name(self.sni))
            except TargetError as exc:
                raise ConfigError(f"sni: {exc}") from None
        if self.ca_bundle is not None:
            bundle: object = self.ca_bundle
            if isinstance(bundle, os.PathLike):
                bundle = os.fspath(bundle)
            if not isinstance(bundle, str) or not bundle:
                raise ConfigError(
                    "ca_bundle: expected a path, 'system' or 'certifi' (None for no "
                    f"verdicts), got {self.ca_bundle!r}"
                )
            store("ca_bundle", bundle)
        servers = _strings("nameserver", self.nameservers)
        for server in servers:
            try:
                check_nameserver(server)
            except ValueError as exc:
                raise ConfigError(f"nameserver: {exc}") from None
        store("nameservers", servers)

    def handshake_gate(self) -> HandshakeGate:
        """A fresh gate for one scan: fixed at --handshakes, else adaptive up to concurrency,
        keeping the CPU work queued ahead of a handshake within half the deadline (the
        other half is the server's: a few round trips and its own CPU)."""
        if self.handshakes is not None:
            return HandshakeGate(self.handshakes, budget=self.timeout, fixed=True)
        return HandshakeGate(self.concurrency, budget=self.timeout / 2)

    @classmethod
    def from_options(cls, options: ScanOptions) -> ScanConfig:
        """From the library's keywords, in any form ScanOptions allows: __post_init__
        checks each and stores it in the field's one form."""
        return cls(**options)  # type: ignore[arg-type]  # (the forms are normalised there)

    def with_concurrency(self, concurrency: int) -> ScanConfig:
        return replace(self, concurrency=concurrency)
