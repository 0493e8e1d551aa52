"""Scheduler policies: versions in the store, the admin RPCs, and the loop running them."""

import asyncio
import shutil

import grpc
import pytest

from common.config import Config, ModelConfig
from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, common_pb2 as C, events_pb2 as E
from orchestrator import policies
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.main import build_server
from orchestrator.store import Store
from tests.orchestrator.scripted_pool import ScriptedPool

GIB = 1 << 30

ON_SIM_2 = """
function decide(snapshot)
  local ds = builtin_decide(snapshot)
  for _, d in ipairs(ds) do
    if d.action == "start_worker" then d.device_ids = {"sim-2"} end
  end
  return ds
end
"""
BROKEN = 'function decide(snapshot)\n  error("boom")\nend\n'


@pytest.fixture
async def make(tmp_path):
    made = []

    async def factory(*, mode="home", start=True, store=True, policy="builtin"):
        cfg = Config()
        cfg.mode = mode
        cfg.scheduler.policy = policy
        path = tmp_path / "m1"
        if not path.exists():
            shutil.copytree(TINY_PATH, path)
        cfg.models["m1"] = ModelConfig(ref=f"file:{path}", engine="sim", memory_bytes=3 * GIB)
        st = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}") if store else None
        orch = Orchestrator(cfg, store=st)
        if start:
            await orch.start()
        server = build_server(orch)
        port = server.bind("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        made.append((orch, st, server, channel, start))
        return orch, admin_pb2_grpc.AdminServiceStub(channel)
    yield factory
    for orch, st, server, channel, started in made:
        await channel.close()
        await server.stop(0)
        if started:
            await orch.stop()
        if st is not None:
            await st.close()


def spec():
    return C.JobSpec(model="m1", prompt="the fox")


async def code_of(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return OrchError.from_rpc_error(err.value).code


async def until(cond, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_activate_lists_versions_and_survives_a_restart(make):
    orch, stub = await make()
    got = await stub.GetPolicy(A.GetPolicyRequest())
    assert (got.active.language, got.active.version, got.editable) == ("builtin", 0, True)
    r1 = await stub.ActivatePolicy(A.ActivatePolicyRequest(source=ON_SIM_2))
    r2 = await stub.ActivatePolicy(A.ActivatePolicyRequest(source=BROKEN))
    assert (r1.active.version, r2.active.version, r2.active.language) == (1, 2, "lua")
    versions = (await stub.ListPolicyVersions(A.ListPolicyVersionsRequest())).versions
    assert [(v.version, v.active, v.author) for v in versions] == [(1, False, "local"),
                                                                  (2, True, "local")]
    back = await stub.ActivatePolicy(A.ActivatePolicyRequest(version=1))
    assert back.active.version == 1 and orch.policy is not None
    assert orch.policy.source == ON_SIM_2
    assert len(orch.facts.recent([E.FACT_KIND_POLICY_CHANGED])) == 3
    # A restart loads the active version from the store.
    again, stub2 = await make()
    assert again.policy is not None and again.policy.source == ON_SIM_2
    assert (await stub2.GetPolicy(A.GetPolicyRequest())).active.version == 1
    # Back to the built-in: no version active.
    b = await stub.ActivatePolicy(A.ActivatePolicyRequest(builtin=True))
    assert b.active.language == "builtin" and orch.policy is None
    versions = (await stub.ListPolicyVersions(A.ListPolicyVersionsRequest())).versions
    assert not any(v.active for v in versions)
    assert await code_of(stub.ActivatePolicy(A.ActivatePolicyRequest(version=9))) == "NOT_FOUND"


async def test_validate_and_activate_refuse_a_policy_that_does_not_compile(make):
    orch, stub = await make()
    ok = await stub.ValidatePolicy(A.ValidatePolicyRequest(source=ON_SIM_2))
    assert ok.ok and not ok.problems
    bad = await stub.ValidatePolicy(A.ValidatePolicyRequest(source="x = 1\nfunction decide(s\n"))
    assert not bad.ok and bad.problems[0].line in (2, 3)
    assert "POLICY_SYNTAX" in bad.problems[0].message
    assert await code_of(stub.ActivatePolicy(A.ActivatePolicyRequest(
        source="x = 1\nfunction decide(s\n"))) == "POLICY_INVALID"
    assert await code_of(stub.ActivatePolicy(A.ActivatePolicyRequest(
        source="x = 1"))) == "POLICY_INVALID"
    assert (await stub.ListPolicyVersions(A.ListPolicyVersionsRequest())).versions == []


async def test_platform_mode_refuses_activation_and_is_not_editable(make):
    orch, stub = await make(mode="platform", start=False)
    with pytest.raises(OrchError) as err:
        await orch.activate_policy(source=ON_SIM_2)
    assert err.value.code == "POLICY_FORBIDDEN"
    assert orch.policy is None and await policies.list_versions(orch) == []
    await policies.load(orch)
    assert orch.policy is None and policies.editable(orch) is False


async def test_dry_run_returns_both_decision_lists(make):
    orch, stub = await make(start=False, store=False)  # no loop: nothing is carried out
    ScriptedPool(orch, "pool-a", ["sim-0", "sim-1", "sim-2"])
    await orch.submit(spec())
    run = await stub.DryRunPolicy(A.DryRunPolicyRequest(source=ON_SIM_2))
    assert not run.problems
    [p] = [d for d in run.policy_decisions if d.action == "start_worker"]
    [b] = [d for d in run.builtin_decisions if d.action == "start_worker"]
    assert list(p.device_ids) == ["sim-2"] and list(b.device_ids) != ["sim-2"]
    assert p.pool_id == b.pool_id == "pool-a" and p.model_ref == b.model_ref and not p.rejected
    failed = await stub.DryRunPolicy(A.DryRunPolicyRequest(source=BROKEN))
    assert not failed.policy_decisions and failed.builtin_decisions
    assert failed.problems[0].line == 2 and "boom" in failed.problems[0].message


async def test_the_loop_carries_out_the_policys_placement(make):
    orch, stub = await make()
    await stub.ActivatePolicy(A.ActivatePolicyRequest(source=ON_SIM_2))
    pool = ScriptedPool(orch, "pool-a", ["sim-0", "sim-1", "sim-2"])
    await orch.submit(spec())
    await until(lambda: any(c.HasField("start_worker") for c in pool.commands))
    [cmd] = [c.start_worker for c in pool.commands if c.HasField("start_worker")]
    assert list(cmd.device_ids) == ["sim-2"]
    assert not orch.facts.recent([E.FACT_KIND_POLICY_FAILED])


async def test_a_broken_policy_falls_back_to_the_builtin_with_one_fact(make):
    orch, stub = await make()
    await stub.ActivatePolicy(A.ActivatePolicyRequest(source=BROKEN))
    pool = ScriptedPool(orch, "pool-a", ["sim-0", "sim-1", "sim-2"])
    await orch.submit(spec())
    await until(lambda: any(c.HasField("start_worker") for c in pool.commands))
    for _ in range(5):  # more cycles, each failing the same way
        orch.wake()
        await asyncio.sleep(0.02)
    assert policies.state_of(orch).suppressed >= 3
    [fact] = orch.facts.recent([E.FACT_KIND_POLICY_FAILED])
    assert fact.attributes["problem"] == "POLICY_ERROR" and fact.attributes["line"] == 2
    [cmd] = [c.start_worker for c in pool.commands if c.HasField("start_worker")]
    assert list(cmd.device_ids) != ["sim-2"]  # the built-in's placement


async def test_a_configured_policy_file_becomes_the_active_version(make, tmp_path):
    path = tmp_path / "policy.lua"
    path.write_text(ON_SIM_2)
    orch, stub = await make(policy=str(path))
    versions = (await stub.ListPolicyVersions(A.ListPolicyVersionsRequest())).versions
    assert [(v.version, v.author, v.active) for v in versions] == [(1, "config", True)]
    again, _ = await make(policy=str(path))  # unchanged: no new version
    assert len(await policies.list_versions(again)) == 1 and again.policy is not None
