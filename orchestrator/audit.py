"""The audit log: who did what to what, and how it ended — durable and append-only.

    audit_log(orch).audit(principal, action, target, outcome, correlation_id, detail="")

`principal` is an API key id, "anonymous" (no valid key), "local" (auth off) or, for
the pool link, the pool's identity; `action` is "<Service>/<Method>"; `outcome` is
"OK" or the stable error code the caller got. A TLS handshake refused by the
orchestrator's TLS gate is action "tls.handshake", outcome "refused: <why>" (its
caller got no code), written at a bounded rate (common/tls_gate.py, refusals.py).
Entries are written behind through the store's group-commit writer: an audited call
never waits for a commit, and a burst of calls shares a few commits. Nothing updates or deletes an entry (store.py offers
insert and read only; the database refuses the rest).

What is audited depends on `security.audit` (ARCHITECTURE §6):

    off             nothing
    inter-service   the pool link and every AdminService call (lab's default), and
                    every refused request: UNAUTHENTICATED, PERMISSION_DENIED and a
                    job of another tenant answered NOT_FOUND — a refusal is the
                    entry an operator needs most, whatever the level
    all             every authenticated request, refusals included (platform)

`audit()` itself writes whenever the level is not "off"; callers decide which of
their calls the level covers (auth.Guard does it for ClientService and AdminService,
`covers()` says it for everyone else).
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

from common import log
from orchestrator.store import Store, StoreError
from orchestrator.store.store import AuditRow

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

LEVELS = ("off", "inter-service", "all")


class AuditLog:
    """Audit entries for one orchestrator; see the module docstring."""

    def __init__(self, store: Store | None, level: str):
        if level not in LEVELS:
            raise ValueError(f"audit level must be one of {LEVELS}, not {level!r}")
        self.store = store
        self.level = level
        self.written = 0  # entries handed to the store (for tests and metrics)

    @property
    def enabled(self) -> bool:
        return self.level != "off" and self.store is not None

    def covers(self, *, admin: bool = False, inter_service: bool = False,
               refused: bool = False) -> bool:
        """Whether the level audits a call of this kind (any authenticated call
        at "all"; admin, inter-service and refused calls at "inter-service")."""
        if not self.enabled:
            return False
        return self.level == "all" or admin or inter_service or refused

    def audit(self, principal: str, action: str, target: str, outcome: str,
              correlation_id: str, detail: str = "") -> None:
        """Record one entry (write-behind; returns at once). Never raises: a store that
        is closing loses the entry with a log line, never the caller's call."""
        if not self.enabled:
            return
        row = AuditRow(time=time.time(), principal=principal or "anonymous", action=action,
                       target=target, outcome=outcome or "OK",
                       correlation_id=correlation_id, detail=detail)
        try:
            self.store.append_audit([row])
            self.written += 1
        except StoreError as exc:
            log.emit("orchestrator", "audit.lost", f"{action} by {row.principal}: {exc}",
                     level="error", correlation_id=correlation_id)


_LOGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_latest: weakref.ref | None = None  # the audit log of the orchestrator made last


def audit_log(orch: Orchestrator) -> AuditLog:
    """The orchestrator's audit log (one per Orchestrator, made on first use)."""
    global _latest
    found = _LOGS.get(orch)
    if found is None:
        found = _LOGS[orch] = AuditLog(orch.store, orch.cfg.security.audit or "off")
        _latest = weakref.ref(found)
    return found


def audit(principal: str, action: str, target: str, outcome: str, correlation_id: str = "",
          detail: str = "") -> None:
    """An inter-service entry (pool link, enrolment, refused peers) for code that has no
    Orchestrator at hand: it goes to the audit log of the orchestrator this process
    serves (the one made last; a daemon has one), if the level covers inter-service
    calls; otherwise, or before any orchestrator exists, nowhere."""
    log_ = _latest() if _latest is not None else None
    if log_ is not None and log_.covers(inter_service=True):
        log_.audit(principal, action, target, outcome, correlation_id, detail)
