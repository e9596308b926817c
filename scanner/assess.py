"""What a capture says: the facts of its certificates and, with a trust store, the verdict,
as one record. Pure: values in (a Target, a Capture), a Record out.
"""

from __future__ import annotations

from datetime import datetime

from . import certs
from .errors import internal
from .record import capture_record
from .targets import Target
from .values import Capture, Record, Stage
from .verify import Policy, TrustStore, verify_chain


def assess(target: Target, capture: Capture, *, now: datetime, store: TrustStore | None,
           policy: Policy = "default") -> Record:
    """The record of one probe: certificate facts and, with a trust store, the verdict
    (under verification ``policy``). A failure to judge the chain is a bug of ours: an
    `internal` record at stage `certificate`, never a wrong fact."""
    if capture.tls is None or not capture.chain:
        return capture_record(target, capture, now=now)
    try:
        facts = certs.certificate_facts(capture.chain[0], now=now)
        # The leaf's entry comes from its facts: no second parse.
        chain = (certs.leaf_entry(facts),
                 *(certs.chain_entry(der) for der in capture.chain[1:]))
        verdict = None
        if store is not None:
            verdict = verify_chain(capture.decoded or capture.chain, store,
                                   server_name=target.server_name, policy=policy)
    except Exception as exc:  # a bug in our parsing, not the server's fault
        return capture_record(target, capture, now=now,
                              failure=internal(exc, Stage.CERTIFICATE))
    return capture_record(target, capture, now=now, certificate=facts, chain=chain,
                          validation=verdict)
