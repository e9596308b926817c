"""What a capture says: the facts of its certificates and, with a trust store, the verdict,
as one record. Pure: values in (a Target, a Capture), a Record out.

`assess_all` judges many captures at once, stage by stage (every verdict, then every
certificate's facts, then every record) rather than capture by capture: the same work in
the same process, but each stage's code (OpenSSL's verifier, the DER walk) stays in the
CPU's caches across the batch instead of being evicted by the next stage's. In a scan this
cuts the CPU of verdicts and facts by about a quarter (bench/README.md, "Profiling").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from . import certs
from .errors import internal
from .record import capture_record
from .targets import Target
from .values import Capture, JSONObject, Record, Stage, Verdict
from .verify import Policy, TrustStore, verify_chain


def assess(target: Target, capture: Capture, *, now: datetime, store: TrustStore | None,
           policy: Policy = "default") -> Record:
    """The record of one probe: certificate facts and, with a trust store, the verdict
    (under verification ``policy``). A failure to judge the chain is a bug of ours: an
    `internal` record at stage `certificate`, never a wrong fact."""
    return assess_all([(target, capture)], now=now, store=store, policy=policy)[0]


def assess_all(probes: Sequence[tuple[Target, Capture]], *, now: datetime,
               store: TrustStore | None, policy: Policy = "default") -> list[Record]:
    """`assess` of each probe, in order, computed stage by stage."""
    verdicts = [_verdict(target, capture, store, policy) for target, capture in probes]
    facts = [_facts(capture, now) for _, capture in probes]
    records: list[Record] = []
    for (target, capture), verdict, read in zip(probes, verdicts, facts, strict=True):
        if read is None:  # no chain: nothing to judge
            records.append(capture_record(target, capture, now=now))
        elif isinstance(read, Exception):
            records.append(_bug(target, capture, now, read))
        elif isinstance(verdict, Exception):
            records.append(_bug(target, capture, now, verdict))
        else:
            certificate, chain = read
            records.append(capture_record(target, capture, now=now, certificate=certificate,
                                          chain=chain, validation=verdict))
    return records


def _bug(target: Target, capture: Capture, now: datetime, exc: Exception) -> Record:
    return capture_record(target, capture, now=now, failure=internal(exc, Stage.CERTIFICATE))


_Facts = tuple[JSONObject, tuple[JSONObject, ...]]


def _facts(capture: Capture, now: datetime) -> _Facts | Exception | None:
    """The leaf's facts and the chain's entries; None without a chain; the exception a
    bug in our parsing raised (not the server's fault)."""
    if capture.tls is None or not capture.chain:
        return None
    try:
        leaf = certs.certificate_facts(capture.chain[0], now=now)
        # The leaf's entry comes from its facts: no second parse.
        return leaf, (certs.leaf_entry(leaf),
                      *(certs.chain_entry(der) for der in capture.chain[1:]))
    except Exception as exc:
        return exc


def _verdict(target: Target, capture: Capture, store: TrustStore | None,
             policy: Policy) -> Verdict | Exception | None:
    """The chain's verdict; None without a store or a chain; the exception a bug raised."""
    if store is None or capture.tls is None or not capture.chain:
        return None
    try:
        return verify_chain(capture.decoded or capture.chain, store,
                            server_name=target.server_name, policy=policy)
    except Exception as exc:
        return exc
