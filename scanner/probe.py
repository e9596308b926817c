"""One target, one TLS handshake: resolve, connect, (STARTTLS,) handshake, capture the chain.

The only module that opens connections. A probe never raises to its caller (except
cancellation, and a stopped scan's `Stopped` from its --rate wait): every failure comes
back as a plain Failure inside the Capture, translated from the exception once, here
(errors.classify).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .engines import Engine, falls_back
from .errors import ErrorType, Failed, Failure, Stage, classify
from .gate import HandshakeGate
from .resolve import Resolver
from .starttls import Dance, UpgradeError, dance_for
from .targets import Target
from .values import Capture, Timings, TlsFacts

if TYPE_CHECKING:
    from .hooks import NativeCertificate


@dataclass(slots=True)
class _Stopwatch:
    """Milliseconds per stage as an attempt goes (frozen into Timings at its end)."""

    resolve: float | None = None
    connect: float | None = None
    starttls: float | None = None
    handshake: float | None = None

    def freeze(self, total: float) -> Timings:
        return Timings(self.resolve, self.connect, self.handshake, total, self.starttls)


class Clock:
    """The target's deadline budget. Only time spent in a stage counts against it: waiting
    for a handshake slot (our own CPU queue) does not, so a busy scanner never times out
    a server that answered in time."""

    def __init__(self, budget: float) -> None:
        self._budget = budget
        self._spent = 0.0

    def remaining(self) -> float:
        return max(self._budget - self._spent, 0.0)

    def charge(self, seconds: float) -> None:
        self._spent += seconds


class Prober:
    """Probes targets with shared, pre-built parts: one handshake engine (and its
    fallback), one resolver, one gate on handshakes in progress. Safe to use from many
    tasks of one event loop."""

    def __init__(
        self,
        engine: Engine,
        resolver: Resolver,
        *,
        timeout: float,
        gate: HandshakeGate,
        retries: int = 0,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
        fallback: Engine | None = None,
    ) -> None:
        """before_attempt: awaited before each attempt starts (its clock too): --rate's
        turn. Whatever it raises goes to the caller (a stopped scan's `Stopped`).
        fallback: the engine for a server `engine` cannot speak to (engines.falls_back),
        tried at once, in what is left of the same deadline."""
        self._engine = engine
        self._fallback = fallback
        self._resolver = resolver
        self._timeout = timeout
        self._gate = gate
        self._retries = retries
        self._before_attempt = before_attempt

    async def probe(self, target: Target) -> Capture:
        """Probe until success, a failure that retrying cannot help, or retries run out."""
        attempt = 0
        while True:
            if self._before_attempt is not None:
                await self._before_attempt()
            capture = await self._attempt(target, self._engine, Clock(self._timeout))
            failure = capture.failure
            if failure is None or attempt >= self._retries or not _retryable(failure):
                return capture
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt))

    async def _attempt(self, target: Target, engine: Engine, clock: Clock) -> Capture:
        """One attempt, and its one fallback when `engine` cannot speak to the server."""
        started = time.perf_counter()
        capture = await self._try(target, engine, clock)
        if (self._fallback is None or engine is self._fallback or capture.failure is None
                or not falls_back(capture.failure) or clock.remaining() <= 0):
            return capture
        again = await self._try(target, self._fallback, clock)
        total = round((time.perf_counter() - started) * 1000, 3)
        return dataclasses.replace(again, timings=dataclasses.replace(again.timings,
                                                                      total=total))

    async def _try(self, target: Target, engine: Engine, clock: Clock) -> Capture:
        """One connection with one engine. Each stage keeps the target's deadline, and the
        wait for a handshake slot is bounded by the timeout again; a backstop over the
        whole try holds that bound (`attempt_bound`) even against a bug."""
        timings = _Stopwatch()
        started = time.perf_counter()
        stage = Stage.RESOLVE
        ip: str | None = target.ip
        protocol: _HandshakeProtocol | None = None
        tls: TlsFacts | None = None
        chain: tuple[bytes, ...] = ()
        decoded: tuple[NativeCertificate, ...] = ()
        failure: Failure | None = None
        cause: BaseException | None = None
        try:
            async with asyncio.timeout(attempt_bound(clock.remaining())):
                addresses = [ip] if ip is not None else []
                if ip is None:
                    t0 = time.perf_counter()
                    async with asyncio.timeout(clock.remaining()):
                        addresses = await self._resolver.resolve(target.host)
                    timings.resolve = _ms(t0, clock)
                    ip = addresses[0]

                stage = Stage.CONNECT
                t0 = time.perf_counter()
                protocol, ip = await self._connect(target, addresses, clock, engine)
                timings.connect = _ms(t0, clock, protocol.connected_at)

                if target.starttls is not None:
                    stage = Stage.STARTTLS
                    t0 = protocol.connected_at
                    # The server's greeting and replies come on the target's own clock, as
                    # the handshake's bytes do: a tarpit cannot hold a probe past it.
                    await protocol.wait_upgraded(clock.remaining()
                                                 - (time.perf_counter() - t0))
                    timings.starttls = _ms(t0, clock, protocol.hello_at)

                stage = Stage.HANDSHAKE
                t0 = protocol.hello_at
                # Waiting for the server's first bytes costs us nothing but a socket: a silent
                # server holds no slot. The protocol keeps the deadline (cheaper than a timeout
                # context per step). The server has had our ClientHello since hello_at: a
                # busy loop that resumes us late does not give it more time.
                await protocol.wait_answer(clock.remaining() - (time.perf_counter() - t0))
                waited = _ms(t0, clock)
                # Working through the server's answer is CPU: take a slot first. Waiting for
                # the slot is our queue, not the server's delay, so it is not on the clock;
                # but it is bounded, by the timeout again: no target ever waits for ever.
                await self._take_slot()
                try:
                    t0 = time.perf_counter()
                    await protocol.finish(clock.remaining())
                    timings.handshake = round(waited + _ms(t0, clock), 3)
                finally:
                    self._gate.release()

                stage = Stage.CERTIFICATE
                tls = _tls_facts(protocol.ssl_object)
                chain, decoded = protocol.engine.chain(protocol.ssl_object)
                if not chain:
                    failure = Failure(ErrorType.TLS_ERROR, stage, "the server sent no certificate")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, _Unanswered):
                ip = exc.address
            failure = classify(exc, stage)
            cause = None if isinstance(exc, Failed) else exc
        finally:
            if protocol is not None:
                protocol.close()
        total = round((time.perf_counter() - started) * 1000, 3)
        # The engine, once TLS began (not for a failed lookup, connect or STARTTLS dance).
        used = (protocol.engine.name if protocol is not None and stage not in _BEFORE_TLS
                else None)
        return Capture(ip, tls, chain, timings.freeze(total), failure, decoded, cause, used)

    async def _connect(self, target: Target, addresses: list[str], clock: Clock,
                       engine: Engine) -> tuple[_HandshakeProtocol, str]:
        """Connect to the first of `addresses` that answers, trying them in order as
        `socket.create_connection` does, all within the target's deadline: each address
        gets an equal share of what is left of it, so one that swallows SYNs cannot starve
        the next. Raises the last address's error when none answers (naming every address
        tried when there were several)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        budget = clock.remaining()
        failures: list[tuple[str, BaseException]] = []
        for n, address in enumerate(addresses):
            dance = (None if target.starttls is None
                     else dance_for(target.starttls, target.sni or target.host))
            # An IP literal as server_hostname sends no SNI (RFC 6066 forbids it).
            protocol = self._protocol(engine, target.sni or address, loop, dance)
            left = budget - (time.perf_counter() - started)
            try:
                async with asyncio.timeout(max(left, 0.0) / (len(addresses) - n)):
                    # An IP literal is not looked up (asyncio and uvloop both parse it); the
                    # first bytes (ClientHello, or the dance's) go out from connection_made.
                    await loop.create_connection(functools.partial(_same, protocol), address,
                                                 target.port)
            except (OSError, TimeoutError) as exc:
                protocol.close()
                failures.append((address, exc))
                continue
            return protocol, address
        if len(failures) == 1:
            raise failures[0][1]
        last = classify(failures[-1][1], Stage.CONNECT)
        tried = "; ".join(f"{address}: {classify(exc, Stage.CONNECT).message}"
                          for address, exc in failures)
        raise _Unanswered(failures[-1][0], Failure(last.type, Stage.CONNECT,
                                                   f"no address answered ({tried})"))

    def _protocol(self, engine: Engine, name: str, loop: asyncio.AbstractEventLoop,
                  dance: Dance | None) -> _HandshakeProtocol:
        """The protocol for one connection; with the fallback engine at once when `engine`
        will not take the server name (rustls refuses some OpenSSL sends as they are)."""
        try:
            return _HandshakeProtocol(engine, name, loop, dance)
        except ssl.SSLError:
            if self._fallback is None or engine is self._fallback:
                raise
            return _HandshakeProtocol(self._fallback, name, loop, dance)

    async def _take_slot(self) -> None:
        if self._gate.try_acquire():  # a free slot: no wait, so no timer to set and cancel
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise Failed(Failure(
                ErrorType.TIMEOUT, Stage.HANDSHAKE,
                f"the server answered, but no handshake slot came free within "
                f"{self._timeout:g}s: this scanner is overloaded (lower --concurrency, "
                f"or --handshakes)")) from None


_BEFORE_TLS = frozenset({Stage.RESOLVE, Stage.CONNECT, Stage.STARTTLS})


class _Unanswered(Failed):
    """None of a name's addresses answered: the last one tried, and why each did not."""

    def __init__(self, address: str, failure: Failure) -> None:
        super().__init__(failure)
        self.address = address


# What a probe buffers of a server's answer while it waits for a handshake slot. An alert,
# an HTTP error page or a whole certificate flight fits; past it, reading pauses until the
# slot comes, so a server sending endless data costs this much memory, not more (the
# rest waits in the kernel's socket buffer, and then in the server's).
_BUFFER_WHILE_WAITING = 32 << 10


class _HandshakeProtocol(asyncio.Protocol):
    """Drives one TLS handshake over memory BIOs on a plain TCP transport.

    Cheaper than asyncio's SSL streams (no reader, writer or app-layer transport for a
    connection that will never carry application data), and each failure arrives as what
    it is: a FIN as SSLEOFError, an RST as ConnectionResetError(ECONNRESET), an alert or
    garbage as OpenSSL's SSLError.

    Two steps, so that the CPU work can be gated apart from the network wait: the
    ClientHello goes out on connection; `wait_answer` returns when the server's first
    bytes (or its FIN, or an error) arrive, which are kept unread until `finish`, which
    runs the handshake as data comes and returns when it is done, else raises. Each step
    has its own deadline, a TimeoutError. `close()` aborts the transport either way.

    Between the two, the probe waits for a slot: what the server sends meanwhile is kept
    (up to _BUFFER_WHILE_WAITING, then reading pauses), and so is a FIN or a reset that
    follows it, so that an alert or an HTTP page answered-then-closed is read as what it
    said once the slot comes, not as a bare close.

    With a STARTTLS `dance`, the plaintext protocol comes first: the dance's bytes go out
    on connection, the server's are handed to it as they arrive, and the ClientHello goes
    out the moment it says the server gave the go-ahead (`wait_upgraded` returns then).
    Whatever the dance refuses (starttls.UpgradeError), a close, a reset or the deadline
    ends that wait as the handshake's would end.
    """

    def __init__(
        self, engine: Engine, server_hostname: str, loop: asyncio.AbstractEventLoop,
        dance: Dance | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The engine's TLS object (engines.py): for OpenSSL the bare `_ssl._SSLSocket`
        # where it checks out, else an `ssl.SSLObject`; for rustls rtls's. The same
        # methods, raising the same errors. Names come from targets.py IDNA-encoded.
        self.engine = engine
        self.ssl_object: Any = engine.wrap(self._incoming, self._outgoing, server_hostname)
        self._loop = loop
        self._dance = dance
        self._upgraded: asyncio.Future[None] = self._loop.create_future()
        self._answered: asyncio.Future[None] = self._loop.create_future()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._admitted = False
        self._paused = False  # reading paused until admitted (see _BUFFER_WHILE_WAITING)
        self._lost: BaseException | None = None  # the connection ended before admission
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.connected_at = 0.0
        self.hello_at = 0.0  # when the ClientHello went out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = time.perf_counter()
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._dance is None:
            self._hello()
        else:
            self._dancing(self._dance.start)

    def _hello(self) -> None:
        self.hello_at = time.perf_counter()
        if not self._upgraded.done():
            self._upgraded.set_result(None)
        self._handshake()  # sends the ClientHello

    def _dancing(self, step: Callable[[], bytes]) -> None:
        """One step of the STARTTLS dance: send what it answers; on the go-ahead, hello."""
        assert self._dance is not None and self._transport is not None
        try:
            reply = step()
        except Exception as exc:  # UpgradeError: the server's doing; anything else: a bug
            self._fail(exc)
            self._transport.abort()
            return
        if reply:
            self._transport.write(reply)
        if self._dance.upgraded:
            self._hello()

    async def wait_upgraded(self, seconds: float) -> None:
        await self._within(self._upgraded, seconds)

    async def wait_answer(self, seconds: float) -> None:
        await self._within(self._answered, seconds)

    async def finish(self, seconds: float) -> None:
        self._admitted = True
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        self._handshake()
        if self._lost is not None:  # what was left unread did not finish the handshake
            self._fail(self._lost)
        await self._within(self._done, seconds)

    async def _within(self, step: asyncio.Future[None], seconds: float) -> None:
        if not step.done():
            self._timer = self._loop.call_later(seconds, self._expire)
            try:
                await step
            finally:
                self._timer.cancel()
        step.result()

    def _expire(self) -> None:
        self._fail(TimeoutError("deadline"))

    def close(self) -> None:
        """Drop the connection: no close_notify for a peer we do not trust. (Each wait
        cancels its own timer; nobody awaits the futures any more.)"""
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        dance = self._dance
        if dance is not None and not dance.upgraded:
            if not self._upgraded.done():  # else it failed already: the rest is noise
                self._dancing(lambda: dance.receive(data))
            return
        self._incoming.write(data)
        if self._admitted:
            self._handshake()
            return
        self._answer()
        if self._incoming.pending > _BUFFER_WHILE_WAITING and self._transport is not None:
            self._transport.pause_reading()  # resumed by `finish`
            self._paused = True

    def eof_received(self) -> None:
        dance = self._dance
        if dance is not None and not dance.upgraded:
            if not self._upgraded.done():
                self._dancing(_eof_step(dance))
            return
        # A FIN: what came before it (an alert, an HTTP error page) is in the BIO, then
        # the EOF; the handshake reads both, now or once admitted, and says what it was.
        self._incoming.write_eof()
        if self._admitted:
            self._handshake()
        else:
            self._answer()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = exc or ConnectionResetError("connection closed")
        if self._admitted or not self._incoming.pending:
            self._fail(lost)  # nothing unread: the loss itself is the answer
        else:
            # The server's last words are still unread (an alert, then a close while we
            # waited for a slot): they, not the close, are the answer, read once admitted.
            self._lost = lost
            self._answer()

    def _answer(self) -> None:
        if not self._answered.done():
            self._answered.set_result(None)

    def _handshake(self) -> None:
        if self._done.done():  # finished, failed, or past its deadline
            return
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:  # the server's doing: the probe's result
            self._fail(exc)
            return
        # In TLS 1.3 the handshake is complete for us once the server's flight checks out
        # (its certificate, its proof of the key, its Finished); our own Finished would
        # only make the server verify it and send session tickets to a client about to
        # hang up, ~0.2 ms of the server's CPU per probe. So it is not sent. TLS 1.2 needs
        # ours before the server's Finished: there, everything went out already.
        if self.ssl_object.version() != "TLSv1.3":
            self._flush()
        self._done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(exc)
            self._upgraded.exception()
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # marked retrieved: nobody may be waiting any more
        if not self._answered.done():  # a failure is an answer too: wake the waiter
            self._answered.set_exception(exc)
            self._answered.exception()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._transport is not None:
            self._transport.write(data)


def _same(protocol: _HandshakeProtocol) -> _HandshakeProtocol:
    return protocol


def _eof_step(dance: Dance) -> Callable[[], bytes]:
    def step() -> bytes:
        dance.receive_eof()  # always raises: the server hung up before its go-ahead
        raise UpgradeError(f"{dance.protocol}: the server closed the connection")

    return step


def attempt_bound(timeout: float) -> float:
    """The most wall time one attempt can take: its deadline, at most as long again waiting
    for a handshake slot, and a little for our own CPU work."""
    return 2 * timeout + 0.5


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): 0.25, 0.5, 1, then 2."""
    return float(min(0.25 * 2.0 ** (attempt - 1), 2.0))


def _retryable(error: Failure) -> bool:
    return error.stage is Stage.CONNECT and error.type in (
        ErrorType.REFUSED,
        ErrorType.UNREACHABLE,
        ErrorType.TIMEOUT,
        ErrorType.RESET,
    )


def _ms(t0: float, clock: Clock, now: float | None = None) -> float:
    elapsed = (time.perf_counter() if now is None else now) - t0
    clock.charge(elapsed)
    return round(elapsed * 1000, 3)


def _tls_facts(ssl_object: Any) -> TlsFacts:
    cipher = ssl_object.cipher()
    return TlsFacts(ssl_object.version(), cipher[0] if cipher else None,
                    ssl_object.selected_alpn_protocol())
