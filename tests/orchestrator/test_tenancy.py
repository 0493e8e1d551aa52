"""Tenant isolation: a tenant sees its own jobs and their facts, and nobody else's.

Another tenant's job answers exactly as a missing one (NOT_FOUND, same message), the
refusal is audited, and nothing about the job changes. Admin keys see everything.
In-process orchestrator with a SQLite store and no pools: jobs stay queued.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.errors import OrchError
from llama_orch.v1 import client_pb2 as CL, common_pb2 as C, events_pb2 as E
from orchestrator import auth
from orchestrator.core import Orchestrator
from orchestrator.store import Store
from tests.orchestrator.test_auth import bearer, code_of, secure, spec  # noqa: F401 (fixture)

WAIT_S = 10


async def refused(call) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    e = OrchError.from_rpc_error(err.value)
    return e.code, e.message


async def stream_refused(call) -> tuple[str, str]:
    async def drain():
        async for _ in call:
            pass
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(drain(), WAIT_S)
    e = OrchError.from_rpc_error(err.value)
    return e.code, e.message


@pytest.fixture
async def two(secure):  # noqa: F811
    s = await secure()
    a, b, admin = await s.key("a"), await s.key("b"), await s.key("ops", "admin")
    job_b = (await s.client.Submit(CL.SubmitRequest(spec=spec("b's secret")),
                                   metadata=bearer(b))).job
    return s, a, b, admin, job_b


async def test_a_job_records_its_submitters_tenant_in_memory_and_in_the_store(two):
    s, _, _, _, job_b = two
    assert job_b.tenant_id == "t-b"
    assert s.orch.jobs[job_b.job_id].tenant_id == "t-b"
    assert (await s.store.get_job(job_b.job_id)).tenant_id == "t-b"


@pytest.mark.parametrize("rpc", ["GetJob", "CancelJob", "StreamJob", "WatchFacts"])
async def test_another_tenants_job_is_not_found_like_a_missing_one_and_is_untouched(two, rpc):
    s, a, _, _, job_b = two
    request = {"GetJob": CL.GetJobRequest, "CancelJob": CL.CancelJobRequest,
               "StreamJob": CL.StreamJobRequest, "WatchFacts": CL.WatchFactsRequest}[rpc]
    method = getattr(s.client, rpc)
    check = stream_refused if rpc in ("StreamJob", "WatchFacts") else refused
    theirs = await check(method(request(job_id=job_b.job_id), metadata=bearer(a, "probe")))
    missing = await check(method(request(job_id="job-00000000000000000000"),
                                 metadata=bearer(a)))
    assert theirs[0] == missing[0] == "NOT_FOUND"
    assert theirs[1] == missing[1].replace("job-00000000000000000000", job_b.job_id)
    live = s.orch.jobs[job_b.job_id]
    assert (live.state.value, live.cancel_requested) == ("queued", False)
    [entry] = [e for e in await s.audit() if e.correlation_id == "probe"]
    assert (entry.principal, entry.action, entry.target, entry.outcome) == (
        auth.parse_key(a)[0], f"ClientService/{rpc}", job_b.job_id, "NOT_FOUND")
    assert "another tenant" in entry.detail


async def test_lists_and_the_cluster_snapshot_show_only_the_callers_jobs(two):
    s, a, b, admin, job_b = two
    job_a = (await s.client.Submit(CL.SubmitRequest(spec=spec("a")), metadata=bearer(a))).job
    for key, want in ((a, {job_a.job_id}), (b, {job_b.job_id}),
                      (admin, {job_a.job_id, job_b.job_id})):
        listed = (await s.client.ListJobs(CL.ListJobsRequest(), metadata=bearer(key))).jobs
        snap = await s.client.GetClusterSnapshot(CL.GetClusterSnapshotRequest(),
                                                 metadata=bearer(key))
        assert {j.job_id for j in listed} == want
        assert {j.job_id for j in snap.active_jobs} == want


async def test_an_admin_key_reads_and_cancels_any_tenants_job(two):
    s, _, _, admin, job_b = two
    got = (await s.client.GetJob(CL.GetJobRequest(job_id=job_b.job_id),
                                 metadata=bearer(admin))).job
    assert got.tenant_id == "t-b"
    cancelled = (await s.client.CancelJob(CL.CancelJobRequest(job_id=job_b.job_id),
                                          metadata=bearer(admin))).job
    assert cancelled.status == C.JOB_STATUS_CANCELLED


async def test_the_fact_stream_leaves_out_other_tenants_jobs(two):
    s, a, b, _, job_b = two
    await code_of(s.client.ListModels(CL.ListModelsRequest()))  # an AUTH_DENIED fact
    job_a = (await s.client.Submit(CL.SubmitRequest(spec=spec("a")), metadata=bearer(a))).job
    assert s.orch.facts.recent([E.FACT_KIND_AUTH_DENIED])

    async def until_admitted(key: str, job_id: str) -> list[E.Fact]:
        facts = []
        async for resp in s.client.WatchFacts(CL.WatchFactsRequest(), metadata=bearer(key)):
            facts.append(resp.fact)
            if resp.fact.job_id == job_id and resp.fact.kind == E.FACT_KIND_JOB_ADMITTED:
                return facts
        return facts

    # Everything before A's job was admitted: B's job and the denial included.
    for_a = await asyncio.wait_for(until_admitted(a, job_a.job_id), WAIT_S)
    assert job_b.job_id not in {f.job_id for f in for_a}
    assert E.FACT_KIND_AUTH_DENIED not in {f.kind for f in for_a}
    assert any(f.kind == E.FACT_KIND_COMPONENT_STARTED for f in for_a)  # cluster facts stay
    # B's own job, watched by id, streams for B.
    call = s.client.WatchFacts(CL.WatchFactsRequest(job_id=job_b.job_id), metadata=bearer(b))
    first = await asyncio.wait_for(call.read(), WAIT_S)
    call.cancel()
    assert first.fact.job_id == job_b.job_id


async def test_idempotency_keys_are_per_tenant(two):
    s, a, b, _, _ = two
    req = CL.SubmitRequest(spec=spec("same"), idempotency_key="order-1")
    from_b = await s.client.Submit(req, metadata=bearer(b))
    from_a = await s.client.Submit(req, metadata=bearer(a))
    again = await s.client.Submit(req, metadata=bearer(a))
    assert not from_b.existing and not from_a.existing and again.existing
    assert from_a.job.job_id != from_b.job.job_id
    assert again.job.job_id == from_a.job.job_id
    assert from_a.job.idempotency_key == again.job.idempotency_key == "order-1"
    # A different request under B's key is B's business alone: no conflict for A.
    other = CL.SubmitRequest(spec=spec("different"), idempotency_key="order-1")
    assert await code_of(s.client.Submit(other, metadata=bearer(b))) == "IDEMPOTENCY_CONFLICT"


async def test_generate_resumes_only_the_callers_own_job(two):
    s, a, b, _, _ = two
    req = CL.SubmitRequest(spec=spec("resume me"), idempotency_key="gen-1")
    job_b = (await s.client.Submit(req, metadata=bearer(b))).job
    call = s.client.Generate(CL.GenerateRequest(spec=spec("resume me"), idempotency_key="gen-1"),
                             metadata=bearer(a))
    first = await asyncio.wait_for(call.read(), WAIT_S)
    call.cancel()
    assert first.event.job_id != job_b.job_id
    mine = s.orch.jobs[first.event.job_id]
    assert mine.tenant_id == "t-a"
    # The guard keeps Generate's contract: a client that goes away cancels its job...
    for _ in range(100):
        if mine.cancel_requested:
            break
        await asyncio.sleep(0.05)
    assert mine.cancel_requested
    assert not s.orch.jobs[job_b.job_id].cancel_requested  # ...and nobody else's


async def test_the_tenant_survives_a_restart(two, tmp_path):
    s, a, b, _, job_b = two
    await s.orch.stop()
    await s.store.flush()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        orch = Orchestrator(s.orch.cfg, store=store)
        await orch.start()
        try:
            assert orch.jobs[job_b.job_id].tenant_id == "t-b"
            assert orch.jobs[job_b.job_id].to_proto().tenant_id == "t-b"
        finally:
            await orch.stop()
    finally:
        await store.close()
