"""Name resolution against a real DNS server on loopback (tests/dnsserver.py).

AiodnsResolver is told which server to ask, so it is tested in this process. ThreadResolver
asks getaddrinfo, which asks the name server in /etc/resolv.conf; we never edit the
machine's file (nor let a test query reach the machine's real name server): those checks
run in a child process in a private mount namespace, where a resolv.conf of our own is
bind-mounted over /etc/resolv.conf and points at a DNS server on 127.53.x.y:53.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dnsserver import DNSServer, dns_server, numbered_rule
from scanner.engines import OpenSSLEngine
from scanner.errors import ErrorType, Stage, classify
from scanner.gate import HandshakeGate
from scanner.probe import Prober
from scanner.resolve import AiodnsResolver, ThreadResolver
from scanner.targets import Target

ZONE = "example.test"
RECORDS = {
    "www.example.test": ["127.53.9.9"],
    "v6.example.test": ["::1"],
    "empty.example.test": [],
    "shared.example.test": ["127.53.9.10"],
}
STUCK = "stuck.example.test"  # never answered
LATENCY = 0.05


def _rule(name: str) -> list[str] | None:
    return numbered_rule(ZONE)(name)


@pytest.fixture
async def dns() -> AsyncIterator[tuple[DNSServer, str]]:
    """A server for example.test on a free port; yields it and its "IP:PORT"."""
    host = "127.53.0.2"
    async with dns_server(
        host, zone=ZONE, records=RECORDS, rule=_rule, latency=LATENCY, drop={STUCK}
    ) as (server, port):
        yield server, f"{host}:{port}"


# --- AiodnsResolver, in this process ------------------------------------------------------


async def test_aiodns_resolves_a_and_aaaa(dns: tuple[DNSServer, str]) -> None:
    _, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    try:
        assert await resolver.resolve("www.example.test") == ["127.53.9.9"]
        assert await resolver.resolve("v6.example.test") == ["::1"]
        assert await resolver.resolve("h300.example.test") == ["127.99.1.44"]
    finally:
        resolver.close()


async def test_aiodns_nxdomain_is_a_dns_error(dns: tuple[DNSServer, str]) -> None:
    _, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    try:
        with pytest.raises(socket.gaierror) as caught:
            await resolver.resolve("missing.example.test")
        assert caught.value.errno == socket.EAI_NONAME
        assert "missing.example.test" in str(caught.value)
        error = classify(caught.value, Stage.RESOLVE)
        assert (error.type, error.stage) == (ErrorType.DNS, Stage.RESOLVE)

        with pytest.raises(socket.gaierror) as caught:
            await resolver.resolve("empty.example.test")  # the name exists, no address
        assert caught.value.errno in (socket.EAI_NODATA, socket.EAI_NONAME)
    finally:
        resolver.close()


async def test_aiodns_timeout_is_a_dns_error(dns: tuple[DNSServer, str]) -> None:
    _, nameserver = dns
    resolver = AiodnsResolver([nameserver], timeout=0.1, tries=1)
    try:
        with pytest.raises(socket.gaierror) as caught:
            await resolver.resolve(STUCK)
        assert caught.value.errno == socket.EAI_AGAIN
        assert "ARES_ETIMEOUT" in str(caught.value)
        assert classify(caught.value, Stage.RESOLVE).type is ErrorType.DNS
    finally:
        resolver.close()


async def test_aiodns_concurrent_lookups_share_one_query(dns: tuple[DNSServer, str]) -> None:
    server, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    try:
        answers = await asyncio.gather(
            *(resolver.resolve("shared.example.test") for _ in range(50))
        )
        assert answers == [["127.53.9.10"]] * 50
        assert server.queries[("shared.example.test", "A")] == 1
        # failures are shared too
        failures = await asyncio.gather(
            *(resolver.resolve("gone.example.test") for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(f, socket.gaierror) for f in failures)
        assert server.queries[("gone.example.test", "A")] == 1
    finally:
        resolver.close()


async def test_aiodns_one_callers_deadline_spares_the_others(
    dns: tuple[DNSServer, str],
) -> None:
    server, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    try:
        patient = asyncio.ensure_future(resolver.resolve("h7.example.test"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(LATENCY / 5):
                await resolver.resolve("h7.example.test")
        assert await patient == ["127.99.0.7"]
        # and the lookup the impatient caller started is still the cached answer
        assert await resolver.resolve("h7.example.test") == ["127.99.0.7"]
        assert server.queries[("h7.example.test", "A")] == 1
    finally:
        resolver.close()


async def test_aiodns_cache_stays_bounded(dns: tuple[DNSServer, str]) -> None:
    server, nameserver = dns
    resolver = AiodnsResolver([nameserver], cache_size=4)
    try:
        names = [f"h{n}.example.test" for n in range(20)]
        await asyncio.gather(*(resolver.resolve(name) for name in names))
        assert len(resolver._cache) == 4
        await resolver.resolve(names[-1])  # still cached
        assert server.queries[(names[-1], "A")] == 1
        # Evicted, so looked up again; c-ares may answer from its own cache (it keeps answers
        # for their TTL), so the server's count is not checked here (the getaddrinfo one is).
        assert await resolver.resolve(names[0]) == ["127.99.0.0"]
        assert len(resolver._cache) == 4
    finally:
        resolver.close()


async def test_aiodns_close_ends_pending_lookups(dns: tuple[DNSServer, str]) -> None:
    _, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    resolver.close()  # before any lookup: nothing to do
    resolver = AiodnsResolver([nameserver])
    pending = asyncio.ensure_future(resolver.resolve(STUCK))
    await asyncio.sleep(LATENCY)
    resolver.close()
    resolver.close()
    async with asyncio.timeout(2):
        with pytest.raises(socket.gaierror):
            await pending


def test_aiodns_rejects_a_bad_nameserver() -> None:
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:x", "[::1]53", "::1:99999"):
        with pytest.raises(ValueError, match="nameserver"):
            AiodnsResolver([bad])
    AiodnsResolver(["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353"]).close()


async def test_probe_reports_resolve_failures_and_uses_the_address(
    dns: tuple[DNSServer, str],
) -> None:
    """Through the scanner: NXDOMAIN is a "dns" error at "resolve"; a name that resolves is
    connected to at its address (nothing listens there, so "refused" at "connect")."""
    _, nameserver = dns
    resolver = AiodnsResolver([nameserver])
    prober = Prober(
        OpenSSLEngine(()), resolver, timeout=2.0, gate=HandshakeGate(4, budget=2.0, fixed=True)
    )
    try:
        missing = await prober.probe(
            Target("missing.example.test", "missing.example.test", 443, None, None)
        )
        assert missing.failure is not None
        assert (missing.failure.type, missing.failure.stage) == (ErrorType.DNS, Stage.RESOLVE)
        assert missing.ip is None

        found = await prober.probe(Target("h9.example.test", "h9.example.test", 9, None, None))
        assert found.ip == "127.99.0.9"
        assert found.failure is not None
        assert (found.failure.type, found.failure.stage) == (ErrorType.REFUSED, Stage.CONNECT)
        assert found.timings.resolve is not None
    finally:
        resolver.close()


# --- ThreadResolver, through getaddrinfo in a private mount namespace --------------------


def _namespace_unavailable() -> str | None:
    """Why the namespace checks cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "private mount namespaces are Linux-only"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    if os.geteuid() != 0:
        return "needs root: a mount namespace, and a DNS server on port 53"
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"`unshare --mount` is not permitted here: {probe.stderr.strip()}"
    return None


@pytest.mark.slow  # ~1.5 s
def test_thread_resolver_through_getaddrinfo(tmp_path: Path) -> None:
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server_ip = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
    resolv_conf = tmp_path / "resolv.conf"
    # A long timeout: a lookup of the silent name must still be blocked at the child's exit.
    resolv_conf.write_text(f"nameserver {server_ip}\noptions timeout:8 attempts:1\n")
    script = (
        f"mount --bind {resolv_conf} /etc/resolv.conf && "
        f'exec "$0" {Path(__file__)} --child {server_ip}'
    )
    try:
        child = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, sys.executable],
            capture_output=True, text=True, timeout=7, check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not exit: a lookup stuck in getaddrinfo holds the process")
    assert child.returncode == 0, child.stderr
    for loop, seen in json.loads(child.stdout).items():
        assert seen["www"] == ["127.53.9.9"], loop
        assert seen["v6"] == ["::1"], loop
        assert seen["numbered"] == ["127.99.1.44"], loop
        assert seen["missing"] == [socket.EAI_NONAME, "dns", "resolve"], loop
        assert seen["shared"] == [[["127.53.9.10"]], 1], loop
        assert seen["deadline"] == ["timeout", ["127.99.0.7"], 1], loop
        assert seen["cache"] == [4, 2], loop


async def _child_checks(server_ip: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    async with dns_server(
        server_ip, 53, zone=ZONE, records=RECORDS, rule=_rule, latency=LATENCY, drop={STUCK}
    ) as (server, _):
        resolver = ThreadResolver(threads=8, cache_size=4)
        seen["www"] = await resolver.resolve("www.example.test")
        seen["v6"] = await resolver.resolve("v6.example.test")
        seen["numbered"] = await resolver.resolve("h300.example.test")
        try:
            await resolver.resolve("missing.example.test")
        except socket.gaierror as exc:
            error = classify(exc, Stage.RESOLVE)
            seen["missing"] = [exc.errno, str(error.type), str(error.stage)]

        answers = await asyncio.gather(
            *(resolver.resolve("shared.example.test") for _ in range(50))
        )
        seen["shared"] = [
            sorted(map(list, {tuple(a) for a in answers})),
            server.queries[("shared.example.test", "A")],
        ]

        patient = asyncio.ensure_future(resolver.resolve("h7.example.test"))
        outcome = "answered"
        try:
            async with asyncio.timeout(LATENCY / 5):
                await resolver.resolve("h7.example.test")
        except TimeoutError:
            outcome = "timeout"
        seen["deadline"] = [outcome, await patient, server.queries[("h7.example.test", "A")]]

        names = [f"h{n}.example.test" for n in range(100, 120)]
        await asyncio.gather(*(resolver.resolve(name) for name in names))
        await resolver.resolve(names[0])  # evicted: asked again
        seen["cache"] = [len(resolver._cache), server.queries[(names[0], "A")]]

        # A lookup the name server never answers, still blocked when the resolver closes
        # and the process exits: the parent's timeout catches a hang.
        stuck = asyncio.ensure_future(resolver.resolve(STUCK))
        await asyncio.sleep(LATENCY)
        resolver.close()
        stuck.cancel()
    return seen


def _child_main(server_ip: str) -> None:
    """Both loops certscan supports, one after the other, in one child (start-up is slow)."""
    import uvloop

    seen = {
        "uvloop": uvloop.run(_child_checks(server_ip)),
        "asyncio": asyncio.run(_child_checks(server_ip)),
    }
    print(json.dumps(seen))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(sys.argv[2])
