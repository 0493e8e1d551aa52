"""Refusals written to the audit log at a bounded rate.

A refusal is the entry an operator needs most, but whoever is refused controls how
many there are: a script that opens thousands of connections without a certificate
must not grow the store (or this process) without limit. So, per window (a minute):

    the first `per_address` refusals from one address, and `total` in all, are
    written one by one; the rest are counted, and when the window ends each address
    with uncounted refusals gets one summary entry ("refused ×N ...; last: <outcome>")

Memory is bounded too: at most `addresses` addresses are counted one by one per window;
refusals from any further address share one summary (address "*").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# principal, action, target, outcome, correlation_id, detail: AuditLog.audit's arguments
Write = Callable[[str, str, str, str, str, str], None]


@dataclass
class _Held:
    count: int
    principal: str
    action: str
    target: str
    outcome: str


class RefusalLog:
    """See the module docstring. `write` is the audit log's `audit`."""

    def __init__(self, write: Write, *, per_address: int = 10, total: int = 200,
                 window_s: float = 60.0, addresses: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.per_address, self.total, self.window_s = per_address, total, window_s
        self.addresses = addresses
        self.clock = clock
        self._start = clock()
        self._written = 0
        self._by_address: dict[str, int] = {}
        self._held: dict[str, _Held] = {}

    def refuse(self, address: str, principal: str, action: str, target: str, outcome: str,
               correlation_id: str = "", detail: str = "") -> bool:
        """Record one refusal of a caller at `address` (a host, without the port);
        False when it was only counted, for the window's summary."""
        if self.clock() - self._start >= self.window_s:
            self.flush()
        seen = self._by_address.get(address)
        if seen is None and len(self._by_address) >= self.addresses:
            address, seen = "*", self.per_address  # too many addresses: count, never write
        if seen is not None and seen >= self.per_address or self._written >= self.total:
            held = self._held.get(address)
            if held is None:
                held = self._held[address] = _Held(0, principal, action, target, outcome)
            held.count += 1
            held.principal, held.action, held.outcome = principal, action, outcome
            return False
        self._by_address[address] = (seen or 0) + 1
        self._written += 1
        self.write(principal, action, target, outcome, correlation_id, detail)
        return True

    def flush(self) -> None:
        """End the window: one summary entry per address with uncounted refusals."""
        held, self._held = self._held, {}
        self._by_address.clear()
        self._written = 0
        self._start = self.clock()
        for address, h in held.items():
            self.write(h.principal, h.action, h.target,
                       f"refused ×{h.count} (not written one by one: over {self.per_address} from "
                       f"one address or {self.total} in all within {self.window_s:g} s); "
                       f"last: {h.outcome}",
                       address, "")

    def due(self) -> bool:
        """Whether the window is over and a summary is waiting (for a periodic flush)."""
        return bool(self._held) and self.clock() - self._start >= self.window_s
