"""What the user sees on stderr: a live line on a terminal, and a summary at the end.

Records only ever go to the output; this module writes nothing but stderr.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

from .wire import Gist

_REFRESH = 0.5  # seconds between redraws of the live line
SOON = 30 * 86400  # "expiring soon" in the summary: within 30 days of the scan's start


class Progress:
    def __init__(self, *, enabled: bool, stream: TextIO | None) -> None:
        """stream: stderr; None when the process started with it closed (nothing is
        written then, nor with `enabled` False)."""
        self._stream = stream
        self._enabled = enabled and stream is not None
        self._live = stream is not None and self._enabled and stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0
        self.done = 0
        self.by_status: Counter[str] = Counter()
        self.by_error: Counter[str] = Counter()
        self.by_verdict: Counter[str] = Counter()  # "trusted", or the reason it is not
        self.expired = 0  # a certificate the server sent is past its not_after
        self.expiring = 0  # ... or will be within SOON
        self._soon = time.time() + SOON

    def count(self, gist: Gist) -> None:
        self.done += 1
        self.by_status[gist.status] += 1
        if gist.error_type:
            self.by_error[gist.error_type] += 1
        if gist.trusted is not None:
            self.by_verdict["trusted" if gist.trusted else gist.reason or "untrusted"] += 1
        if gist.expires is not None and gist.expires <= self._soon:
            if gist.expires <= self._soon - SOON:
                self.expired += 1
            else:
                self.expiring += 1
        if self._live:
            now = time.monotonic()
            if now - self._drawn >= _REFRESH:
                self._drawn = now
                self._write("\r\x1b[2K" + self._line(now))

    def note(self, message: str) -> None:
        self._write(("\r\x1b[2K" if self._live else "") + f"certscan: {message}\n")

    def disable(self) -> None:
        """Nothing more on stderr (a live line is cleared first)."""
        if self._live:
            self._write("\r\x1b[2K")
        self._enabled = self._live = False

    def _write(self, text: str) -> None:
        if not self._enabled or self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr failing (closed pipe, full disk) ends no scan
            self._enabled = self._live = False

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        errors = " ".join(f"{k}={v}" for k, v in self.by_error.most_common(4))
        return (f"{self.done} done, {self.done / elapsed:,.0f}/s, "
                f"ok={self.by_status['ok']} {errors}").rstrip()

    def summary(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.by_error.items())) or "none"
        text = (f"{self.done} records in {elapsed:.2f}s ({rate:,.1f} targets/s): "
                f"ok {self.by_status['ok']}, error {self.by_status['error']} "
                f"(by type: {errors})")
        if self.by_verdict:
            untrusted = {k: v for k, v in self.by_verdict.items() if k != "trusted"}
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(untrusted.items()))
            text += (f"; verdicts: trusted {self.by_verdict['trusted']}, "
                     f"untrusted {sum(untrusted.values())}"
                     + (f" ({reasons})" if reasons else ""))
        return (text + f"; certificates expired {self.expired}, "
                f"expiring within 30 days {self.expiring}")

    def summary_fields(self) -> dict[str, object]:
        """The summary as one JSON object's fields (`--summary json`), for machines."""
        elapsed = time.monotonic() - self._started
        return {
            "event": "summary",
            "records": self.done,
            "elapsed_s": round(elapsed, 3),
            "ok": self.by_status["ok"],
            "error": self.by_status["error"],
            "errors_by_type": dict(sorted(self.by_error.items())),
            "verdicts": dict(sorted(self.by_verdict.items())),
            "expired": self.expired,
            "expiring_30d": self.expiring,
        }

    def finish(self) -> None:
        self._write(("\r\x1b[2K" if self._live else "") + f"certscan: {self.summary()}\n")
