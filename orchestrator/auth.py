"""API keys, and the guard every ClientService and AdminService call passes.

    key       lo_<id>_<secret>     id: 16 hex chars, public (lists show "lo_<id>");
                                   secret: 43 url-safe base64 characters (256 bits)
    at rest   ApiKeyRow: a random 16-byte salt and HMAC-SHA256(salt, secret), hex —
              never the secret, which is shown once, when the key is created
    on a call gRPC metadata `authorization: Bearer lo_<id>_<secret>`

Contract, when `security.auth` is on (lab and platform by default):
- Every method of a `guarded` servicer authenticates before its handler runs.
  No key, a malformed, unknown or wrong key, or a revoked one: UNAUTHENTICATED.
  A client-scoped key on AdminService: PERMISSION_DENIED. Admin keys may call both.
- A refused call never reaches its handler, so it changes nothing but the audit log.
- The handler finds its caller in `principal()`, a contextvar set for the call.
With auth off (home) every call is the trusted `LOCAL` principal, which sees all.

Cost: verified keys are cached for CACHE_TTL_S, by id, with a sha256 of the presented
key (not the key): a cached call costs a parse, one sha256 and a dict lookup, and
never touches the database. Revoking through this orchestrator (AdminService) drops the
entry at once; a revocation written by another process (the CLI) takes effect within
CACHE_TTL_S. Unknown ids are remembered for UNKNOWN_TTL_S, so garbage keys do not turn
into one database read each. Last use is recorded write-behind, at most once per
TOUCH_EVERY_S per key, and only for calls the key was allowed to make.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import hashlib
import hmac
import inspect
import re
import secrets
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from common.errors import OrchError
from llama_orch.v1 import events_pb2
from orchestrator.audit import AuditLog, audit_log
from orchestrator.store import Store, StoreError
from orchestrator.store.store import ApiKeyRow

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

SCOPES = ("client", "admin")
CACHE_TTL_S = 30.0
UNKNOWN_TTL_S = 5.0
TOUCH_EVERY_S = 60.0
_CACHE_MAX = 10_000
_KEY = re.compile(r"lo_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


# ---- keys ------------------------------------------------------------------------------

def hash_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def new_key(tenant_id: str, scope: str, name: str = "") -> tuple[ApiKeyRow, str]:
    """A fresh key for the tenant: (its row, the plaintext `lo_<id>_<secret>`).
    The plaintext exists only in the return value; store the row, show the key once."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_hex(16)
    row = ApiKeyRow(id=key_id, tenant_id=tenant_id, scope=scope, prefix=f"lo_{key_id}",
                    salt=salt, hash=hash_secret(salt, secret), created_at=time.time(),
                    name=name)
    return row, f"lo_{key_id}_{secret}"


def parse_key(token: str) -> tuple[str, str] | None:
    """`lo_<id>_<secret>` -> (id, secret); None for anything else."""
    m = _KEY.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


# ---- who is calling ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one RPC: an API key (its id, tenant and scope), or LOCAL."""

    key_id: str
    tenant_id: str
    scope: str  # "client" | "admin" | "local" (auth off)

    @property
    def sees_all(self) -> bool:
        """Admin keys and the local operator see every tenant's jobs."""
        return self.scope != "client"

    @property
    def name(self) -> str:
        """How the audit log names it."""
        return self.key_id or "local"


LOCAL = Principal("", "", "local")
ANONYMOUS = "anonymous"


@dataclass(slots=True)
class Call:
    """What the guard knows about the RPC in progress (one per call, in a contextvar)."""

    action: str
    admin: bool
    target: str
    correlation_id: str
    principal: Principal = LOCAL
    outcome: str = ""  # the stable code the caller got; "" until known
    refusal: str = ""  # why the call was refused, for the audit log
    # The guard that records it, and whether it has: an error is recorded before its
    # status is sent (grpc.aio's abort sends it at once, before the handler's cleanup
    # runs), so a caller that got the error finds the entry after one flush.
    guard: Guard | None = None
    recorded: bool = False


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("llama_orch_call",
                                                                   default=None)


def current_call() -> Call | None:
    return _CALL.get()


def principal() -> Principal:
    """The caller of the RPC being handled (LOCAL outside a guarded call)."""
    call = _CALL.get()
    return call.principal if call is not None else LOCAL


def note_outcome(code: str) -> None:
    """Tell the guard which stable code the caller is about to get; it is recorded now,
    before the caller can see it (see Call.guard)."""
    call = _CALL.get()
    if call is not None:
        call.outcome = code
        if call.guard is not None and not call.recorded:
            call.guard.record(call)


def note_refusal(why: str) -> None:
    """Mark the call as refused for a security reason (audited at every level but off);
    the caller still gets whatever error the handler raises."""
    call = _CALL.get()
    if call is not None:
        call.refusal = why


class Refused(OrchError):
    """An authentication or authorization failure, with what the audit log records."""

    def __init__(self, code: str, message: str, *, who: str = ANONYMOUS, why: str = ""):
        super().__init__(code, message)
        self.who = who
        self.why = why or message


def _unauthenticated(message: str, *, who: str = ANONYMOUS, why: str = "") -> Refused:
    return Refused("UNAUTHENTICATED", message, who=who, why=why)


# ---- verifying keys ---------------------------------------------------------------------

@dataclass(slots=True)
class _Verified:
    principal: Principal
    digest: bytes  # sha256 of the whole presented key
    until: float  # monotonic
    touched: float = 0.0  # monotonic time of the last last_used_at write


class Authenticator:
    """Turns an `authorization` value into a Principal; see the module docstring."""

    def __init__(self, store: Store | None):
        self.store = store
        self._verified: dict[str, _Verified] = {}
        self._unknown: dict[str, float] = {}
        self.lookups = 0  # database reads (for tests: the cache works)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was revoked here); the next call rereads it."""
        self._verified.pop(key_id, None)
        self._unknown.pop(key_id, None)

    async def authenticate(self, authorization: str) -> Principal:
        """The key's principal, or Refused(UNAUTHENTICATED); OrchError(UNAVAILABLE)
        when the store cannot be read."""
        if not authorization:
            raise _unauthenticated("this call needs an API key: send gRPC metadata "
                                   "`authorization: Bearer lo_...`", why="no key")
        scheme, _, token = authorization.strip().partition(" ")
        parsed = parse_key(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise _unauthenticated("the API key is not valid: expected "
                                   "`authorization: Bearer lo_<id>_<secret>`",
                                   why="malformed key")
        key_id, secret = parsed
        digest = hashlib.sha256(token.strip().encode()).digest()
        now = time.monotonic()
        hit = self._verified.get(key_id)
        if hit is not None and hit.until > now and hmac.compare_digest(hit.digest, digest):
            return hit.principal
        if self._unknown.get(key_id, 0.0) > now:
            raise _unauthenticated("the API key is not valid", why=f"unknown key id {key_id}")
        row = await self._lookup(key_id)
        if row is None:
            self._remember_unknown(key_id, now)
            raise _unauthenticated("the API key is not valid", why=f"unknown key id {key_id}")
        if not hmac.compare_digest(hash_secret(row.salt, secret), row.hash):
            raise _unauthenticated("the API key is not valid",
                                   why=f"wrong secret for key id {key_id}")
        if row.revoked:
            self.forget(key_id)
            raise _unauthenticated("the API key has been revoked", who=key_id, why="revoked key")
        verified = _Verified(Principal(row.id, row.tenant_id, row.scope), digest,
                             now + CACHE_TTL_S)
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[key_id] = verified
        return verified.principal

    async def _lookup(self, key_id: str) -> ApiKeyRow | None:
        if self.store is None:
            return None
        self.lookups += 1
        try:
            return await self.store.get_api_key(key_id)
        except StoreError as exc:
            raise OrchError("UNAVAILABLE", f"cannot check the API key: {exc}") from None

    def _remember_unknown(self, key_id: str, now: float) -> None:
        if len(self._unknown) >= _CACHE_MAX:
            self._unknown.clear()
        self._unknown[key_id] = now + UNKNOWN_TTL_S

    def used(self, who: Principal) -> None:
        """Note that the key was used for an allowed call (its last_used_at, throttled;
        a refused call leaves it alone, like everything else)."""
        verified = self._verified.get(who.key_id)
        now = time.monotonic()
        if (self.store is None or verified is None
                or verified.touched and now - verified.touched < TOUCH_EVERY_S):
            return
        verified.touched = now
        try:
            self.store.touch_api_key(verified.principal.key_id, time.time())
        except StoreError:
            pass  # closing: the last-use time is a convenience, not a record


# ---- the guard ---------------------------------------------------------------------------

_TARGET_FIELDS = ("job_id", "key_id", "tenant_id", "name", "model", "pool_id", "worker_id")


def _target(request: Any) -> str:
    fields = request.DESCRIPTOR.fields_by_name
    for name in _TARGET_FIELDS:
        if name in fields and (value := getattr(request, name)):
            return str(value)
    if "spec" in fields:
        return request.spec.model
    return ""


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return ""


class Guard:
    """Authentication, authorization and auditing for one orchestrator's RPCs."""

    def __init__(self, enabled: bool, keys: Authenticator, audit: AuditLog, facts=None):
        self.enabled = enabled
        self.keys = keys
        self.audit = audit
        self.facts = facts

    async def begin(self, action: str, admin: bool, request: Any,
                    context: grpc.aio.ServicerContext) -> Call:
        """Start a call: who it is, whether it may; aborts the RPC when refused."""
        call = Call(action, admin, _target(request),
                    _metadata(context, "x-correlation-id")[:128] or uuid.uuid4().hex, guard=self)
        _CALL.set(call)
        if not self.enabled:
            return call
        try:
            call.principal = await self.keys.authenticate(_metadata(context, "authorization"))
            if admin and call.principal.scope != "admin":
                raise Refused("PERMISSION_DENIED",
                              f"{action.rpartition('/')[2]} needs an admin-scoped API key",
                              who=call.principal.key_id, why="client key on AdminService")
            self.keys.used(call.principal)
        except Refused as err:
            call.outcome, call.refusal = err.code, err.why
            self.record(call, who=err.who)
            if self.facts is not None:
                self.facts.publish(events_pb2.FACT_KIND_AUTH_DENIED, err.why,
                                   level=events_pb2.FACT_LEVEL_WARNING,
                                   correlation_id=call.correlation_id, action=action,
                                   principal=err.who, error_code=err.code)
            await err.abort(context)
        except OrchError as err:
            call.outcome = err.code
            await err.abort(context)
        return call

    def end(self, call: Call, error: BaseException | None,
            context: grpc.aio.ServicerContext) -> None:
        """Finish a call: its outcome into the audit log, if the level covers it."""
        if call.recorded:
            return
        if not call.outcome:
            call.outcome = "OK" if error is None else _outcome_of(error, context)
        self.record(call)

    def record(self, call: Call, who: str = "") -> None:
        """The call's audit entry (once), if the level covers it."""
        call.recorded = True
        if not self.audit.covers(admin=call.admin, refused=bool(call.refusal)):
            return
        p = call.principal
        detail = f"tenant={p.tenant_id} scope={p.scope}" if p.key_id else ""
        if call.refusal:
            detail = f"{detail} refused: {call.refusal}".strip()
        self.audit.audit(who or p.name, call.action, call.target, call.outcome,
                         call.correlation_id, detail)


def _outcome_of(error: BaseException, context: grpc.aio.ServicerContext) -> str:
    if isinstance(error, OrchError):
        return error.code
    code = context.code()
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code.name
    if not isinstance(error, Exception):  # GeneratorExit, CancelledError
        return "CANCELLED"  # the client went away (or the server is stopping)
    return "INTERNAL"


_GUARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guard_of(orch: Orchestrator) -> Guard:
    """The orchestrator's guard (one per Orchestrator, shared by its servicers, so a
    revocation through AdminService reaches ClientService's cache at once)."""
    found = _GUARDS.get(orch)
    if found is None:
        found = _GUARDS[orch] = Guard(bool(orch.cfg.security.auth), Authenticator(orch.store),
                                      audit_log(orch), orch.facts)
    return found


def guarded(service: ServiceDescriptor, *, admin: bool):
    """Class decorator: every method of `service` on the servicer passes its `guard`
    (an attribute of the instance) first — methods the class leaves to the generated
    base (UNIMPLEMENTED) included, so nothing answers an unauthenticated caller."""
    def apply(cls: type) -> type:
        for method in service.methods:
            action = f"{service.name}/{method.name}"
            fn = getattr(cls, method.name)
            wrap = _stream if method.server_streaming else _unary
            setattr(cls, method.name, wrap(fn, action, admin))
        return cls
    return apply


def _unimplemented(fn) -> bool:
    return not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))


def _unary(fn, action: str, admin: bool):
    missing = _unimplemented(fn)

    @functools.wraps(fn)
    async def handler(self, request, context):
        guard: Guard = self.guard
        call = await guard.begin(action, admin, request, context)
        error: BaseException | None = None
        try:
            if missing:
                call.outcome = "UNIMPLEMENTED"
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{action} is not implemented")
            return await fn(self, request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            guard.end(call, error, context)
    return handler


def _stream(fn, action: str, admin: bool):
    @functools.wraps(fn)
    async def handler(self, request, context):
        guard: Guard = self.guard
        call = await guard.begin(action, admin, request, context)
        error: BaseException | None = None
        try:
            # aclosing: if the wrapper is closed, the handler's own cleanup (Generate
            # cancels its job when the client goes) runs now, not when collected.
            async with contextlib.aclosing(fn(self, request, context)) as messages:
                async for message in messages:
                    yield message
        except BaseException as exc:
            error = exc
            raise
        finally:
            guard.end(call, error, context)
    return handler
