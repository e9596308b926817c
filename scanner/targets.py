"""Target lines -> `Target`s. Pure parsing plus one streaming reader.

Grammar (README and docs/architecture.md, "Target lines"), one target per line, an optional
server name after it:

    example.org                 example.org:8443          192.0.2.7        192.0.2.7:8443
    [2001:db8::1]:443           2001:db8::1               https://example.org:8443/path
    192.0.2.0/30                192.0.2.7:443 example.org  # comment
    smtp://192.0.2.7:587 mail.example.org                  192.0.2.7:443 a.example b.example

Several server names after one address give one target per name. A STARTTLS scheme
(smtp, imap, pop3, ftp, ldap, postgres or postgresql, mysql, xmpp) names the plaintext
protocol spoken before the handshake, and its usual port when the line gives none.
Blank lines and `#` comments are skipped. A line that does not parse becomes a `BadLine`,
which the scan turns into an `invalid_target` record; it never stops the scan.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import queue
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiofiles

from .starttls import DANCES
from .values import Shard

# Implicit-TLS schemes a URL may name, with their default ports.
_SCHEME_PORTS = {
    "https": 443,
    "wss": 443,
    "ldaps": 636,
    "imaps": 993,
    "pop3s": 995,
    "smtps": 465,
    "ftps": 990,
    "tls": 443,
}

# STARTTLS schemes: the protocol each names (its usual port is the dance's).
_STARTTLS_SCHEMES = {name: name for name in DANCES} | {"postgresql": "postgres"}


def starttls_protocol(name: str) -> str:
    """The protocol a STARTTLS scheme or --starttls value names, or TargetError."""
    protocol = _STARTTLS_SCHEMES.get(name.lower())
    if protocol is None:
        raise TargetError(f"unknown STARTTLS protocol {name!r} "
                          f"(one of {', '.join(sorted(_STARTTLS_SCHEMES))})")
    return protocol


# A CIDR block is expanded lazily, but a block nobody could finish scanning (an IPv6 /64) is
# almost certainly a typo; refuse it instead of running for ever.
MAX_BLOCK_ADDRESSES = 1 << 24

_READ_CHUNK = 1 << 16


class TargetError(ValueError):
    """Why a line is not a target; the message is shown to the user as is."""


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to probe.

    text:   the input line as written (for a CIDR block or several ports, shared by all the
            targets the line expands to)
    host:   ASCII hostname (IDNA, lower case) or IP literal (IPv6 without brackets)
    port:   TCP port
    sni:    the server name to send, or None (IP targets without an explicit name)
    ip:     the address when `host` is a literal, else None (resolved at probe time)
    source: where the line came from ("-" for stdin, "argv" for -t), with `line` its number
    starttls: the plaintext protocol upgraded before the handshake (starttls.DANCES), or None
    shard:  the part of the list this target was scanned in (`--shard`), or None
    """

    text: str
    host: str
    port: int
    sni: str | None
    ip: str | None
    source: str = "argv"
    line: int = 0
    starttls: str | None = None
    shard: Shard | None = None

    @property
    def server_name(self) -> str | None:
        """The name a client would verify against: the SNI, else the IP literal."""
        return self.sni if self.sni is not None else self.ip


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that is not a target; becomes one `invalid_target` record."""

    text: str
    source: str
    line: int
    reason: str
    shard: Shard | None = None

    @property
    def message(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def normalise_hostname(name: str) -> str:
    """IDNA-encode (UTS #46, as browsers do) and lower-case a DNS name, or raise TargetError."""
    # Lazy: idna and its tables are for lines that name a host; a list of addresses and
    # CIDR blocks never needs them.
    import idna

    name = name.rstrip(".")
    if not name:
        raise TargetError("empty host name")
    try:
        ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        # idna enforces hostname (LDH) rules strictly; internal names often use "_", which
        # TLS stacks accept, so retry that case as plain ASCII before giving up.
        if name.isascii() and _is_loose_ascii_hostname(name):
            ascii_name = name.lower()
        else:
            raise TargetError(f"invalid host name {name!r}: {exc}") from None
    except UnicodeError as exc:
        raise TargetError(f"invalid host name {name!r}: {exc}") from None
    if len(ascii_name) > 253:
        raise TargetError(f"host name longer than 253 characters: {name[:40]!r}...")
    last = ascii_name.rsplit(".", 1)[-1]
    if last.isdigit():
        raise TargetError(f"{name!r} is neither an IP address nor a host name")
    return ascii_name


def _is_loose_ascii_hostname(name: str) -> bool:
    labels = name.split(".")
    return all(
        0 < len(label) <= 63
        and all(c.isalnum() or c in "-_" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )


def parse_port(text: str) -> int:
    """A TCP port in ASCII digits, 1 to 65535, or TargetError. (str.isdigit alone takes
    "²", which int() refuses: a line must cost its own record, never raise ValueError.)"""
    if not (text.isascii() and text.isdigit()):
        raise TargetError(f"invalid port {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise TargetError(f"port {port} out of range (1-65535)")
    return port


def split_host_port(text: str) -> tuple[str, str | None]:
    """`text` as (host, port as written, or None when it names none), by syntax alone:
    "host", "host:port", "[IPv6]", "[IPv6]:port", or a bare IPv6 address, whose colons (more
    than one) separate no port. Pure; what is in the brackets, and the port, are the
    caller's to check (target lines and --nameserver each check them their own way).
    TargetError for an unclosed '[' or anything but ":port" after the ']'."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"unclosed '[' in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise TargetError(f"unexpected {rest!r} after ']'")
        return host, rest[1:]
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None


def _ip_literal(text: str) -> str | None:
    """`text` as an IP address in ipaddress's canonical form, or None if it is not one."""
    if ":" not in text:  # IPv4, if anything (every IPv6 address has a colon)
        if not "0" <= text[:1] <= "9":  # ipaddress reads ASCII digits only
            return None
        try:
            # Four decimal parts without leading zeros: the only form inet_pton takes,
            # and already canonical. What it refuses, ipaddress judges.
            socket.inet_pton(socket.AF_INET, text)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass
        else:
            return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Address:
    """The address part of a line: host or literal, the port it names (None: the scan's
    ports), and for a URL whether it said TLS from the start (`scheme`) and which STARTTLS
    protocol, if any."""

    host: str
    port: int | None
    scheme: bool = False
    starttls: str | None = None


def _split_address(spec: str) -> _Address:
    """`spec` without any server name -> its _Address."""
    if "://" in spec:
        try:
            url = urlsplit(spec)
            port = url.port
        except ValueError as exc:
            raise TargetError(f"invalid URL {spec!r}: {exc}") from None
        scheme = url.scheme.lower()
        protocol = _STARTTLS_SCHEMES.get(scheme)
        if protocol is not None:
            default = DANCES[protocol].default_port
        elif scheme in _SCHEME_PORTS:
            default = _SCHEME_PORTS[scheme]
        else:
            raise TargetError(f"unsupported URL scheme {url.scheme!r} (TLS and STARTTLS "
                              "schemes only)")
        if not url.hostname:
            raise TargetError(f"URL without a host: {spec!r}")
        return _Address(url.hostname, port if port is not None else default, True, protocol)
    host, port_text = split_host_port(spec)
    if spec.startswith("[") and (_ip_literal(host) is None or ":" not in host):
        raise TargetError(f"{host!r} in brackets is not an IPv6 address")
    return _Address(host, None if port_text is None else parse_port(port_text))


def _cidr_addresses(spec: str) -> Iterator[str] | None:
    """The addresses of a CIDR block, lazily; None when `spec` is not one."""
    if "/" not in spec or "://" in spec:
        return None
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError as exc:
        raise TargetError(f"invalid CIDR block {spec!r}: {exc}") from None
    if network.num_addresses > MAX_BLOCK_ADDRESSES:
        raise TargetError(
            f"CIDR block {spec} has {network.num_addresses:,} addresses; "
            f"at most {MAX_BLOCK_ADDRESSES:,} per line"
        )
    # Every address, network and broadcast included: a scanner should not guess which of
    # them a host sits on (nmap does the same).
    return (str(address) for address in network)


def strip_comment(raw: str) -> str:
    """The line without its comment and surrounding white space ("" for nothing left)."""
    text = raw.strip()
    if text.startswith("#"):
        return ""
    cut = text.find(" #")
    tab = text.find("\t#")
    cuts = [c for c in (cut, tab) if c >= 0]
    return text[: min(cuts)].rstrip() if cuts else text


def parse_line(
    text: str,
    *,
    ports: Sequence[int],
    sni: str | None = None,
    source: str = "argv",
    line: int = 0,
    starttls: str | None = None,
) -> Iterable[Target]:
    """Parse one comment-free, non-blank line into the targets it stands for.

    Validates everything up front (raising TargetError), then expands lazily: a /8 costs
    nothing until it is iterated. `ports` applies when the line names no port; `sni` when
    the line names no server; `starttls` (a protocol of starttls.DANCES) when the line
    has no scheme. Several server names give one target per name, in their order.
    """
    fields = text.split()
    if not fields:
        raise TargetError("empty target")
    spec = fields[0]
    names = list(dict.fromkeys(parse_server_name(f) for f in fields[1:]))
    servers: list[str | None] = list(names) if names else [sni]

    block = _cidr_addresses(spec)
    if block is not None:
        # Not itertools.product: it would materialise the whole block first.
        return (
            Target(text, address, port, server, address, source, line, starttls)
            for address in block
            for port in ports
            for server in servers
        )

    address = _split_address(spec)
    protocol = address.starttls if address.scheme else starttls
    host = address.host
    literal = _ip_literal(host)
    if literal is None:
        if ":" in host:
            raise TargetError(f"invalid IPv6 address {host!r}")
        host = normalise_hostname(host)
        servers = [host if server is None else server for server in servers]
    else:
        host = literal
    chosen = (address.port,) if address.port is not None else tuple(ports)
    return [Target(text, host, p, server, literal, source, line, protocol)
            for p in chosen for server in servers]


def parse_server_name(text: str) -> str:
    literal = _ip_literal(text)
    return literal if literal is not None else normalise_hostname(text)


def parse_lines(
    lines: Iterable[str],
    *,
    ports: Sequence[int],
    sni: str | None = None,
    source: str = "argv",
    first_line: int = 1,
    starttls: str | None = None,
) -> Iterator[Target | BadLine]:
    """Each line in turn: its targets, a BadLine, or nothing (blank or comment)."""
    for number, raw in enumerate(lines, first_line):
        text = strip_comment(raw)
        if not text:
            continue
        try:
            yield from parse_line(text, ports=ports, sni=sni, source=source, line=number,
                                  starttls=starttls)
        except TargetError as exc:
            yield BadLine(raw.strip(), source, number, str(exc))


class InputError(Exception):
    """A target list that failed while being read (an I/O error part-way): fatal for the
    scan, since the targets after the failure would be lost without a trace."""


class _ReadThread(concurrent.futures.Executor):
    """One daemon thread for a target list's blocking reads, handed to aiofiles.

    Not the loop's default executor nor a ThreadPoolExecutor: Python joins those threads at
    exit, and a read that never returns (stdin from a producer that stalls, a FIFO whose
    writer never comes) would then hold the process after a stop. A daemon thread is not
    waited for.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="certscan-read", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)


_CLOSES: set[asyncio.Task[None]] = set()  # closes not waited for (see read_lines)


def _closing(close: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(close)
    _CLOSES.add(task)
    task.add_done_callback(_CLOSES.discard)


async def read_lines(path: str) -> AsyncIterator[str]:
    """Stream the lines of a file ("-": standard input) without loading it whole.

    Reads fixed-size chunks through aiofiles on a daemon thread of its own (one thread hop
    per 64 KiB, not per line) and decodes each line on its own, so one line of bad UTF-8
    costs that line, not the file. A UTF-8 byte order mark at the start is not part of the
    first line. Any file that can be read will do: a FIFO, /dev/fd/N from a process
    substitution. InputError, naming the file, when a read fails.
    """
    name = "standard input" if path == "-" else path
    reads = _ReadThread()
    try:
        opened = (
            aiofiles.open(sys.stdin.fileno() if sys.stdin else 0, "rb", closefd=False,
                          executor=reads)
            if path == "-"
            else aiofiles.open(path, "rb", executor=reads)
        )
        stream = await opened
        try:
            pending = b""
            bom_checked = False
            while True:
                # read1: what the file has now, up to a chunk; a slow producer's first lines
                # are scanned at once, not after 64 KiB of them have piled up.
                chunk = await stream.read1(_READ_CHUNK)
                pending += chunk
                if not bom_checked and (len(pending) >= 3 or not chunk):
                    bom_checked = True
                    pending = pending.removeprefix(b"\xef\xbb\xbf")
                if not chunk:
                    break
                if bom_checked:
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        yield raw.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        except BaseException:
            # A stop (or a failure) may come while a read still waits on the reader thread:
            # a producer that stalls without closing its end. The close is queued behind
            # that read and not waited for, or the stop would wait as long as the producer.
            _closing(stream.close())
            raise
        await stream.close()
    except OSError as exc:
        raise InputError(f"target list {name}: {exc.strerror or exc}") from None
    finally:
        reads.shutdown()


async def read_targets(
    files: Sequence[str],
    inline: Sequence[str] = (),
    *,
    ports: Sequence[int],
    sni: str | None = None,
    starttls: str | None = None,
) -> AsyncIterator[Target | BadLine]:
    """All targets of a scan: the `-t` ones first, then each file (or "-") in order."""
    for item in parse_lines(inline, ports=ports, sni=sni, source="argv", starttls=starttls):
        yield item
    for path in files:
        source = "stdin" if path == "-" else path
        number = 0
        async for raw in read_lines(path):
            number += 1
            for item in parse_lines([raw], ports=ports, sni=sni, source=source,
                                    first_line=number, starttls=starttls):
                yield item
