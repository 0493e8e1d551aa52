"""/v2/admin and /v2/cluster against the real orchestrator (`llama-orch up`, the
embedded tiny model on CPU): the routes reach the RPCs the orchestrator implements,
its refusals keep their codes, and what it does not implement yet is a 501.

The scripted orchestrator (tests/gateway/scripted_admin.py) plays the same rules for
the fast tests; this module checks the two agree where it matters.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e


def call(stack: Stack, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(stack.base_url + path, method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("admin-stack")).start()
    deadline = time.monotonic() + 60
    while not call(s, "GET", "/v2/cluster")[1].get("pools"):  # the pool joins after `up`
        assert time.monotonic() < deadline, s.logs()[-3000:]
        time.sleep(0.2)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(stack) -> dict:
    return call(stack, "GET", "/v2/cluster")[1]


def test_info_and_cluster(stack, cluster):
    assert call(stack, "GET", "/v2/info") == (200, {"mode": "home", "version": "0.1.0",
                                                    "policy_editable": True})
    assert cluster["mode"] == "home" and cluster["pools"][0]["state"] == "available"
    assert [m["id"] for m in cluster["models"]] == ["tiny"]


def test_pin_refuses_evict_until_unpinned(stack, cluster):
    ref, pool = cluster["models"][0]["ref"], cluster["pools"][0]["pool_id"]
    status, body = call(stack, "POST", "/v2/admin/pins", {"model": "tiny", "pool_id": pool})
    assert (status, body["pin"]["model_ref"], body["pin"]["pool_id"]) == (200, ref, pool)
    # The canonical ref ("file:/abs/...") in the path, percent-encoded as the UI sends it.
    encoded = quote(ref, safe="")
    status, body = call(stack, "POST", f"/v2/admin/models/{encoded}:evict", {})
    assert (status, body["error"]["code"]) == (409, "model_pinned")
    assert call(stack, "DELETE", f"/v2/admin/pins/{encoded}?pool_id={pool}") == (200, {})
    assert call(stack, "POST", "/v2/admin/models/tiny:preload", {"pool_id": pool}) == (200, {})
    # ... and unencoded, as curl users write it.
    assert call(stack, "POST", f"/v2/admin/models/{ref}:evict", {"pool_id": pool}) == (200, {})


def test_start_and_stop_a_worker(stack):
    status, body = call(stack, "POST", "/v2/admin/workers", {"model": "tiny"})
    assert (status, body["worker"]["state"]) == (201, "starting")
    worker_id = body["worker"]["worker_id"]
    assert call(stack, "DELETE", f"/v2/admin/workers/{worker_id}?force=true") == (200, {})


REFUSED = {
    "unknown-model": ("POST", "/v2/admin/pins", {"model": "nope", "pool_id": "local"},
                      404, "model_not_found", "model"),
    "unknown-pool": ("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "far"},
                     503, "pool_unavailable", "pool_id"),
    "unknown-device": ("POST", "/v2/admin/pins", {"model": "tiny", "pool_id": "local",
                                                  "device_ids": ["GPU-nope"]},
                       404, "device_not_found", "device_ids"),
    "unknown-worker": ("DELETE", "/v2/admin/workers/w-nope", None, 404, "not_found",
                       "worker_id"),
}


@pytest.mark.parametrize("method,path,body,status,code,param", REFUSED.values(),
                         ids=REFUSED.keys())
def test_refusals_keep_their_codes(stack, method, path, body, status, code, param):
    got, answer = call(stack, method, path, body)
    assert (got, answer["error"]["code"], answer["error"]["param"]) == (status, code, param)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v2/admin/pools/local:drain", {"drain": True}),
    ("GET", "/v2/admin/policy", None),
    ("GET", "/v2/admin/policy/versions", None),
    ("POST", "/v2/admin/policy:validate", {"source": "return {}"}),
    ("POST", "/v2/admin/policy:dry-run", {"source": "return {}"}),
], ids=["drain", "policy", "versions", "validate", "dry-run"])
def test_what_the_orchestrator_lacks_is_501_until_it_has_it(stack, method, path, body):
    status, answer = call(stack, method, path, body)
    if status == 501:
        assert answer["error"]["code"] == "unimplemented"
    else:  # implemented since: then it must work
        assert status == 200, answer
        if path.endswith(":drain"):
            assert answer["pool"]["state"] == "draining"
            assert call(stack, method, path, {"drain": False})[0] == 200
