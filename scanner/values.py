"""The values that pass between the stages of a scan: frozen, slotted, and nothing else.

    line --targets--> Target --probe--> Capture --assess--> facts, Verdict --record--> Record

`Target` lives in targets.py beside its parser; the rest live here, so that the stages
hand each other values and nothing else: record.py and wire.py, which are pure, import
values, never the modules that touch sockets (probe.py) or call OpenSSL (verify.py, which
assess.py calls for the verdict). docs/architecture.md, "One target's way", walks one target
through them.

The error taxonomy is here too: a `Failure` is a plain value (type, stage, message), made
once at the edge where a foreign exception is caught (errors.classify), and carried from
there to the record. Its type strings are part of the output contract: add new ones,
never rename.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the type: values hold what the handshake decoded, opaquely
    from .hooks import NativeCertificate as Certificate

SCHEMA_VERSION = 1

# A JSON object as the record writes it (facts, chain entries): the shape is the record's
# JSON Schema (record.schema.json), the values str, int, bool, None, lists and objects.
JSONObject = Mapping[str, object]


class ErrorType(enum.StrEnum):
    INVALID_TARGET = "invalid_target"  # the input line could not be parsed into a target
    DNS = "dns"  # the name did not resolve (NXDOMAIN, no address, resolver failure)
    REFUSED = "refused"  # nothing listening: the peer answered the SYN with RST
    UNREACHABLE = "unreachable"  # no route to the host or network
    TIMEOUT = "timeout"  # a stage did not finish within the target's deadline
    RESET = "reset"  # the peer reset the connection (a real RST) after it was up
    CLOSED = "closed"  # the peer closed cleanly (FIN) before the handshake finished
    TLS_ALERT = "tls_alert"  # the peer refused the handshake with a TLS alert
    NOT_TLS = "not_tls"  # the peer answered with something that is not TLS
    STARTTLS = "starttls"  # the plaintext protocol before STARTTLS went wrong
    TLS_ERROR = "tls_error"  # any other TLS failure (no shared cipher or version, bad message)
    INTERNAL = "internal"  # a bug in certscan; never a network failure


class Stage(enum.StrEnum):
    TARGET = "target"  # parsing the input line
    RESOLVE = "resolve"
    CONNECT = "connect"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    CERTIFICATE = "certificate"  # reading the chain out of a finished handshake
    SCAN = "scan"  # outside any single stage (the engine's own bookkeeping)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a target has no certificate: what lands in the record as `error`."""

    type: ErrorType
    stage: Stage
    message: str

    def __str__(self) -> str:
        return f"{self.type} at {self.stage}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"type": str(self.type), "stage": str(self.stage), "message": self.message}


@dataclass(frozen=True, slots=True)
class Shard:
    """One of `count` disjoint parts of a target list (`--shard index/count`), 0-based as
    Kubernetes numbers a Job's indexes."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index must be 0 to "
                             f"{self.count - 1}" if self.count > 0 else
                             f"shard {self.index}/{self.count}: the count must be at least 1")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def as_dict(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds per stage; None for a stage that did not run (resolve for IP literals,
    starttls without a STARTTLS protocol)."""

    resolve: float | None = None
    connect: float | None = None
    handshake: float | None = None
    total: float | None = None
    starttls: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"resolve": self.resolve, "connect": self.connect, "starttls": self.starttls,
                "handshake": self.handshake, "total": self.total}


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What a finished handshake agreed on."""

    version: str | None
    cipher: str | None
    alpn: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"version": self.version, "cipher": self.cipher, "alpn": self.alpn}


@dataclass(frozen=True, slots=True)
class Capture:
    """What one probe saw, and the only thing a probe returns.

    ip:       the address connected to (None when resolution failed)
    tls:      set when the handshake finished
    chain:    the certificates as the server sent them, leaf first, DER
    decoded:  the same certificates as the handshake's own decoded objects, which the
              verdict borrows instead of decoding again (empty where unavailable)
    failure:  set when anything failed
    cause:    the exception behind `failure`, as raised (None for a failure certscan decided
              itself); only the library's stdlib twin reads it. Never part of a record.
    engine:   the handshake engine of the last connection ("openssl", "rustls")
    """

    ip: str | None
    tls: TlsFacts | None
    chain: tuple[bytes, ...]
    timings: Timings
    failure: Failure | None
    decoded: tuple[Certificate, ...] = ()
    cause: BaseException | None = field(default=None, compare=False, repr=False)
    engine: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The stdlib client's answer for one chain, name, store and policy.

    ``hostname_match`` is None when no name was given; ``reason`` is None exactly when
    ``trusted``. ``code`` (the X509_V_ERR code, 0 when trusted) and ``verify_message`` (the
    stdlib's wording) are kept for ``to_ssl_error`` and are not part of ``as_dict``.
    ``server_name`` is the name checked (as the stdlib encodes it: IDNA A-labels) or None;
    ``policy`` the verification policy that judged.
    """

    trusted: bool
    hostname_match: bool | None
    reason: str | None
    message: str
    store: str
    code: int = 0
    verify_message: str = "ok"
    server_name: str | None = None
    policy: str = "default"

    def as_dict(self) -> dict[str, object]:
        return {
            "trusted": self.trusted,
            "hostname_match": self.hostname_match,
            "reason": self.reason,
            "message": self.message,
            "store": self.store,
            "server_name": self.server_name,
            "policy": self.policy,
        }


@dataclass(frozen=True, slots=True)
class Record:
    """One target's answer: the output contract (record.schema.json) as a value.

    `status` is "ok" exactly when there is no `failure`. `as_dict()` is the JSON object,
    every key present on every record, in the contract's order.
    """

    scanned_at: str
    target: str
    host: str | None
    port: int | None
    ip: str | None = None
    sni: str | None = None
    failure: Failure | None = None
    tls: TlsFacts | None = None
    timings: Timings | None = None
    starttls: str | None = None
    shard: Shard | None = None
    engine: str | None = None
    certificate: JSONObject | None = None
    chain: tuple[JSONObject, ...] = ()
    validation: Verdict | None = None

    @property
    def status(self) -> str:
        return "ok" if self.failure is None else "error"

    def as_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "scanned_at": self.scanned_at,
            "target": self.target,
            "host": self.host,
            "port": self.port,
            "ip": self.ip,
            "sni": self.sni,
            "starttls": self.starttls,
            "shard": None if self.shard is None else self.shard.as_dict(),
            "engine": self.engine,
            "status": self.status,
            "error": None if self.failure is None else self.failure.as_dict(),
            "tls": None if self.tls is None else self.tls.as_dict(),
            "timing_ms": None if self.timings is None else self.timings.as_dict(),
            "certificate": self.certificate,
            "chain": list(self.chain),
            "validation": None if self.validation is None else self.validation.as_dict(),
        }
