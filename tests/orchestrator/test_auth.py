"""API keys and the guard: authentication, scopes, the key cache and the audit log.

Real gRPC against an in-process Orchestrator with a SQLite store and no pools (jobs
stay queued). Keys are bootstrapped straight in the store, as `llama-orch keys` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator import audit as audit_mod, auth
from orchestrator.admin_api import AdminServicer
from orchestrator.client_api import ClientServicer
from orchestrator.core import Orchestrator
from orchestrator.store import Store
from orchestrator.store.store import AuditRow, TenantRow


@dataclass
class Secured:
    """An orchestrator serving ClientService and AdminService, and helpers to call it."""

    orch: Orchestrator
    store: Store
    client: client_pb2_grpc.ClientServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    tenants: dict[str, str] = field(default_factory=dict)  # name -> id
    channel: grpc.aio.Channel | None = None

    async def key(self, tenant: str, scope: str = "client") -> str:
        """A fresh key for the tenant (created on first use), straight in the store."""
        if tenant not in self.tenants:
            self.tenants[tenant] = f"t-{tenant}"
            await self.store.create_tenant(TenantRow(id=f"t-{tenant}", name=tenant,
                                                     created_at=1.0))
        row, secret = auth.new_key(self.tenants[tenant], scope)
        await self.store.insert_api_key(row)
        return secret

    @property
    def guard(self) -> auth.Guard:
        return auth.guard_of(self.orch)

    async def audit(self) -> list[AuditRow]:
        await self.store.settle()
        return await self.store.audit_entries(limit=10_000)


def bearer(key: str, cid: str = "") -> tuple[tuple[str, str], ...]:
    md = (("authorization", f"Bearer {key}"),)
    return md + ((("x-correlation-id", cid),) if cid else ())


def spec(prompt: str = "the fox", seed: int = 1) -> C.JobSpec:
    return C.JobSpec(model="tiny", prompt=prompt, sampling=C.SamplingParams(seed=seed))


async def code_of(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return OrchError.from_rpc_error(err.value).code


@pytest.fixture
async def secure(tmp_path) -> AsyncIterator:
    made = []

    async def factory(mode: str = "lab", audit: str | None = None, auth_on: bool | None = None):
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        cfg = Config(mode=mode)
        cfg.data_dir = tmp_path
        if mode != "platform":
            cfg.security.tls = False
        cfg.security.audit, cfg.security.auth = audit, auth_on
        cfg.validate()
        orch = Orchestrator(cfg, store=store)
        await orch.start()
        server = grpc.aio.server()
        client_pb2_grpc.add_ClientServiceServicer_to_server(ClientServicer(orch), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(orch), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        made.append((orch, store, server, channel))
        return Secured(orch, store, client_pb2_grpc.ClientServiceStub(channel),
                       admin_pb2_grpc.AdminServiceStub(channel), channel=channel)
    yield factory
    for orch, store, server, channel in made:
        await channel.close()
        await server.stop(0)
        await orch.stop()
        await store.close()


def unimplemented_admin_methods() -> list[str]:
    """AdminService methods still left to the generated base class (UNIMPLEMENTED)."""
    base = admin_pb2_grpc.AdminServiceServicer
    return [m.name for m in A.DESCRIPTOR.services_by_name["AdminService"].methods
            if getattr(AdminServicer, m.name).__wrapped__ is getattr(base, m.name)]


# ---- keys -------------------------------------------------------------------------------

def test_a_key_is_lo_id_secret_and_only_a_salted_hash_is_kept():
    row, key = auth.new_key("t-1", "client", "ci")
    key_id, secret = auth.parse_key(key)
    assert key == f"lo_{key_id}_{secret}" and row.id == key_id and row.prefix == f"lo_{key_id}"
    assert secret not in repr(row) and row.hash == auth.hash_secret(row.salt, secret)
    other, _ = auth.new_key("t-1", "client")
    assert (other.id, other.salt) != (row.id, row.salt)


@pytest.mark.parametrize("token", [
    "", "lo_", "lo_0123456789abcdef", "sk-0123456789abcdef",
    "lo_0123456789ABCDEF_" + "a" * 43, "lo_0123456789abcdef_" + "a" * 42,
    "lo_0123456789abcdef_" + "a" * 42 + "!",
], ids=["empty", "bare-prefix", "no-secret", "other-vendor", "upper-id", "short-secret",
        "bad-char"])
def test_malformed_keys_do_not_parse(token):
    assert auth.parse_key(token) is None


def test_scopes_are_client_or_admin():
    with pytest.raises(ValueError):
        auth.new_key("t-1", "root")


# ---- authentication -----------------------------------------------------------------------

@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer"),),
    (("authorization", "Bearer not-a-key"),),
    (("authorization", "Basic lo_0123456789abcdef_" + "a" * 43),),
    (("authorization", "Bearer lo_0123456789abcdef_" + "a" * 43),),
], ids=["missing", "empty-bearer", "malformed", "wrong-scheme", "unknown-id"])
async def test_calls_without_a_valid_key_are_unauthenticated(secure, metadata):
    s = await secure()
    before = dict(s.orch.jobs)
    assert await code_of(s.client.Submit(CL.SubmitRequest(spec=spec()), metadata=metadata)) == \
        "UNAUTHENTICATED"
    assert await code_of(s.admin.ListTenants(A.ListTenantsRequest(), metadata=metadata)) == \
        "UNAUTHENTICATED"
    assert s.orch.jobs == before  # refused before the handler: nothing submitted


async def test_a_wrong_secret_for_a_real_key_id_is_unauthenticated(secure):
    s = await secure()
    key = await s.key("a")
    key_id, secret = auth.parse_key(key)
    forged = f"lo_{key_id}_{'A' * 43}"
    assert await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(forged))) \
        == "UNAUTHENTICATED"
    # ...also once the genuine key is in the cache.
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(key))
    assert await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(forged))) \
        == "UNAUTHENTICATED"


async def test_streams_are_guarded_too(secure):
    s = await secure()
    call = s.client.WatchFacts(CL.WatchFactsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert OrchError.from_rpc_error(err.value).code == "UNAUTHENTICATED"


async def test_a_client_key_on_admin_service_is_permission_denied_and_changes_nothing(secure):
    s = await secure()
    client, admin = await s.key("a"), await s.key("ops", "admin")
    keys = await s.store.list_api_keys()
    for call in (s.admin.CreateApiKey(A.CreateApiKeyRequest(
                     tenant_id="t-a", scope=A.API_KEY_SCOPE_ADMIN), metadata=bearer(client)),
                 s.admin.ListApiKeys(A.ListApiKeysRequest(), metadata=bearer(client)),
                 s.admin.StopWorker(A.StopWorkerRequest(worker_id="w"), metadata=bearer(client))):
        assert await code_of(call) == "PERMISSION_DENIED"
    assert await s.store.list_api_keys() == keys
    # An admin key calls both services.
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(admin))
    await s.admin.ListApiKeys(A.ListApiKeysRequest(), metadata=bearer(admin))


def test_every_admin_method_is_implemented():
    """No AdminService method is left to the generated base class (which answers
    UNIMPLEMENTED): a call that exists in admin.proto does something."""
    assert unimplemented_admin_methods() == []


async def test_a_method_the_server_does_not_know_is_unimplemented(secure):
    s = await secure()
    admin = await s.key("ops", "admin")
    unknown = s.channel.unary_unary("/llama_orch.v1.AdminService/NoSuchMethod",
                                  request_serializer=A.ListApiKeysRequest.SerializeToString,
                                  response_deserializer=A.ListApiKeysResponse.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unknown(A.ListApiKeysRequest(), metadata=bearer(admin))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_revoked_key_is_refused_at_once_although_it_was_cached(secure):
    s = await secure()
    admin, victim = await s.key("ops", "admin"), await s.key("a")
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(victim))  # cached now
    victim_id = auth.parse_key(victim)[0]
    await s.admin.RevokeApiKey(A.RevokeApiKeyRequest(key_id=victim_id), metadata=bearer(admin))
    assert await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(victim))) \
        == "UNAUTHENTICATED"
    listed = (await s.admin.ListApiKeys(A.ListApiKeysRequest(), metadata=bearer(admin))).keys
    assert {k.key_id: k.revoked for k in listed}[victim_id] is True
    assert await code_of(s.admin.RevokeApiKey(A.RevokeApiKeyRequest(key_id="nope"),
                                              metadata=bearer(admin))) == "NOT_FOUND"


async def test_verified_keys_are_cached_and_a_revocation_elsewhere_lands_after_the_ttl(
        secure, monkeypatch):
    s = await secure()
    key = await s.key("a")
    for _ in range(5):
        await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(key))
    assert s.guard.keys.lookups == 1
    await s.store.revoke_api_key(auth.parse_key(key)[0])  # as `llama-orch keys revoke` does
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(key))  # still cached
    monkeypatch.setattr(auth, "CACHE_TTL_S", 0.0)
    s.guard.keys.forget(auth.parse_key(key)[0])  # expire the entry made with the old TTL
    assert await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(key))) \
        == "UNAUTHENTICATED"


async def test_unknown_key_ids_are_remembered_briefly(secure):
    s = await secure()
    ghost = "lo_0123456789abcdef_" + "a" * 43
    for _ in range(3):
        await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(ghost)))
    assert s.guard.keys.lookups == 1


async def test_the_last_use_of_a_key_is_recorded(secure):
    s = await secure()
    key = await s.key("a")
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(key))
    await s.store.flush()
    assert (await s.store.get_api_key(auth.parse_key(key)[0])).last_used_at > 0


async def test_with_auth_off_calls_need_no_key_and_see_everything(secure):
    s = await secure(mode="home")
    job = (await s.client.Submit(CL.SubmitRequest(spec=spec()))).job
    assert job.tenant_id == ""
    assert [j.job_id for j in (await s.client.ListJobs(CL.ListJobsRequest())).jobs] == [job.job_id]
    assert await s.audit() == []  # home: audit off


# ---- admin: tenants and keys ---------------------------------------------------------------

async def test_tenants_and_keys_through_the_admin_api(secure):
    s = await secure()
    admin = await s.key("ops", "admin")
    md = bearer(admin)
    tenant = (await s.admin.CreateTenant(A.CreateTenantRequest(
        name="acme", quota=A.Quota(max_concurrent_jobs=3)), metadata=md)).tenant
    assert tenant.tenant_id.startswith("t-") and tenant.quota.max_concurrent_jobs == 3
    assert await code_of(s.admin.CreateTenant(A.CreateTenantRequest(name="acme"), metadata=md)) \
        == "INVALID_ARGUMENT"
    names = [t.name for t in (await s.admin.ListTenants(A.ListTenantsRequest(), metadata=md)).tenants]
    assert names == ["ops", "acme"]

    created = (await s.admin.CreateApiKey(A.CreateApiKeyRequest(
        tenant_id=tenant.tenant_id, scope=A.API_KEY_SCOPE_CLIENT, name="ci"), metadata=md)).key
    assert created.secret.startswith(f"lo_{created.key_id}_")
    listed = (await s.admin.ListApiKeys(A.ListApiKeysRequest(tenant_id=tenant.tenant_id),
                                        metadata=md)).keys
    assert [(k.key_id, k.name, k.scope, k.secret) for k in listed] == [
        (created.key_id, "ci", A.API_KEY_SCOPE_CLIENT, "")]
    # The new key works at once.
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(created.secret))
    for bad, code in ((A.CreateApiKeyRequest(tenant_id="t-none", scope=A.API_KEY_SCOPE_CLIENT),
                       "NOT_FOUND"),
                      (A.CreateApiKeyRequest(tenant_id=tenant.tenant_id), "INVALID_ARGUMENT")):
        assert await code_of(s.admin.CreateApiKey(bad, metadata=md)) == code


# ---- the audit log ---------------------------------------------------------------------------

async def test_lab_audits_admin_calls_and_refusals_but_not_plain_client_calls(secure):
    s = await secure()  # lab: "inter-service"
    admin, client = await s.key("ops", "admin"), await s.key("a")
    await s.client.ListModels(CL.ListModelsRequest(), metadata=bearer(client))
    await s.admin.ListTenants(A.ListTenantsRequest(), metadata=bearer(admin, "cid-1"))
    await code_of(s.client.ListModels(CL.ListModelsRequest(), metadata=bearer("garbage", "cid-2")))
    await code_of(s.admin.ListTenants(A.ListTenantsRequest(), metadata=bearer(client, "cid-3")))
    admin_id, client_id = auth.parse_key(admin)[0], auth.parse_key(client)[0]
    got = [(e.principal, e.action, e.outcome, e.correlation_id) for e in await s.audit()]
    assert got == [
        (admin_id, "AdminService/ListTenants", "OK", "cid-1"),
        ("anonymous", "ClientService/ListModels", "UNAUTHENTICATED", "cid-2"),
        (client_id, "AdminService/ListTenants", "PERMISSION_DENIED", "cid-3"),
    ]
    denied = s.orch.facts.recent([E.FACT_KIND_AUTH_DENIED])
    assert [f.attributes["error_code"] for f in denied] == ["UNAUTHENTICATED", "PERMISSION_DENIED"]


async def test_platform_audits_every_request_with_its_outcome_and_target(secure):
    s = await secure(mode="platform")
    client = await s.key("a")
    job = (await s.client.Submit(CL.SubmitRequest(spec=spec()), metadata=bearer(client))).job
    await s.client.GetJob(CL.GetJobRequest(job_id=job.job_id), metadata=bearer(client))
    await code_of(s.client.GetJob(CL.GetJobRequest(job_id="job-nope"), metadata=bearer(client)))
    got = [(e.action, e.target, e.outcome) for e in await s.audit()]
    assert got == [("ClientService/Submit", "tiny", "OK"),
                   ("ClientService/GetJob", job.job_id, "OK"),
                   ("ClientService/GetJob", "job-nope", "NOT_FOUND")]


async def test_audit_off_records_nothing(secure):
    s = await secure(audit="off")
    admin = await s.key("ops", "admin")
    await s.admin.ListTenants(A.ListTenantsRequest(), metadata=bearer(admin))
    await code_of(s.client.ListModels(CL.ListModelsRequest()))
    assert await s.audit() == []


async def test_list_audit_entries_pages_and_sees_calls_that_just_ended(secure):
    s = await secure()
    admin = await s.key("ops", "admin")
    for _ in range(5):
        await code_of(s.client.ListModels(CL.ListModelsRequest()))
    md = bearer(admin)
    first = (await s.admin.ListAuditEntries(A.ListAuditEntriesRequest(page_size=3),
                                            metadata=md)).entries
    rest = (await s.admin.ListAuditEntries(A.ListAuditEntriesRequest(after_id=first[-1].id),
                                           metadata=md)).entries
    assert [e.outcome for e in first] == ["UNAUTHENTICATED"] * 3
    # the other two refusals, then the first ListAuditEntries call itself
    assert [e.outcome for e in rest] == ["UNAUTHENTICATED"] * 2 + ["OK"]
    assert rest[-1].action == "AdminService/ListAuditEntries" and first[0].time.seconds > 0


async def test_inter_service_entries_without_an_orchestrator_at_hand(secure):
    s = await secure()  # lab: inter-service calls are audited
    assert s.guard.audit.enabled  # the orchestrator's audit log exists with its servicers
    audit_mod.audit("pool:pool-a", "PoolLinkService/Connect", "pool-a", "OK", "cid-9")
    [e] = await s.audit()
    assert (e.principal, e.action, e.target, e.outcome, e.correlation_id) == (
        "pool:pool-a", "PoolLinkService/Connect", "pool-a", "OK", "cid-9")
