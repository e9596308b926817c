"""Scan configuration: one frozen dataclass, validated once when it is built."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .gate import HandshakeGate

LoopName = Literal["auto", "asyncio", "uvloop"]
ResolverName = Literal["thread", "aiodns"]

DEFAULT_PORTS = (443,)
DEFAULT_CONCURRENCY = 500
DEFAULT_TIMEOUT = 5.0
DEFAULT_ALPN = ("h2", "http/1.1")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting (the CLI maps it to a flag)."""


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """Everything a scan needs to know, fixed before the first target is read.

    ports:        ports for targets that name none
    sni:          server name for targets that name none (None: the hostname, or no SNI for IPs)
    concurrency:  targets in flight at once
    timeout:      one overall deadline per target, in seconds, covering every stage
    ca_bundle:    trust store for verdicts: a PEM file, a directory, "system" or "certifi";
                  None leaves `validation` null
    alpn:         protocols offered in ALPN (empty: no ALPN extension)
    retries:      extra attempts after a connect-stage failure (refused, unreachable, timeout)
    rate:         new connections per second across the scan (None: unlimited)
    resolver:     "thread" (getaddrinfo on a wide thread pool) or "aiodns" (c-ares)
    resolver_threads: width of that thread pool
    nameservers:  DNS servers for aiodns ("ip", "ip:port", "[v6]:port"); () is the system's
    handshakes:   answered TLS handshakes worked through at once; None adapts the number
                  to the measured CPU cost per handshake (gate.py). Waiting for a slot is
                  not on the target's clock.
    """

    ports: tuple[int, ...] = DEFAULT_PORTS
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

    def __post_init__(self) -> None:
        if not self.ports:
            raise ConfigError("ports: at least one port is needed")
        for port in self.ports:
            if not 1 <= port <= 65535:
                raise ConfigError(f"ports: {port} is not a TCP port (1-65535)")
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
        for proto in self.alpn:
            if not proto or len(proto.encode()) > 255:
                raise ConfigError(f"alpn: {proto!r} is not a valid protocol name")

    def handshake_gate(self) -> HandshakeGate:
        """A fresh gate for one scan: fixed at --handshakes, else adaptive up to concurrency,
        keeping the CPU work queued ahead of a handshake within half the deadline (the
        other half is the server's: a few round trips and its own CPU)."""
        if self.handshakes is not None:
            return HandshakeGate(self.handshakes, budget=self.timeout, fixed=True)
        return HandshakeGate(self.concurrency, budget=self.timeout / 2)

    def with_concurrency(self, concurrency: int) -> ScanConfig:
        return replace(self, concurrency=concurrency)
