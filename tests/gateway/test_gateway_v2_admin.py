"""/v2/admin: one route per AdminService RPC, the caller's credentials passed along,
the orchestrator's refusals mapped by stable code (docs/UI.md, gateway.v2.admin)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from llama_orch.v1 import admin_pb2, common_pb2

from common.errors import OrchError

TINY = "file:/models/tiny"
PIN = {"model_ref": TINY, "pool_id": "local", "device_ids": ["GPU-0"],
       "created_at": "2023-11-14T22:14:20Z"}
BUILTIN_V1 = {"version": 1, "language": "builtin", "source": "", "author": "admin",
              "created_at": "2023-11-14T22:13:21Z", "active": True}


def only_call(orchestrator) -> tuple[str, object]:
    assert len(orchestrator.admin.calls) == 1, orchestrator.admin.calls
    return orchestrator.admin.calls[0]


# (method, path, body, rpc, the request the orchestrator gets, status, response)
HAPPY = {
    "pin": ("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "local"}, "PinModel",
            admin_pb2.PinModelRequest(model="tiny", pool_id="local"), 200, {"pin": PIN}),
    "pin-devices": ("POST", "/v2/admin/pins",
                    {"model": "tiny", "pool_id": "local", "device_ids": ["GPU-0"]}, "PinModel",
                    admin_pb2.PinModelRequest(model="tiny", pool_id="local",
                                              device_ids=["GPU-0"]), 200, {"pin": PIN}),
    "unpin": ("DELETE", "/v2/admin/pins/tiny?pool_id=local", None, "UnpinModel",
              admin_pb2.UnpinModelRequest(model="tiny", pool_id="local"), 200, {}),
    "unpin-every-pool": ("DELETE", "/v2/admin/pins/tiny", None, "UnpinModel",
                         admin_pb2.UnpinModelRequest(model="tiny"), 200, {}),
    "preload": ("POST", "/v2/admin/models/tiny:preload", {"pool_id": "local"}, "PreloadModel",
                admin_pb2.PreloadModelRequest(model="tiny", pool_id="local"), 200, {}),
    "preload-no-body": ("POST", "/v2/admin/models/tiny:preload", None, "PreloadModel",
                        admin_pb2.PreloadModelRequest(model="tiny"), 200, {}),
    "preload-null-pool": ("POST", "/v2/admin/models/tiny:preload", {"pool_id": None},
                          "PreloadModel", admin_pb2.PreloadModelRequest(model="tiny"), 200, {}),
    "evict": ("POST", "/v2/admin/models/tiny:evict", {"pool_id": "local", "from_disk": True},
              "EvictModel", admin_pb2.EvictModelRequest(model="tiny", pool_id="local",
                                                        from_disk=True), 200, {}),
    "stop": ("DELETE", "/v2/admin/workers/w-1", None, "StopWorker",
             admin_pb2.StopWorkerRequest(worker_id="w-1"), 200, {}),
    "stop-force": ("DELETE", "/v2/admin/workers/w-1?force=true", None, "StopWorker",
                   admin_pb2.StopWorkerRequest(worker_id="w-1", force=True), 200, {}),
    "stop-no-force": ("DELETE", "/v2/admin/workers/w-1?force=false", None, "StopWorker",
                      admin_pb2.StopWorkerRequest(worker_id="w-1"), 200, {}),
    "policy-versions": ("GET", "/v2/admin/policy/versions", None, "ListPolicyVersions",
                        admin_pb2.ListPolicyVersionsRequest(), 200, {"versions": [BUILTIN_V1]}),
    "validate-ok": ("POST", "/v2/admin/policy:validate", {"source": "return {}"},
                    "ValidatePolicy", admin_pb2.ValidatePolicyRequest(source="return {}"), 200,
                    {"ok": True, "problems": []}),
    "validate-problems": ("POST", "/v2/admin/policy:validate", {"source": "syntax error"},
                          "ValidatePolicy", admin_pb2.ValidatePolicyRequest(
                              source="syntax error"), 200,
                          {"ok": False, "problems": [{"line": 2,
                                                      "message": "'=' expected near 'x'"}]}),
}


@pytest.mark.parametrize("method,path,body,rpc,sent,status,answer", HAPPY.values(),
                         ids=HAPPY.keys())
async def test_route_calls_its_rpc(client, orchestrator, method, path, body, rpc, sent,
                                   status, answer):
    r = await client.request(method, path, json=body)
    assert (r.status_code, r.json()) == (status, answer)
    assert only_call(orchestrator) == (rpc, sent)


async def test_start_worker_is_201_with_the_worker(client, orchestrator):
    r = await client.post("/v2/admin/workers", json={
        "model": "tiny", "pool_id": "local", "device_ids": ["GPU-0"], "engine": "hf",
        "engine_options": {"dtype": "bfloat16"}})
    assert r.status_code == 201
    assert only_call(orchestrator) == ("StartWorker", admin_pb2.StartWorkerRequest(
        model="tiny", pool_id="local", device_ids=["GPU-0"], engine="hf",
        engine_options={"dtype": "bfloat16"}))
    worker = r.json()["worker"]
    assert (worker["worker_id"], worker["state"], worker["device_ids"], worker["model_ref"]) \
        == ("w-2", "starting", ["GPU-0"], TINY)
    assert worker["device_bytes"] == {} and worker["last_used_at"] is None


async def test_drain_and_undrain_answer_the_pool(client, orchestrator):
    r = await client.post("/v2/admin/pools/local:drain")
    assert (r.status_code, r.json()["pool"]["pool_id"], r.json()["pool"]["state"]) \
        == (200, "local", "draining")
    r = await client.post("/v2/admin/pools/local:drain", json={"drain": False})
    assert r.json()["pool"]["state"] == "available"
    assert [req.drain for _, req in orchestrator.admin.calls] == [True, False]
    assert {req.pool_id for _, req in orchestrator.admin.calls} == {"local"}


async def test_get_policy_has_the_mode(client, orchestrator):
    orchestrator.snapshot.mode = "lab"
    r = await client.get("/v2/admin/policy")
    assert r.json() == {"active": BUILTIN_V1, "editable": True, "mode": "lab"}


async def test_dry_run_shows_both_decision_sets(client, orchestrator):
    r = await client.post("/v2/admin/policy:dry-run", json={"source": "return {}"})
    dispatch = {"action": "dispatch", "job_id": "job-1", "worker_id": "w-1",
                "pool_id": "local", "model_ref": TINY, "device_ids": [],
                "reason": "free slot", "rejected": None}
    assert r.json() == {"policy_decisions": [dispatch], "builtin_decisions": [dispatch],
                        "problems": [], "policy_ms": 0.25, "builtin_ms": 0.05}


ACTIVATE = {
    "source": ({"source": "return {}"}, admin_pb2.ActivatePolicyRequest(source="return {}"),
               "lua"),
    "rollback": ({"version": 1}, admin_pb2.ActivatePolicyRequest(version=1), "builtin"),
    "builtin": ({"builtin": True}, admin_pb2.ActivatePolicyRequest(builtin=True), "builtin"),
    "nulls-are-absent": ({"builtin": True, "source": None, "version": None},
                         admin_pb2.ActivatePolicyRequest(builtin=True), "builtin"),
}


@pytest.mark.parametrize("body,sent,language", ACTIVATE.values(), ids=ACTIVATE.keys())
async def test_activate_takes_exactly_one_of_its_forms(client, orchestrator, body, sent,
                                                       language):
    r = await client.post("/v2/admin/policy:activate", json=body)
    assert r.status_code == 200
    assert (r.json()["active"]["language"], r.json()["active"]["active"]) == (language, True)
    assert only_call(orchestrator) == ("ActivatePolicy", sent)


# ---- model refs in paths -------------------------------------------------------------------

REFS = ["file:/abs/models/tiny", "hf:org/repo@main", "hf:org/m@main::file=x.gguf",
        "hf:org/repo:preload"]


@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "raw"])
@pytest.mark.parametrize("method,suffix,rpc", [
    ("POST", ":preload", "PreloadModel"), ("POST", ":evict", "EvictModel"),
    ("DELETE", "", "UnpinModel")], ids=["preload", "evict", "unpin"])
async def test_model_refs_with_slashes_and_colons_route(client, orchestrator, ref, encoded,
                                                        method, suffix, rpc):
    # The UI percent-encodes (encodeURIComponent); curl users may not.
    orchestrator.models.append(common_pb2.ModelInfo(id=ref, ref=ref))
    name = quote(ref, safe="") if encoded else ref
    r = await client.request(method, f"/v2/admin/{'models' if suffix else 'pins'}/{name}{suffix}")
    assert (r.status_code, r.json()) == (200, {})
    called, request = only_call(orchestrator)
    assert (called, request.model) == (rpc, ref)


async def test_the_literal_suffix_is_not_part_of_other_routes(client, orchestrator):
    r = await client.post("/v2/admin/models/tiny:reload")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await client.get("/v2/admin/policy:validate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert orchestrator.admin.calls == []


# ---- credentials and tracing -------------------------------------------------------------

async def test_authorization_and_correlation_id_reach_the_orchestrator(client, orchestrator):
    r = await client.post("/v2/admin/pins", json={"model": "tiny", "pool_id": "local"},
                          headers={"Authorization": "Bearer sk-admin",
                                   "X-Correlation-Id": "ui-abc-1"})
    assert r.status_code == 200 and r.headers["x-correlation-id"] == "ui-abc-1"
    sent = orchestrator.admin.metadata[0]
    assert (sent["authorization"], sent["x-correlation-id"]) == ("Bearer sk-admin", "ui-abc-1")


# ---- bad input: 400 with param, the orchestrator never called ------------------------------

BAD = {
    "pin-no-model": ("POST", "/v2/admin/pins", {"pool_id": "local"}, "model"),
    "pin-empty-model": ("POST", "/v2/admin/pins", {"model": "", "pool_id": "local"}, "model"),
    "pin-no-pool": ("POST", "/v2/admin/pins", {"model": "tiny"}, "pool_id"),
    "pin-devices-not-list": ("POST", "/v2/admin/pins",
                             {"model": "tiny", "pool_id": "local", "device_ids": "GPU-0"},
                             "device_ids"),
    "pin-device-not-string": ("POST", "/v2/admin/pins",
                              {"model": "tiny", "pool_id": "local", "device_ids": [0]},
                              "device_ids[0]"),
    "pin-not-json": ("POST", "/v2/admin/pins", b"{", None),
    "pin-no-body": ("POST", "/v2/admin/pins", b"", None),
    "preload-pool-not-string": ("POST", "/v2/admin/models/tiny:preload", {"pool_id": 1},
                                "pool_id"),
    "preload-empty-model": ("POST", "/v2/admin/models/:preload", {}, "model"),
    "evict-from-disk-string": ("POST", "/v2/admin/models/tiny:evict", {"from_disk": "true"},
                               "from_disk"),
    "unpin-empty-model": ("DELETE", "/v2/admin/pins/", None, "model"),
    "start-no-model": ("POST", "/v2/admin/workers", {"pool_id": "local"}, "model"),
    "start-option-not-string": ("POST", "/v2/admin/workers",
                                {"model": "tiny", "engine_options": {"dtype": 16}},
                                "engine_options.dtype"),
    "stop-force-yes": ("DELETE", "/v2/admin/workers/w-1?force=yes", None, "force"),
    "drain-not-bool": ("POST", "/v2/admin/pools/local:drain", {"drain": 1}, "drain"),
    "drain-body-list": ("POST", "/v2/admin/pools/local:drain", b"[]", None),
    "validate-no-source": ("POST", "/v2/admin/policy:validate", {}, "source"),
    "dry-run-source-not-string": ("POST", "/v2/admin/policy:dry-run", {"source": 5}, "source"),
    "activate-nothing": ("POST", "/v2/admin/policy:activate", {}, None),
    "activate-builtin-false": ("POST", "/v2/admin/policy:activate", {"builtin": False}, None),
    "activate-two": ("POST", "/v2/admin/policy:activate", {"source": "x", "version": 2}, None),
    "activate-empty-source": ("POST", "/v2/admin/policy:activate", {"source": ""}, "source"),
    "activate-version-zero": ("POST", "/v2/admin/policy:activate", {"version": 0}, "version"),
}


@pytest.mark.parametrize("method,path,body,param", BAD.values(), ids=BAD.keys())
async def test_bad_input_is_400_with_param(client, orchestrator, method, path, body, param):
    if isinstance(body, bytes):
        r = await client.request(method, path, content=body)
    else:
        r = await client.request(method, path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "invalid_argument", "invalid_request_error", param)
    assert orchestrator.admin.calls == []


# ---- the orchestrator's refusals ------------------------------------------------------------

PIN_TINY = ("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "local"})
REFUSED = {
    "unknown-model": (("POST", "/v2/admin/pins", {"model": "nope", "pool_id": "local"}),
                      404, "model_not_found", "model"),
    "unknown-pool": (("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "far"}),
                     503, "pool_unavailable", "pool_id"),
    "unknown-device": (("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "local",
                                                   "device_ids": ["GPU-9"]}),
                       404, "device_not_found", "device_ids"),
    "unknown-worker": (("DELETE", "/v2/admin/workers/w-9", None), 404, "not_found",
                       "worker_id"),
    "unknown-version": (("POST", "/v2/admin/policy:activate", {"version": 7}), 404,
                        "not_found", "version"),
    "invalid-policy": (("POST", "/v2/admin/policy:activate", {"source": "syntax error"}), 400,
                       "policy_invalid", "source"),
}


@pytest.mark.parametrize("call,status,code,param", REFUSED.values(), ids=REFUSED.keys())
async def test_refusals_keep_their_code_and_param(client, call, status, code, param):
    method, path, body = call
    r = await client.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)
    assert r.json()["error"]["message"]  # the orchestrator's words, for the UI to show


async def test_evicting_a_pinned_model_is_409_with_the_message(client):
    await client.request(*PIN_TINY[:2], json=PIN_TINY[2])
    r = await client.post("/v2/admin/models/tiny:evict", json={})
    assert r.status_code == 409
    assert r.json() == {"error": {"message": "tiny is pinned on local; unpin it first",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_pinned"}}


MAPPED = {
    "unauthenticated": ("UNAUTHENTICATED", 401, "authentication_error"),
    "permission-denied": ("PERMISSION_DENIED", 403, "permission_error"),
    "policy-forbidden": ("POLICY_FORBIDDEN", 403, "permission_error"),
    "device-mask-overlap": ("DEVICE_MASK_OVERLAP", 409, "invalid_request_error"),
    "insufficient-memory": ("INSUFFICIENT_MEMORY", 503, "server_error"),
    "ram-budget": ("RAM_BUDGET_EXCEEDED", 503, "server_error"),
    "pool-unavailable": ("POOL_UNAVAILABLE", 503, "server_error"),
    "worker-start-failed": ("WORKER_START_FAILED", 500, "server_error"),
}


@pytest.mark.parametrize("code,status,kind", MAPPED.values(), ids=MAPPED.keys())
async def test_orchestrator_codes_map_to_statuses(client, orchestrator, code, status, kind):
    orchestrator.admin.errors["StartWorker"] = OrchError(code, f"refused: {code}")
    r = await client.post("/v2/admin/workers", json={"model": "tiny"})
    assert r.status_code == status
    # OpenAI's name for a missing or bad key; the others are the stable code, lower case.
    body_code = "invalid_api_key" if code == "UNAUTHENTICATED" else code.lower()
    assert r.json() == {"error": {"message": f"refused: {code}", "type": kind, "param": None,
                                  "code": body_code}}


UNIMPLEMENTED = {
    "drain": ("POST", "/v2/admin/pools/local:drain", {"drain": True}, "DrainPool"),
    "policy": ("GET", "/v2/admin/policy", None, "GetPolicy"),
    "versions": ("GET", "/v2/admin/policy/versions", None, "ListPolicyVersions"),
    "validate": ("POST", "/v2/admin/policy:validate", {"source": "x"}, "ValidatePolicy"),
    "dry-run": ("POST", "/v2/admin/policy:dry-run", {"source": "x"}, "DryRunPolicy"),
    "activate": ("POST", "/v2/admin/policy:activate", {"builtin": True}, "ActivatePolicy"),
}


@pytest.mark.parametrize("method,path,body,rpc", UNIMPLEMENTED.values(),
                         ids=UNIMPLEMENTED.keys())
async def test_an_rpc_not_implemented_yet_is_501(client, orchestrator, method, path, body, rpc):
    orchestrator.admin.unimplemented.add(rpc)
    r = await client.request(method, path, json=body)
    assert r.status_code == 501
    assert r.json() == {"error": {"message": f"AdminService/{rpc} is not implemented",
                                  "type": "server_error", "param": None,
                                  "code": "unimplemented"}}
