"""Per-tenant submission rate limits (token buckets, checked before admission), the
quota and credit admin calls that set them, and the 429 + Retry-After the gateway
answers with."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from common.config import Config
from common.errors import OrchError
from gateway.app import create_app
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator import auth, ratelimit
from orchestrator.core import Orchestrator
from orchestrator.main import build_server
from orchestrator.ratelimit import Bucket, RateLimited, RateLimiter
from orchestrator.store import Store, StoreError
from orchestrator.store.store import TenantRow


# ---- the bucket ------------------------------------------------------------------------------

BUCKET = {
    # rate, [(time, expected wait)] — 0 means the token was taken
    "burst-is-twice-the-rate": (2.0, [(0, 0), (0, 0), (0, 0), (0, 0), (0, 0.5), (0.25, 0.25),
                                      (0.5, 0), (0.5, 0.5)]),
    "slow-rates-still-burst-one": (0.25, [(0, 0), (0, 4.0), (3, 1.0), (4, 0), (4, 4.0)]),
    "refill-never-exceeds-burst": (1.0, [(0, 0), (0, 0), (100, 0), (100, 0), (100, 1.0)]),
}


@pytest.mark.parametrize("rate,takes", BUCKET.values(), ids=BUCKET.keys())
def test_a_bucket_holds_twice_the_rate_and_refills_at_the_rate(rate, takes):
    bucket = Bucket.full(rate, 0.0)
    assert [bucket.take(t) for t, _ in takes] == pytest.approx([w for _, w in takes])


def test_a_new_rate_keeps_what_was_saved_within_the_new_burst():
    bucket = Bucket.full(5.0, 0.0)  # 10 tokens
    bucket.retune(1.0, 0.0)
    assert bucket.tokens == 2.0 and bucket.burst == 2.0
    bucket.retune(10.0, 0.0)
    assert bucket.tokens == 2.0 and bucket.burst == 20.0


# ---- the limiter -------------------------------------------------------------------------------

class Tenants:
    """A store that knows only tenants' rates (and counts its reads)."""

    def __init__(self, **rates: float | None):
        self.rates = rates
        self.fail = False

    async def get_tenant(self, tenant_id: str) -> TenantRow | None:
        if self.fail:
            raise StoreError("down")
        if tenant_id not in self.rates:
            return None
        return TenantRow(id=tenant_id, name=tenant_id, created_at=0.0,
                         submit_rate_per_second=self.rates[tenant_id])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def refused(limiter: RateLimiter, tenant: str) -> RateLimited | None:
    try:
        await limiter.check(tenant)
    except RateLimited as err:
        return err
    return None


async def test_the_limiter_refuses_over_rate_with_whole_seconds_to_wait():
    clock = Clock()
    limiter = RateLimiter(Tenants(fast=10.0, slow=0.4, free=None), clock)
    assert [await refused(limiter, "fast") for _ in range(20)] == [None] * 20
    err = await refused(limiter, "fast")
    assert (err.code, err.retry_after_s) == ("RATE_LIMITED", 1)  # 0.1 s, rounded up
    assert await refused(limiter, "slow") is None
    assert (await refused(limiter, "slow")).retry_after_s == 3  # 1 / 0.4 = 2.5 s
    clock.now += 2.5
    assert await refused(limiter, "slow") is None
    for tenant in ("free", "unknown", ""):  # no limit, no tenant row, no tenant (auth off)
        assert [await refused(limiter, tenant) for _ in range(100)] == [None] * 100


async def test_limits_are_read_once_per_ttl_and_a_change_here_applies_at_once():
    clock, store = Clock(), Tenants(a=1.0)
    limiter = RateLimiter(store, clock)
    for _ in range(2):
        assert await refused(limiter, "a") is None
    assert await refused(limiter, "a") is not None
    assert limiter.lookups == 1
    store.rates["a"] = None  # written by another process: seen after the TTL
    assert await refused(limiter, "a") is not None
    clock.now += ratelimit.LIMITS_TTL_S
    assert await refused(limiter, "a") is None and limiter.lookups == 2
    limiter.set_rate("a", 0.5)  # through this orchestrator's AdminService: at once
    assert await refused(limiter, "a") is None  # a fresh bucket starts full (burst 1)
    assert await refused(limiter, "a") is not None


async def test_a_store_that_cannot_be_read_never_refuses_a_submission():
    clock, store = Clock(), Tenants(a=0.1)
    limiter = RateLimiter(store, clock)
    store.fail = True
    assert [await refused(limiter, "a") for _ in range(10)] == [None] * 10


def test_rate_limited_carries_retry_after_as_trailing_metadata():
    status = RateLimited("slow down", 3).to_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "3") in status.trailing_metadata
    assert any(k == "grpc-status-details-bin" for k, _ in status.trailing_metadata)


# ---- over gRPC and through the gateway ---------------------------------------------------------

@dataclass
class Lab:
    orch: Orchestrator
    store: Store
    address: str
    client: client_pb2_grpc.ClientServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    root: tuple  # admin metadata
    clock: Clock  # the buckets' time

    async def tenant(self, name: str, rate: float = 0.0) -> tuple[str, str]:
        """(tenant id, a client key), made through AdminService."""
        tenant = (await self.admin.CreateTenant(A.CreateTenantRequest(
            name=name, quota=A.Quota(submit_rate_per_second=rate)), metadata=self.root)).tenant
        key = (await self.admin.CreateApiKey(A.CreateApiKeyRequest(
            tenant_id=tenant.tenant_id, scope=A.API_KEY_SCOPE_CLIENT),
            metadata=self.root)).key.secret
        return tenant.tenant_id, key


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def spec(i: int = 0) -> C.JobSpec:
    return C.JobSpec(model="tiny", prompt=f"the fox {i}")


@pytest.fixture(params=["lab", "platform"])
async def lab(request, tmp_path) -> AsyncIterator[Lab]:
    """An orchestrator with auth on, served without TLS (platform's mTLS is not what
    these tests are about; its tenancy is)."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    cfg = Config(mode=request.param)
    cfg.data_dir = tmp_path
    if request.param == "lab":
        cfg.security.tls = False
    cfg.validate()
    orch = Orchestrator(cfg, store=store)
    await orch.start()
    await store.create_tenant(TenantRow(id="t-ops", name="ops", created_at=1.0))
    row, admin_key = auth.new_key("t-ops", "admin")
    await store.insert_api_key(row)
    ratelimit.limiter_of(orch).clock = clock = Clock()
    server = build_server(orch)
    port = server.bind("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    lab = Lab(orch, store, f"127.0.0.1:{port}", client_pb2_grpc.ClientServiceStub(channel),
              admin_pb2_grpc.AdminServiceStub(channel), bearer(admin_key), clock)
    yield lab
    await channel.close()
    await server.stop(0)
    await orch.stop()
    await store.close()


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_over_rate_submissions_are_refused_before_admission_and_store_nothing(lab):
    ta, key_a = await lab.tenant("a", rate=1.0)  # burst 2
    _, key_b = await lab.tenant("b")  # no limit
    for i in range(2):
        await lab.client.Submit(CL.SubmitRequest(spec=spec(i)), metadata=bearer(key_a))
    stored, live = await lab.store.count_by_status(), set(lab.orch.jobs)

    err = await rpc_error(lab.client.Submit(CL.SubmitRequest(spec=spec(9)), metadata=bearer(key_a)))
    assert OrchError.from_rpc_error(err).code == "RATE_LIMITED"
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "1") in tuple(err.trailing_metadata())
    stream = lab.client.Generate(CL.GenerateRequest(spec=spec(10)), metadata=bearer(key_a))
    err = await rpc_error(stream.read())
    assert OrchError.from_rpc_error(err).code == "RATE_LIMITED"
    assert dict(err.trailing_metadata())["retry-after"] == "1"
    # An idempotent retry is a submission too: refused, and nothing new exists.
    err = await rpc_error(lab.client.Submit(CL.SubmitRequest(spec=spec(0), idempotency_key="k"),
                                            metadata=bearer(key_a)))
    assert OrchError.from_rpc_error(err).code == "RATE_LIMITED"
    assert await lab.store.count_by_status() == stored and set(lab.orch.jobs) == live

    for i in range(20):  # another tenant is not slowed down
        await lab.client.Submit(CL.SubmitRequest(spec=spec(i)), metadata=bearer(key_b))
    lab.clock.now += 1.0  # one more token for a
    await lab.client.Submit(CL.SubmitRequest(spec=spec(3)), metadata=bearer(key_a))
    assert len([j for j in lab.orch.jobs.values() if j.tenant_id == ta]) == 3


async def test_set_quota_changes_the_rate_at_once_and_is_audited(lab):
    ta, key_a = await lab.tenant("a", rate=0.5)
    await lab.client.Submit(CL.SubmitRequest(spec=spec()), metadata=bearer(key_a))
    assert OrchError.from_rpc_error(await rpc_error(lab.client.Submit(
        CL.SubmitRequest(spec=spec(1)), metadata=bearer(key_a)))).code == "RATE_LIMITED"
    got = (await lab.admin.SetQuota(A.SetQuotaRequest(tenant_id=ta, quota=A.Quota(
        max_concurrent_jobs=4, max_vram_bytes=8 << 30, token_budget=1000, auto_refill=True)),
        metadata=lab.root)).tenant
    assert (got.quota.max_concurrent_jobs, got.quota.max_vram_bytes, got.quota.token_budget,
            got.quota.auto_refill, got.quota.submit_rate_per_second) == (4, 8 << 30, 1000,
                                                                         True, 0.0)
    for i in range(10):  # the limit is gone (0 = none) from the next submission
        await lab.client.Submit(CL.SubmitRequest(spec=spec(i)), metadata=bearer(key_a))
    row = await lab.store.get_tenant(ta)
    assert (row.max_concurrent_jobs, row.vram_ceiling_bytes, row.token_budget, row.auto_refill,
            row.submit_rate_per_second) == (4, 8 << 30, 1000, True, None)

    await lab.admin.SetQuota(A.SetQuotaRequest(tenant_id=ta, quota=A.Quota(
        submit_rate_per_second=2)), metadata=lab.root)
    assert (await lab.store.get_tenant(ta)).max_concurrent_jobs is None  # a quota is replaced
    for bad, code in ((A.SetQuotaRequest(tenant_id="t-none"), "NOT_FOUND"),
                      (A.SetQuotaRequest(tenant_id=ta, quota=A.Quota(submit_rate_per_second=-1)),
                       "INVALID_ARGUMENT"),
                      (A.SetQuotaRequest(tenant_id=ta, quota=A.Quota(
                          submit_rate_per_second=math.nan)), "INVALID_ARGUMENT")):
        assert OrchError.from_rpc_error(await rpc_error(
            lab.admin.SetQuota(bad, metadata=lab.root))).code == code
    assert OrchError.from_rpc_error(await rpc_error(lab.admin.SetQuota(
        A.SetQuotaRequest(tenant_id=ta), metadata=bearer(key_a)))).code == "PERMISSION_DENIED"

    await lab.store.settle()
    entries = [(e.action, e.target, e.outcome) for e in await lab.store.audit_entries(limit=1000)
               if e.action == "AdminService/SetQuota"]
    assert entries == [("AdminService/SetQuota", ta, "OK"), ("AdminService/SetQuota", ta, "OK"),
                       ("AdminService/SetQuota", "t-none", "NOT_FOUND"),
                       ("AdminService/SetQuota", ta, "INVALID_ARGUMENT"),
                       ("AdminService/SetQuota", ta, "INVALID_ARGUMENT"),
                       ("AdminService/SetQuota", ta, "PERMISSION_DENIED")]
    fact = [f for f in lab.orch.facts.recent([E.FACT_KIND_AUDIT]) if "quota" in f.message][-1]
    assert fact.attributes["submit_rate_per_second"] == 2.0


async def test_add_credit_adds_and_is_audited(lab):
    ta, _ = await lab.tenant("a")
    assert (await lab.admin.AddCredit(A.AddCreditRequest(tenant_id=ta, tokens=1000),
                                      metadata=lab.root)).tenant.credit_tokens == 1000
    assert (await lab.admin.AddCredit(A.AddCreditRequest(tenant_id=ta, tokens=-250),
                                      metadata=lab.root)).tenant.credit_tokens == 750
    for bad, code in ((A.AddCreditRequest(tenant_id=ta), "INVALID_ARGUMENT"),
                      (A.AddCreditRequest(tenant_id="t-none", tokens=5), "NOT_FOUND")):
        assert OrchError.from_rpc_error(await rpc_error(
            lab.admin.AddCredit(bad, metadata=lab.root))).code == code
    assert (await lab.store.get_tenant(ta)).credit_tokens == 750
    await lab.store.settle()
    assert [(e.target, e.outcome) for e in await lab.store.audit_entries(limit=1000)
            if e.action == "AdminService/AddCredit"] == [
        (ta, "OK"), (ta, "OK"), (ta, "INVALID_ARGUMENT"), ("t-none", "NOT_FOUND")]
    fact = [f for f in lab.orch.facts.recent([E.FACT_KIND_AUDIT]) if "credit" in f.message][-1]
    assert (fact.attributes["tokens"], fact.attributes["credit_tokens"]) == (-250, 750)


async def test_the_gateway_answers_429_with_retry_after(lab):
    _, key = await lab.tenant("a", rate=0.25)  # burst 1; a token every 4 s
    app = create_app(lab.address)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {key}"}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://gateway") as http:
        first = await http.post("/v2/tasks", json={"model": "tiny", "prompt": "a"},
                                headers=headers)
        assert first.status_code == 202, first.text
        for path, body in (("/v2/tasks", {"model": "tiny", "prompt": "b"}),
                           ("/v1/chat/completions", {"model": "tiny", "messages": [
                               {"role": "user", "content": "c"}]}),
                           ("/v1/chat/completions", {"model": "tiny", "stream": True, "messages": [
                               {"role": "user", "content": "d"}]})):
            r = await http.post(path, json=body, headers=headers)
            assert r.status_code == 429, (path, r.text)
            assert r.headers["retry-after"] == "4"
            assert r.json()["error"]["code"] == "rate_limited"
        other = await http.get("/v2/tasks/job-nope", headers=headers)  # not every error has it
        assert other.status_code == 404 and "retry-after" not in other.headers
    assert len(lab.orch.jobs) == 1
