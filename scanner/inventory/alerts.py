"""`--fail-on`: which findings make a command exit with EXIT_ALERT, and the counts it names.

    --fail-on expired,untrusted,expiring:14d,error,changed

expired    a certificate the server sent (leaf or chain) is past its not_after
untrusted  the verdict says not trusted (needs a scan with --ca-bundle)
expiring:N a certificate the server sent expires within N (30d, 12h, 2w; a bare number is
           days), counted apart from `expired`
error      the target gave no certificate (any error record, bad lines included)
changed    `diff` only: an endpoint changed materially (see diff.py's MATERIAL events)

Pure: records in, counts out. The status is distinct from 1 (fatal) and 2 (usage).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..wire import Gist
from .results import Record, earliest_expiry

EXIT_ALERT = 3

CONDITIONS = ("expired", "untrusted", "expiring", "error", "changed")
_SPAN = re.compile(r"^(\d+)([hdw]?)$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
          "": timedelta(days=1)}


def parse_span(text: str) -> timedelta:
    """"30d", "12h", "2w", or a bare number of days. ValueError naming the text."""
    match = _SPAN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a span like 30d, 12h or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class FailOn:
    """The conditions chosen; `expiring` is the window, or None when not chosen."""

    expired: bool = False
    untrusted: bool = False
    expiring: timedelta | None = None
    error: bool = False
    changed: bool = False

    @classmethod
    def parse(cls, text: str, *, allowed: tuple[str, ...] = CONDITIONS) -> FailOn:
        """From the flag's value. ValueError naming what is wrong (the CLI says which flag)."""
        chosen: dict[str, object] = {}
        for raw in text.split(","):
            part = raw.strip()
            if not part:
                continue
            name, _, arg = part.partition(":")
            if name not in allowed:
                raise ValueError(f"unknown condition {name!r} (choose from {', '.join(allowed)})")
            if name == "expiring":
                if not arg:
                    raise ValueError("expiring needs a window, e.g. expiring:14d")
                chosen["expiring"] = parse_span(arg)
            elif arg:
                raise ValueError(f"{name} takes no argument")
            else:
                chosen[name] = True
        if not chosen:
            raise ValueError("no condition given")
        return cls(**chosen)  # type: ignore[arg-type]


class Alarm:
    """Counts, over the records (and diff events) seen, each chosen condition that holds."""

    def __init__(self, fail_on: FailOn, *, now: datetime) -> None:
        self._on = fail_on
        self._now = now
        self.counts: Counter[str] = Counter()
        self.which: Counter[str] = Counter()  # expired/expiring by certificate: leaf, chain[1]

    def see(self, record: Record) -> None:
        """One record of a result file."""
        validation = record.get("validation")
        trusted = validation.get("trusted") if isinstance(validation, dict) else None
        first = earliest_expiry(record)
        self._observe(record.get("status") == "ok",
                      trusted if isinstance(trusted, bool) else None,
                      None if first is None else (first.not_after, first.position))

    def see_gist(self, gist: Gist) -> None:
        """One record of a scan as it is written (its gist: no parsing)."""
        expiry = None
        if gist.expires is not None and gist.expires_at is not None:
            expiry = (datetime.fromtimestamp(gist.expires, UTC), gist.expires_at)
        self._observe(gist.status == "ok", gist.trusted, expiry)

    def _observe(self, ok: bool, trusted: bool | None,
                 expiry: tuple[datetime, int] | None) -> None:
        on = self._on
        if on.error and not ok:
            self.counts["error"] += 1
        if on.untrusted and trusted is False:
            self.counts["untrusted"] += 1
        if expiry is None or not (on.expired or on.expiring is not None):
            return
        not_after, position = expiry
        which = "leaf" if position == 0 else f"chain[{position}]"
        if not_after <= self._now:
            if on.expired:
                self.counts["expired"] += 1
                self.which[f"expired {which}"] += 1
        elif on.expiring is not None and not_after <= self._now + on.expiring:
            self.counts["expiring"] += 1
            self.which[f"expiring {which}"] += 1

    def see_change(self, kind: str) -> None:
        if self._on.changed:
            self.counts["changed"] += 1
            self.which[f"changed {kind}"] += 1

    @property
    def tripped(self) -> bool:
        return bool(+self.counts)

    def lines(self) -> list[str]:
        """One line per condition that held, with its count and which certificates."""
        out = []
        for name in CONDITIONS:
            if self.counts[name]:
                detail = ", ".join(f"{key.split(' ', 1)[1]} {n}"
                                   for key, n in sorted(self.which.items())
                                   if key.startswith(name + " "))
                window = (f" within {_span_text(self._on.expiring)}"
                          if name == "expiring" and self._on.expiring else "")
                out.append(f"{name}{window}: {self.counts[name]}"
                           + (f" ({detail})" if detail else ""))
        return out


def _span_text(span: timedelta) -> str:
    if span % timedelta(days=1) == timedelta(0):
        return f"{span.days}d"
    return f"{int(span.total_seconds() // 3600)}h"
