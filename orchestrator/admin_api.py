"""AdminService: operator actions. Each one shows up as a fact.

Every AdminService method is implemented (tests/orchestrator/test_auth.py checks that
none is left to the generated base class, which would answer UNIMPLEMENTED). Errors
carry stable codes: MODEL_NOT_FOUND (not in the catalog),
POOL_UNAVAILABLE (no such pool connected), DEVICE_NOT_FOUND (not a device of the pool,
or too few for the model's mask), MODEL_PINNED (evicting a pinned model's files),
INVALID_ARGUMENT (a malformed request), and whatever a pool answers a command with
(e.g. INSUFFICIENT_MEMORY from a start's preflight), passed through unchanged.

Pins live in `Orchestrator.pins` (model ref -> {(pool, device)}) and in the store's pins
table (0005), written first, so a pin survives a restart (Orchestrator.start loads
them): a pinned model's workers on its pinned devices are never evicted (scheduler,
validator).

Every method needs an admin-scoped API key when auth is on (orchestrator/auth.py;
a client key gets PERMISSION_DENIED), and every call is audited unless the audit log
is off. Tenants and API keys live in the store; a key's secret is returned once, by
CreateApiKey, and only its hash is kept. `llama-orch keys` / `llama-orch tenants`
(cli/keys.py) write the same tables directly, to bootstrap the first admin key.
SetQuota and AddCredit change the tenants table (each an AUDIT fact with the new
values); ExportUsage and GetEarnings read the usage ledger (orchestrator/usage.py).
The scheduler policy RPCs (GetPolicy ... ActivatePolicy) use orchestrator/policies.py:
a policy that does not compile is POLICY_INVALID, any change in platform mode
POLICY_FORBIDDEN; an activation is a POLICY_CHANGED fact and an AUDIT fact.
CreateJoinToken, EnrollProviderKey and RevokeCertificate run what `llama-orch ca
join-token|enroll-provider|revoke` run (orchestrator/join.py, on the files in
pki_dir): malformed input is INVALID_ARGUMENT naming the field, no CA in pki_dir is
CONFIG_INVALID (security.pki_dir); each success is an AUDIT fact (a token's secret is
never in one).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid

from google.protobuf import timestamp_pb2

from common import pki
from common.config import pki_dir
from common.errors import OrchError
from common.timestamps import to_seconds, to_timestamp, to_timestamp_or_none
from llama_orch.v1 import admin_pb2, admin_pb2_grpc, events_pb2 as F, pool_link_pb2
from orchestrator import auth, join, policies, ratelimit, usage
from orchestrator.client_api import unary
from orchestrator.core import Orchestrator
from orchestrator.lua_policy import PolicyProblem, decision_fields, dry_run, validate_source
from orchestrator.registry import PoolRecord, WorkerRecord
from orchestrator.store import DuplicateKey, Store, StoreError
from orchestrator.store.store import (ApiKeyRow, AuditRow, EarningRow, PolicyVersionRow, TenantRow,
                                      UsageRow)

_SCOPE_OF = {admin_pb2.API_KEY_SCOPE_CLIENT: "client", admin_pb2.API_KEY_SCOPE_ADMIN: "admin"}
_SCOPE_PB = {v: k for k, v in _SCOPE_OF.items()}
MAX_AUDIT_PAGE = 1000
# ExportUsage answers in one message: a bigger period is refused (the CLI has no cap).
MAX_EXPORT_RECORDS = 50_000
# A join token is redeemed by a pool manager starting now, not next month.
MAX_JOIN_TOKEN_TTL_S = 7 * 24 * 3600
# An Ed25519 public key as PEM is ~113 bytes; this leaves room for DER and comments.
MAX_PUBLIC_KEY_BYTES = 4096


def new_tenant_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def tenant_proto(row: TenantRow) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        tenant_id=row.id, name=row.name, credit_tokens=row.credit_tokens,
        created_at=to_timestamp(row.created_at),
        quota=admin_pb2.Quota(max_concurrent_jobs=row.max_concurrent_jobs or 0,
                              max_vram_bytes=row.vram_ceiling_bytes or 0,
                              token_budget=row.token_budget or 0, auto_refill=row.auto_refill,
                              submit_rate_per_second=row.submit_rate_per_second or 0.0))


def key_proto(row: ApiKeyRow, secret: str = "") -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(key_id=row.id, tenant_id=row.tenant_id, scope=_SCOPE_PB[row.scope],
                            name=row.name, created_at=to_timestamp(row.created_at),
                            revoked=row.revoked, secret=secret)


def audit_proto(row: AuditRow) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(id=row.id, time=to_timestamp(row.time), principal=row.principal,
                                action=row.action, target=row.target, outcome=row.outcome,
                                correlation_id=row.correlation_id)


def usage_proto(row: UsageRow) -> admin_pb2.UsageRecord:
    return admin_pb2.UsageRecord(
        job_id=row.job_id, tenant_id=row.tenant_id, model_ref=row.model_ref,
        pool_id=row.pool_id, provider_id=row.provider_id, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, duration_ms=row.duration_ms,
        vram_seconds=row.vram_byte_seconds, finished_at=to_timestamp(row.finished_at))


def earning_proto(row: EarningRow) -> admin_pb2.Earning:
    return admin_pb2.Earning(pool_id=row.pool_id, provider_id=row.provider_id,
                             tokens=row.prompt_tokens + row.completion_tokens,
                             vram_seconds=row.vram_byte_seconds, jobs=row.jobs)


def _period(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> tuple[float, float]:
    """[start, end) in epoch seconds; an unset start is the beginning, an unset end now."""
    a, b = to_seconds(start), to_seconds(end)
    if b and a >= b:
        raise OrchError("INVALID_ARGUMENT", "the period is empty: start must be before end",
                        param="start")
    return a, b


def _quota(q: admin_pb2.Quota) -> dict:
    """A Quota message as tenants-table columns (0 = unlimited -> None)."""
    rate = q.submit_rate_per_second
    if not math.isfinite(rate) or rate < 0:
        raise OrchError("INVALID_ARGUMENT", "submit_rate_per_second must be a finite number "
                        ">= 0 (0: no limit)", param="quota.submit_rate_per_second")
    return {"max_concurrent_jobs": q.max_concurrent_jobs or None,
            "vram_ceiling_bytes": q.max_vram_bytes or None,
            "token_budget": q.token_budget or None, "auto_refill": q.auto_refill,
            "submit_rate_per_second": rate or None}


def _unavailable(exc: StoreError) -> OrchError:
    return OrchError("UNAVAILABLE", f"the state store failed: {exc}")


@auth.guarded(admin_pb2.DESCRIPTOR.services_by_name["AdminService"], admin=True)
class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, orch: Orchestrator, guard: auth.Guard | None = None):
        self.orch = orch
        self.guard = guard or auth.guard_of(orch)

    def _pool(self, pool_id: str) -> PoolRecord:
        pool = self.orch.registry.pools.get(pool_id)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", f"no pool {pool_id!r} is connected",
                            param="pool_id")
        return pool

    def _pools(self, pool_id: str) -> list[PoolRecord]:
        """The named pool, or every connected one when the request names none."""
        return [self._pool(pool_id)] if pool_id else list(self.orch.registry.pools.values())

    @staticmethod
    def _devices(pool: PoolRecord, device_ids) -> tuple[str, ...]:
        devices = tuple(device_ids)
        if len(set(devices)) != len(devices):
            raise OrchError("INVALID_ARGUMENT", f"device_ids repeat a device: {list(devices)}",
                            param="device_ids")
        known = {d.id for d in pool.inventory.devices}
        if unknown := [d for d in devices if d not in known]:
            raise OrchError("DEVICE_NOT_FOUND", f"pool {pool.pool_id} has no devices {unknown}",
                            param="device_ids")
        return devices

    # ---- pins ------------------------------------------------------------------------

    @unary
    async def PinModel(self, request, context):
        """Pin the model to devices of one pool (none named: all of them), replacing its
        earlier pin on that pool. Its workers there are never evicted. Durable (the
        store's pins table) before it answers: a pin outlives a restart."""
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        if not request.pool_id:
            raise OrchError("INVALID_ARGUMENT", "pool_id is required", param="pool_id")
        pool = self._pool(request.pool_id)
        devices = self._devices(pool, request.device_ids) or tuple(
            d.id for d in pool.inventory.devices)
        created = time.time()
        async with orch.pins_lock:
            if orch.store is not None:
                try:
                    await orch.store.set_pin(model.ref, pool.pool_id, devices, created)
                except StoreError as exc:
                    raise _unavailable(exc) from None
            keys = {k for k in orch.pins.get(model.ref, ()) if k[0] != pool.pool_id}
            orch.pins[model.ref] = keys | {(pool.pool_id, d) for d in devices}
        orch.facts.publish(F.FACT_KIND_MODEL_PINNED, f"pinned to {', '.join(devices)}",
                           pool_id=pool.pool_id, model_ref=model.ref, device_ids=list(devices))
        orch.wake()
        return admin_pb2.PinModelResponse(pin=admin_pb2.Pin(
            model_ref=model.ref, pool_id=pool.pool_id, device_ids=list(devices),
            created_at=to_timestamp(created)))

    @unary
    async def UnpinModel(self, request, context):
        """Drop the model's pin on one pool (none named: on every pool). Idempotent; the
        pool need not be connected, nor the model still be in the catalog (a pin loaded
        from the store is named by its model ref then)."""
        orch = self.orch
        ref = request.model if request.model in orch.pins else \
            orch.catalog.resolve(request.model).ref
        async with orch.pins_lock:
            keys = orch.pins.get(ref, set())
            kept = {k for k in keys if request.pool_id and k[0] != request.pool_id}
            if keys - kept and orch.store is not None:
                try:
                    await orch.store.delete_pins(ref, request.pool_id)
                except StoreError as exc:
                    raise _unavailable(exc) from None
            if kept:
                orch.pins[ref] = kept
            else:
                orch.pins.pop(ref, None)
        dropped = keys - kept
        for pool_id in sorted({p for p, _ in dropped}):
            devices = sorted(d for p, d in dropped if p == pool_id)
            orch.facts.publish(F.FACT_KIND_MODEL_UNPINNED, f"unpinned from {', '.join(devices)}",
                               pool_id=pool_id, model_ref=ref, device_ids=devices)
        if dropped:
            orch.wake()  # what was pinned may be evicted now, for queued work
        return admin_pb2.UnpinModelResponse()

    # ---- workers -----------------------------------------------------------------------

    @unary
    async def StartWorker(self, request, context):
        """Start one worker over the model's mask: the named devices, else the pool's
        `device_count` devices with the most free memory. The pool's preflight decides
        whether it fits; its refusal comes back with the pool's code."""
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        pool = self._pool(request.pool_id) if request.pool_id else next(
            iter(orch.registry.pools.values()), None)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", "no pool is connected", param="pool_id")
        devices = self._devices(pool, request.device_ids)
        k = model.device_count
        if not devices:
            ranked = sorted(orch.registry.pool_view(pool).devices,
                            key=lambda d: (-d.free_bytes, d.device_id))
            devices = tuple(d.device_id for d in ranked[:k])
        if len(devices) != k:
            code = "DEVICE_NOT_FOUND" if not request.device_ids else "INVALID_ARGUMENT"
            raise OrchError(code, f"{model.name} runs on {k} device(s) per worker (tensor "
                            f"parallelism); got {len(devices)} on pool {pool.pool_id}",
                            param="device_ids")
        worker = WorkerRecord("w-" + uuid.uuid4().hex[:12], pool.pool_id, model.ref, devices,
                              model.memory_estimate_bytes)
        orch.registry.workers[worker.worker_id] = worker
        err = await orch._start_worker(worker, dict(request.engine_options), by_operator=True)
        if err is not None:
            raise err
        return admin_pb2.StartWorkerResponse(worker=worker.to_proto())

    @unary
    async def DrainPool(self, request, context):
        """Drain (or undrain) a pool: no new workers or jobs go there; running jobs finish.
        The scheduler sees a draining pool as unavailable (registry.pool_view)."""
        orch = self.orch
        pool = orch.registry.pools.get(request.pool_id)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", f"no pool {request.pool_id!r} is connected",
                            param="pool_id")
        pool.draining = request.drain
        orch.facts.publish(F.FACT_KIND_POOL_DRAINING,
                           f"pool {pool.pool_id} {'draining' if request.drain else 'undrained'}",
                           pool_id=pool.pool_id, draining=request.drain)
        orch.wake()
        return admin_pb2.DrainPoolResponse(
            pool=pool.to_proto(orch.registry.workers_of(pool.pool_id)))

    @unary
    async def StopWorker(self, request, context):
        w = self.orch.registry.workers.get(request.worker_id)
        if w is None:
            raise OrchError("NOT_FOUND", f"no worker {request.worker_id!r}", param="worker_id")
        pool = self._pool(w.pool_id)
        result = await pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
            worker_id=w.worker_id, force=request.force))
        if not result.ok:
            raise OrchError.from_detail(result.error)
        return admin_pb2.StopWorkerResponse()

    # ---- model files ---------------------------------------------------------------------

    @unary
    async def PreloadModel(self, request, context):
        """Ask the pool (none named: every pool) to keep the model's files in RAM."""
        model = self.orch.catalog.resolve(request.model)
        await self._command(self._pools(request.pool_id), model.ref, "preload", preload_model=
                            pool_link_pb2.PreloadModelCommand(model_ref=model.ref))
        return admin_pb2.PreloadModelResponse()

    @unary
    async def EvictModel(self, request, context):
        """Ask the pool (none named: every pool) to drop the model's files from RAM (and
        from its disk cache with from_disk). Refused where the model is pinned."""
        model = self.orch.catalog.resolve(request.model)
        pools = self._pools(request.pool_id)
        pinned = {p for p, _ in self.orch.pins.get(model.ref, ())}
        if on := sorted(pinned & {p.pool_id for p in pools}):
            raise OrchError("MODEL_PINNED", f"{model.name} is pinned on {', '.join(on)}; "
                            "unpin it first", param="model")
        await self._command(pools, model.ref, "evict_model", evict_model=
                            pool_link_pb2.EvictModelCommand(model_ref=model.ref,
                                                            from_disk=request.from_disk))
        return admin_pb2.EvictModelResponse()

    async def _command(self, pools: list[PoolRecord], model_ref: str, action: str,
                       **command) -> None:
        """Send one command to each pool; raise the first pool's refusal."""
        if not pools:
            raise OrchError("POOL_UNAVAILABLE", "no pool is connected", param="pool_id")
        for pool in pools:
            self.orch.facts.publish(F.FACT_KIND_DECISION_TAKEN, "operator request",
                                    pool_id=pool.pool_id, model_ref=model_ref, action=action)
        results = await asyncio.gather(*(pool.command(**command) for pool in pools))
        for result in results:
            if not result.ok:
                raise OrchError.from_detail(result.error)

    # ---- tenants, API keys, audit log ---------------------------------------------------

    @property
    def _store(self) -> Store:
        if self.orch.store is None:
            raise OrchError("UNAVAILABLE", "this orchestrator runs without a state store")
        return self.orch.store

    def _changed(self, message: str, **attributes) -> None:
        """An admin change is a fact (AUDIT: shown to admins only, see tenancy.py)."""
        call = auth.current_call()
        self.orch.facts.publish(F.FACT_KIND_AUDIT, message,
                                correlation_id=call.correlation_id if call else "",
                                principal=auth.principal().name, **attributes)

    @unary
    async def CreateTenant(self, request, context):
        """A new tenant with a unique name; quota fields that are 0 mean unlimited."""
        name = request.name.strip()
        if not name or len(name) > 255 or not name.isprintable():
            raise OrchError("INVALID_ARGUMENT", "a tenant needs a printable name of 1 to 255 "
                            "characters", param="name")
        row = TenantRow(id=new_tenant_id(), name=name, created_at=time.time(),
                        **_quota(request.quota))
        try:
            await self._store.create_tenant(row)
        except DuplicateKey:
            raise OrchError("INVALID_ARGUMENT", f"a tenant named {name!r} exists",
                            param="name") from None
        except StoreError as exc:
            raise _unavailable(exc) from None
        ratelimit.limiter_of(self.orch).set_rate(row.id, row.submit_rate_per_second)
        self.orch.tenant_limits_changed(row.id, row)  # the scheduler's quotas (quota.py)
        self._changed(f"tenant {row.id} created", tenant_id=row.id)
        return admin_pb2.CreateTenantResponse(tenant=tenant_proto(row))

    @unary
    async def SetQuota(self, request, context):
        """Replace the tenant's quota as a whole (a field at 0 is unlimited). The
        submission rate applies from the tenant's next submission; the other limits are
        the scheduler's, and never refuse a submission."""
        quota = _quota(request.quota)
        try:
            row = await self._store.set_quota(request.tenant_id, **quota)
            if row is not None:  # the scheduler's quotas, with the credit as committed
                await self.orch.reload_tenant(row.id)
        except StoreError as exc:
            raise _unavailable(exc) from None
        if row is None:
            raise OrchError("NOT_FOUND", f"no tenant {request.tenant_id!r}", param="tenant_id")
        ratelimit.limiter_of(self.orch).set_rate(row.id, row.submit_rate_per_second)
        self._changed(f"quota of tenant {row.id} set", tenant_id=row.id, **quota)
        return admin_pb2.SetQuotaResponse(tenant=tenant_proto(row))

    @unary
    async def AddCredit(self, request, context):
        """Add tokens to the tenant's credit (negative: take them away, e.g. to correct
        a mistake); concurrent calls all count."""
        if not request.tokens:
            raise OrchError("INVALID_ARGUMENT", "tokens must not be 0", param="tokens")
        try:
            row = await self._store.add_credit(request.tenant_id, request.tokens)
            if row is not None:  # the scheduler's token budget (quota.py)
                await self.orch.reload_tenant(row.id)
        except StoreError as exc:
            raise _unavailable(exc) from None
        if row is None:
            raise OrchError("NOT_FOUND", f"no tenant {request.tenant_id!r}", param="tenant_id")
        self._changed(f"credit of tenant {row.id} {request.tokens:+d} tokens", tenant_id=row.id,
                      tokens=request.tokens, credit_tokens=row.credit_tokens)
        return admin_pb2.AddCreditResponse(tenant=tenant_proto(row))

    @unary
    async def ListTenants(self, request, context):
        try:
            rows = await self._store.list_tenants()
        except StoreError as exc:
            raise _unavailable(exc) from None
        return admin_pb2.ListTenantsResponse(tenants=[tenant_proto(r) for r in rows])

    @unary
    async def CreateApiKey(self, request, context):
        """A key for an existing tenant; its secret is in this response and nowhere else."""
        scope = _SCOPE_OF.get(request.scope)
        if scope is None:
            raise OrchError("INVALID_ARGUMENT", "scope must be API_KEY_SCOPE_CLIENT or "
                            "API_KEY_SCOPE_ADMIN", param="scope")
        if len(request.name) > 255:
            raise OrchError("INVALID_ARGUMENT", "key names are at most 255 characters",
                            param="name")
        store = self._store
        try:
            if await store.get_tenant(request.tenant_id) is None:
                raise OrchError("NOT_FOUND", f"no tenant {request.tenant_id!r}",
                                param="tenant_id")
            row, secret = auth.new_key(request.tenant_id, scope, request.name)
            await store.insert_api_key(row)
        except StoreError as exc:
            raise _unavailable(exc) from None
        self._changed(f"{scope} key {row.id} created", tenant_id=row.tenant_id, key_id=row.id)
        return admin_pb2.CreateApiKeyResponse(key=key_proto(row, secret))

    @unary
    async def ListApiKeys(self, request, context):
        """Keys (revoked ones too), without secrets; one tenant's when it is named."""
        try:
            rows = await self._store.list_api_keys(request.tenant_id)
        except StoreError as exc:
            raise _unavailable(exc) from None
        return admin_pb2.ListApiKeysResponse(keys=[key_proto(r) for r in rows])

    @unary
    async def RevokeApiKey(self, request, context):
        """Revoke a key: refused from the next call on (idempotent)."""
        try:
            row = await self._store.revoke_api_key(request.key_id)
        except StoreError as exc:
            raise _unavailable(exc) from None
        if row is None:
            raise OrchError("NOT_FOUND", f"no API key {request.key_id!r}", param="key_id")
        self.guard.keys.forget(row.id)
        self._changed(f"key {row.id} revoked", tenant_id=row.tenant_id, key_id=row.id)
        return admin_pb2.RevokeApiKeyResponse()

    @unary
    async def ListAuditEntries(self, request, context):
        """Entries with id > after_id, oldest first (page_size: 100 by default, at most
        1000). Entries of calls that ended before this one are included."""
        store = self._store
        try:
            await store.settle()
            rows = await store.audit_entries(request.after_id,
                                             min(request.page_size or 100, MAX_AUDIT_PAGE))
        except StoreError as exc:
            raise _unavailable(exc) from None
        return admin_pb2.ListAuditEntriesResponse(entries=[audit_proto(r) for r in rows])

    # ---- pool enrolment and certificates (orchestrator/join.py, common/pki.py) ----------------
    # The same functions `llama-orch ca join-token|enroll-provider|revoke` call, so a token,
    # key or revocation made either way is the same file in pki_dir. They do blocking
    # file I/O under a file lock the CLI may hold: each runs in a thread.

    @unary
    async def CreateJoinToken(self, request, context):
        """A single-use token for one pool id (a DNS label: letters, digits, '-'), valid
        ttl_seconds (0: security.join_token_ttl_s; at most MAX_JOIN_TOKEN_TTL_S). The
        token is in this response only: the files keep its hash, the fact and the audit
        log the pool id."""
        pki.check_name("pool", request.pool_id)
        if request.ttl_seconds > MAX_JOIN_TOKEN_TTL_S:
            raise OrchError("INVALID_ARGUMENT", f"ttl_seconds is at most {MAX_JOIN_TOKEN_TTL_S} "
                            "(a join token is meant to be redeemed soon)", param="ttl_seconds")
        token, expires = await asyncio.to_thread(join.create_join_token, self.orch.cfg,
                                                 request.pool_id, request.ttl_seconds)
        self._changed(f"join token for pool {request.pool_id} created, valid until "
                      f"{expires.isoformat()}", pool_id=request.pool_id,
                      expires_at=expires.isoformat())
        return admin_pb2.CreateJoinTokenResponse(token=token,
                                                 expires_at=to_timestamp(expires.timestamp()))

    @unary
    async def EnrollProviderKey(self, request, context):
        """Enrol a provider's Ed25519 public key (raw 32 bytes, or PEM/DER as the CLI
        takes); its id is derived from the key, so enrolling it again only updates
        provider_id."""
        provider_id = request.provider_id
        if len(provider_id) > 128 or not provider_id.isprintable():
            raise OrchError("INVALID_ARGUMENT", "provider_id must be printable and at most 128 "
                            "characters", param="provider_id")
        if len(request.public_key) > MAX_PUBLIC_KEY_BYTES:
            raise OrchError("INVALID_ARGUMENT", "a provider key must be an Ed25519 public key "
                            "(raw 32 bytes or PEM)", param="public_key")
        key_id = await asyncio.to_thread(join.enroll_provider_key, self.orch.cfg,
                                         bytes(request.public_key), provider_id)
        _retarget(key_id)
        self._changed(f"provider key {key_id} enrolled", provider_key_id=key_id,
                      provider_id=provider_id)
        return admin_pb2.EnrollProviderKeyResponse(provider_key_id=key_id)

    @unary
    async def RevokeCertificate(self, request, context):
        """Add a certificate's serial (hex, as `ca issue` prints it) to the CRL: every
        server refuses it from its next call (they re-read ca.crl when it changes), an
        open pool link at its next heartbeat. Idempotent."""
        serial = _serial(request.serial_hex)
        reason = request.reason
        if len(reason) > 255 or not reason.isprintable():
            raise OrchError("INVALID_ARGUMENT", "reason must be printable and at most 255 "
                            "characters", param="reason")
        serial_hex = format(serial, "x")
        _retarget(serial_hex)
        newly = await asyncio.to_thread(_revoke, self.orch.cfg, serial_hex)
        self._changed(f"certificate {serial_hex} " + ("revoked" if newly else
                                                     "was revoked already"),
                      serial_hex=serial_hex, reason=reason, newly_revoked=newly)
        return admin_pb2.RevokeCertificateResponse()

    # ---- usage, billing, earnings (orchestrator/usage.py) ---------------------------------

    @unary
    async def ExportUsage(self, request, context):
        """The usage records finished in [start, end) of one tenant (none named: all),
        with plaintext tenant ids, and rendered as `format` ("json", the default, or
        "csv") with each tenant's totals. Periods holding more than MAX_EXPORT_RECORDS
        records are refused: ask for a shorter one, or use `llama-orch usage export`."""
        fmt = request.format.lower() or "json"
        if fmt not in usage.FORMATS:
            raise OrchError("INVALID_ARGUMENT", f"format must be one of {', '.join(usage.FORMATS)}",
                            param="format")
        start, end = _period(request.start, request.end)
        store = self._store
        try:
            if request.tenant_id and await store.get_tenant(request.tenant_id) is None:
                raise OrchError("NOT_FOUND", f"no tenant {request.tenant_id!r}",
                                param="tenant_id")
            found = await usage.export(store, request.tenant_id, start, end,
                                       limit=MAX_EXPORT_RECORDS + 1)
        except StoreError as exc:
            raise _unavailable(exc) from None
        if len(found.records) > MAX_EXPORT_RECORDS:
            raise OrchError("INVALID_ARGUMENT", f"more than {MAX_EXPORT_RECORDS} records in "
                            "this period: export a shorter one (or use `llama-orch usage "
                            "export`, which has no limit)", param="end")
        return admin_pb2.ExportUsageResponse(records=[usage_proto(r) for r in found.records],
                                             rendered=found.render(fmt))

    @unary
    async def GetEarnings(self, request, context):
        """Per pool and provider, what it served in [start, end): jobs, tokens (prompt +
        completion) and VRAM byte-seconds. Quantities, not money (orchestrator/usage.py)."""
        start, end = _period(request.start, request.end)
        try:
            rows = await usage.earnings(self._store, start, end)
        except StoreError as exc:
            raise _unavailable(exc) from None
        return admin_pb2.GetEarningsResponse(earnings=[earning_proto(r) for r in rows])

    # ---- the scheduler policy (orchestrator/policies.py) ------------------------------------

    @unary
    async def GetPolicy(self, request, context):
        """The active policy version (version 0, "builtin": the built-in scheduler)."""
        return admin_pb2.GetPolicyResponse(active=policy_proto(policies.state_of(self.orch).active),
                                           editable=policies.editable(self.orch))

    @unary
    async def ListPolicyVersions(self, request, context):
        try:
            rows = await policies.list_versions(self.orch)
        except StoreError as exc:
            raise _unavailable(exc) from None
        return admin_pb2.ListPolicyVersionsResponse(versions=[policy_proto(r) for r in rows])

    @unary
    async def ValidatePolicy(self, request, context):
        """What is wrong with the source (syntax, a missing decide, ...), without running it."""
        problems = await asyncio.to_thread(validate_source, request.source)
        return admin_pb2.ValidatePolicyResponse(ok=not problems,
                                                problems=[problem_proto(p) for p in problems])

    @unary
    async def DryRunPolicy(self, request, context):
        """The policy's decisions next to the built-in's on this moment's snapshot, each with
        the validator's verdict; nothing is carried out."""
        snap = self.orch.snapshot()
        run = await asyncio.to_thread(dry_run, request.source, snap)
        return admin_pb2.DryRunPolicyResponse(
            policy_decisions=[admin_pb2.Decision(**decision_fields(d, why)) for d, why in run.policy],
            builtin_decisions=[admin_pb2.Decision(**decision_fields(d, why))
                               for d, why in run.builtin],
            problems=[problem_proto(p) for p in run.problems],
            policy_ms=run.policy_ms, builtin_ms=run.builtin_ms)

    @unary
    async def ActivatePolicy(self, request, context):
        """Activate new source, an earlier version, or the built-in; refused in platform
        mode (POLICY_FORBIDDEN) and for a policy that does not compile (POLICY_INVALID)."""
        try:
            row = await self.orch.activate_policy(source=request.source, version=request.version,
                                                  builtin=request.builtin,
                                                  author=auth.principal().name)
        except StoreError as exc:
            raise _unavailable(exc) from None
        self._changed(f"scheduler policy {row.language} version {row.version} activated",
                      version=row.version, language=row.language)
        return admin_pb2.ActivatePolicyResponse(active=policy_proto(row))


def _retarget(target: str) -> None:
    """Name what the call acted on in its audit entry, where the request has no field
    the guard reads a target from (auth._TARGET_FIELDS)."""
    call = auth.current_call()
    if call is not None:
        call.target = target


def _serial(text: str) -> int:
    """A certificate serial from hex ("0x" and ':' separators allowed, as pki.parse_serial
    reads them). X.509 serials are positive and at most 20 octets; anything else could
    never be in our CRL and would make the CA refuse to sign it."""
    try:
        if len(text) > 64 or not text.strip() or not text.isprintable():
            raise OrchError("INVALID_ARGUMENT", "not a hex serial")
        serial = pki.parse_serial(text)
    except OrchError:
        raise OrchError("INVALID_ARGUMENT", f"{text[:64]!r} is not a certificate serial in hex",
                        param="serial_hex") from None
    if not 0 < serial < 1 << 159:
        raise OrchError("INVALID_ARGUMENT", f"{text!r} is not a certificate serial: X.509 "
                        "serials are positive and below 2^159", param="serial_hex")
    return serial


def _revoke(cfg, serial_hex: str) -> bool:
    # pki.CA.revoke reads, changes and rewrites ca.crl: concurrent revocations (ours, or
    # `llama-orch ca revoke`'s, which takes the same lock) must not lose each other's
    # serial. flock excludes other threads of this process too (one open file each).
    pki.CA.load(pki_dir(cfg))  # no CA: CONFIG_INVALID before the lock makes pki_dir
    with join._locked(pki_dir(cfg)):
        return join.revoke_certificate(cfg, serial_hex)


def policy_proto(row: PolicyVersionRow) -> admin_pb2.PolicyVersion:
    return admin_pb2.PolicyVersion(version=row.version, language=row.language, source=row.source,
                                   created_at=to_timestamp_or_none(row.created_at),
                                   author=row.author, active=row.active)


def problem_proto(p: PolicyProblem) -> admin_pb2.PolicyProblem:
    return admin_pb2.PolicyProblem(line=p.line, message=f"{p.code}: {p.message}")
