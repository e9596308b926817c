"""A small authoritative DNS server over UDP for tests and benchmarks, on loopback only.

Answers A and AAAA queries for names under one zone, from an explicit mapping or a rule
(by default `h123.bench.test` -> 127.99.0.123), NXDOMAIN for everything else. A name with
addresses of one family only gets an empty NOERROR answer (NODATA) for the other, so a
getaddrinfo with AF_UNSPEC, which asks for both, is not left waiting for a timeout.

`latency` delays every answer with `loop.call_later` (never by blocking), which is how a
benchmark models a slow upstream resolver. `drop` names are never answered, to provoke
resolver timeouts. Every query is counted by (name, type).

Hand-rolled wire format (RFC 1035 section 4): a query is a 12-byte header and one question;
we echo the question and add answers that point back at it with a compression pointer.

As a program (for benchmarks, in its own process so it does not share a CPU with the client):

    python tests/dnsserver.py --listen 127.53.0.1:53 --zone bench.test --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import re
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import cast

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
NXDOMAIN = 3
NOTIMP = 4

_HEADER = struct.Struct("!HHHHHH")
_ANSWER = struct.Struct("!HHHIH")  # name pointer, type, class, TTL, rdlength
_POINTER_TO_QUESTION = 0xC000 | _HEADER.size

Rule = Callable[[str], list[str] | None]
"""A name (lower case, no trailing dot) -> its addresses, [] for none, None for NXDOMAIN."""


def numbered_rule(zone: str, prefix: str = "127.99") -> Rule:
    """`h<N>.<zone>` -> `<prefix>.<N // 256>.<N % 256>` for N < 65536; NXDOMAIN otherwise."""
    pattern = re.compile(rf"h(\d{{1,5}})\.{re.escape(zone.lower().rstrip('.'))}")

    def rule(name: str) -> list[str] | None:
        match = pattern.fullmatch(name)
        if match is None:
            return None
        n = int(match.group(1))
        if n > 0xFFFF:
            return None
        return [f"{prefix}.{n >> 8}.{n & 255}"]

    return rule


def _parse_question(packet: bytes) -> tuple[int, int, bytes, str, int, int]:
    """(id, flags, raw question bytes, name, qtype, qclass) of a one-question query."""
    if len(packet) < _HEADER.size:
        raise ValueError("short header")
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & 0x8000 or qdcount != 1:
        raise ValueError("not a one-question query")
    labels: list[str] = []
    offset = _HEADER.size
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compression in a question")
        labels.append(packet[offset : offset + length].decode("ascii"))
        offset += length
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    offset += 4
    return ident, flags, packet[_HEADER.size : offset], ".".join(labels).lower(), qtype, qclass


def _response(
    ident: int, query_flags: int, question: bytes, rcode: int, *, rdatas: list[bytes], qtype: int
) -> bytes:
    # QR, the query's opcode, AA, the query's RD, RA, and the rcode.
    flags = 0x8000 | (query_flags & 0x7800) | 0x0400 | (query_flags & 0x0100) | 0x0080 | rcode
    parts = [_HEADER.pack(ident, flags, 1 if question else 0, len(rdatas), 0, 0), question]
    for rdata in rdatas:
        parts.append(_ANSWER.pack(_POINTER_TO_QUESTION, qtype, CLASS_IN, 60, len(rdata)))
        parts.append(rdata)
    return b"".join(parts)


class DNSServer(asyncio.DatagramProtocol):
    """The protocol; see `dns_server()` to run one."""

    def __init__(
        self,
        zone: str,
        *,
        records: Mapping[str, list[str]] | None = None,
        rule: Rule | None = None,
        latency: float = 0.0,
        drop: Collection[str] = (),
    ) -> None:
        self.zone = zone.lower().rstrip(".")
        self.records = {name.lower().rstrip("."): addrs for name, addrs in (records or {}).items()}
        self.rule = rule
        self.latency = latency
        self.drop = frozenset(name.lower().rstrip(".") for name in drop)
        self.queries: Counter[tuple[str, str]] = Counter()  # (name, "A" | "AAAA" | type number)
        self.total = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: the stdlib's datagram transport only subclasses DatagramTransport
        # from Python 3.12 on.
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()

    def lookup(self, name: str) -> list[str] | None:
        if name in self.records:
            return self.records[name]
        if self.rule is not None and (name == self.zone or name.endswith("." + self.zone)):
            return self.rule(name)
        return None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            ident, flags, question, name, qtype, qclass = _parse_question(data)
        except (ValueError, IndexError, UnicodeDecodeError, struct.error):
            if len(data) >= 2:  # answer what we can: FORMERR with the query's id
                formerr = _response(int.from_bytes(data[:2]), 0, b"", FORMERR, rdatas=[], qtype=0)
                self._send(formerr, addr)
            return
        self.total += 1
        self.queries[(name, {TYPE_A: "A", TYPE_AAAA: "AAAA"}.get(qtype, str(qtype)))] += 1
        if name in self.drop:
            return
        if qclass != CLASS_IN or qtype not in (TYPE_A, TYPE_AAAA):
            self._send(_response(ident, flags, question, NOTIMP, rdatas=[], qtype=qtype), addr)
            return
        addresses = self.lookup(name)
        if addresses is None:
            self._send(_response(ident, flags, question, NXDOMAIN, rdatas=[], qtype=qtype), addr)
            return
        version = 4 if qtype == TYPE_A else 6
        rdatas = [
            ip.packed for ip in map(ipaddress.ip_address, addresses) if ip.version == version
        ]
        self._send(_response(ident, flags, question, NOERROR, rdatas=rdatas, qtype=qtype), addr)

    def _send(self, packet: bytes, addr: tuple[str | int, ...]) -> None:
        if self._transport is None or self._loop is None:
            return
        if self.latency > 0:
            self._loop.call_later(self.latency, self._send_now, packet, addr)
        else:
            self._send_now(packet, addr)

    def _send_now(self, packet: bytes, addr: tuple[str | int, ...]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(packet, addr)


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # A benchmark fires hundreds of queries at once; the default receive buffer (~200 KB,
    # about 200 small datagrams with their overhead) would drop some. FORCE needs root.
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                break
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def dns_server(
    host: str = "127.53.0.1",
    port: int = 0,
    *,
    zone: str = "test",
    records: Mapping[str, list[str]] | None = None,
    rule: Rule | None = None,
    latency: float = 0.0,
    drop: Collection[str] = (),
) -> AsyncIterator[tuple[DNSServer, int]]:
    """Serve on host:port (port 0: any free port; 53 needs root) -> (server, bound port)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    loop = asyncio.get_running_loop()
    server = DNSServer(zone, records=records, rule=rule, latency=latency, drop=drop)
    sock = _udp_socket(host, port)
    bound_port: int = sock.getsockname()[1]
    transport, _ = await loop.create_datagram_endpoint(lambda: server, sock=sock)
    try:
        yield server, bound_port
    finally:
        transport.close()


async def _serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    async with dns_server(
        host.strip("[]"), int(port), zone=args.zone, rule=numbered_rule(args.zone),
        latency=args.latency,
    ) as (server, bound):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"listening": f"{host}:{bound}"}), flush=True)
        await stop.wait()
        summary = {"queries": server.total, "names": len({name for name, _ in server.queries})}
        print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.53.0.1:53", metavar="IP:PORT")
    parser.add_argument("--zone", default="bench.test")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args))
    else:
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
