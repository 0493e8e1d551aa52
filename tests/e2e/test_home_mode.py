"""End to end: `llama-orch up` as real processes, driven through the official openai client.

One stack serves the whole module (starting it costs a worker load on a 2-core box).
Facts are read from the orchestrator's real WatchFacts stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import openai
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, events_pb2
from tests.stack import Stack, alive, free_port, pids_with, ppid_of

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "tell me a story about a fox"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("home")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def snapshot(stack) -> client_pb2.GetClusterSnapshotResponse:
    with grpc.insecure_channel(stack.orchestrator) as ch:
        return client_pb2_grpc.ClientServiceStub(ch).GetClusterSnapshot(
            client_pb2.GetClusterSnapshotRequest(), timeout=5)


def facts(stack, kinds=(), after_id=0, until=None, timeout=30.0) -> list[events_pb2.Fact]:
    """Collect facts until `until(fact)` is true (or timeout); replays retained ones first."""
    got = []
    with grpc.insecure_channel(stack.orchestrator) as ch:
        stream = client_pb2_grpc.ClientServiceStub(ch).WatchFacts(
            client_pb2.WatchFactsRequest(kinds=list(kinds), after_id=after_id), timeout=timeout)
        try:
            for resp in stream:
                got.append(resp.fact)
                if until is not None and until(resp.fact):
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
    return got


def last_fact_id(stack) -> int:
    every = facts(stack, timeout=1.0)
    return every[-1].id if every else 0


def readable(text: str) -> bool:
    text.encode("utf-8")  # raises on lone surrogates
    words = [w for w in text.split() if w.isalpha()]
    return "\ufffd" not in text and len(words) >= 3


def test_models_lists_tiny(client):
    assert "tiny" in [m.id for m in client.models.list().data]


def test_stream_chat_gives_readable_text_and_finish_reason(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, stream=True,
                                                 max_tokens=40, seed=1))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert readable(text), text
    assert finish and finish[-1] in ("stop", "length")


def test_include_usage_adds_a_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=CHAT, stream=True, max_tokens=12, seed=2,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_same_seed_same_text(client):
    texts = [client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=30, seed=1234,
                                            temperature=1.0).choices[0].message.content
             for _ in range(2)]
    assert texts[0] == texts[1] and texts[0]


def test_worker_is_a_separate_process_of_the_pool_manager(stack, client):
    client.completions.create(model="tiny", prompt="the fox", max_tokens=2)
    [pool] = snapshot(stack).pools
    [worker] = [w for w in pool.workers]
    pool_manager_pids = pids_with(f"-m pool_manager --config {stack.config_path}")
    assert worker.pid and worker.pid not in pool_manager_pids
    assert ppid_of(worker.pid) in pool_manager_pids


def test_cancel_mid_stream_then_the_worker_takes_the_next_job(stack, client):
    start = last_fact_id(stack)
    stream = client.chat.completions.create(model="tiny", messages=CHAT, stream=True,
                                            max_tokens=400, temperature=1.0, seed=3)
    seen = 0
    for chunk in stream:
        seen += 1
        if seen >= 3:
            break
    stream.close()  # the client goes away mid-stream: its job is cancelled
    cancelled = facts(stack, [events_pb2.FACT_KIND_JOB_CANCELLED], start,
                      until=lambda f: True)
    assert cancelled, "no job.cancelled fact after the client disconnected"
    follow = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, seed=4)
    assert follow.choices[0].finish_reason in ("stop", "length")
    dispatched = facts(stack, [events_pb2.FACT_KIND_JOB_DISPATCHED], start, timeout=2)
    assert len(dispatched) >= 2
    # The job after the cancelled one ran on the same worker: it was freed, not replaced.
    assert dispatched[-1].worker_id == dispatched[0].worker_id
    assert dispatched[0].job_id == cancelled[0].job_id


def test_kill_9_of_a_worker_is_reported_with_its_signal(stack, client):
    client.completions.create(model="tiny", prompt="the lion", max_tokens=2)
    [worker] = snapshot(stack).pools[0].workers
    start = last_fact_id(stack)
    os.kill(worker.pid, signal.SIGKILL)
    failed = facts(stack, [events_pb2.FACT_KIND_WORKER_FAILED], start,
                   until=lambda f: f.worker_id == worker.worker_id)
    assert failed, "worker.failed was not reported"
    attrs = failed[-1].attributes
    assert attrs["signal"] == 9 and attrs["signal_name"] == "SIGKILL"
    assert "signal 9" in failed[-1].message
    # The system recovers: a new worker is started for the next request.
    again = client.completions.create(model="tiny", prompt="the lion", max_tokens=3)
    assert again.choices[0].text is not None
    [new] = snapshot(stack).pools[0].workers
    assert new.worker_id != worker.worker_id


@pytest.mark.parametrize("body,status,code,param", [
    pytest.param(b"{not json", 400, None, None, id="malformed-json"),
    pytest.param({"model": "nope", "messages": CHAT}, 404, "model_not_found", "model", id="unknown-model"),
    pytest.param({"model": "tiny", "messages": CHAT, "temperature": 7}, 400, None, "temperature",
                 id="temperature-out-of-range"),
    pytest.param({"model": "tiny", "messages": [{"role": "user", "content": "fox " * 600}]}, 400,
                 "context_length_exceeded", "messages", id="context-too-long"),
])
def test_bad_input_gets_openai_errors(stack, body, status, code, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(stack.base_url + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == status
    error = json.loads(err.value.read())["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param


def test_a_busy_port_exits_non_zero_with_one_line(stack):
    out = subprocess.run([sys.executable, "-m", "cli", "orchestrator", "--listen", stack.orchestrator],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot bind" in lines[0], out.stderr


def test_a_bad_config_exits_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "cloud"\n')
    for daemon in ("orchestrator", "pool-manager", "up"):
        out = subprocess.run([sys.executable, "-m", "cli", daemon, "--config", str(bad)],
                             capture_output=True, text=True, timeout=60)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode != 0 and len(lines) == 1 and "mode" in lines[0], (daemon, out.stderr)


def test_stopping_up_leaves_no_process(tmp_path_factory):
    """Last: a fresh stack with a worker, Ctrl-C, and nothing of it survives."""
    s = Stack(tmp_path_factory.mktemp("stop")).start()
    client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
    client.completions.create(model="tiny", prompt="the fox", max_tokens=2)
    pids = {s.proc.pid, *pids_with(str(s.config_path)), *pids_with(f"127.0.0.1:{s.gateway_port}"),
            *(w.pid for p in snapshot(s).pools for w in p.workers)}
    assert len(pids) >= 5  # up, orchestrator, pool manager, gateway, worker
    os.killpg(s.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole group
    assert s.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)]
    assert not pids_with(f"127.0.0.1:{s.pool_port}")


def _services(address: str) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5))
        return {s.name for s in resp.list_services_response.service}


def _serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status \
            == health_pb2.HealthCheckResponse.SERVING


def test_every_server_offers_health_and_reflection(stack, client):
    client.completions.create(model="tiny", prompt="the fox", max_tokens=1)
    [worker] = snapshot(stack).pools[0].workers
    expected = {
        stack.orchestrator: "llama_orch.v1.ClientService",
        f"127.0.0.1:{stack.pool_port}": "llama_orch.v1.WorkerCallbackService",
        worker.endpoint: "llama_orch.v1.WorkerService",
    }
    for address, service in expected.items():
        names = _services(address)
        assert service in names and "grpc.health.v1.Health" in names, (address, names)
        assert _serving(address)


def _sse(lines):
    """Parse SSE lines into (id, event, data) tuples."""
    ev = {}
    for line in lines:
        if line == "":
            if "data" in ev:
                yield ev.get("id"), ev.get("event"), json.loads(ev["data"])
            ev = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            ev[key] = value


def test_v2_resume_with_last_event_id_gives_exactly_the_missed_events(stack):
    import httpx
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        created = http.post("/v2/tasks", json={"model": "tiny", "prompt": "The Lion and the Mouse.",
                                               "max_tokens": 200, "seed": 5, "detach": True},
                            headers={"Idempotency-Key": "resume-test-1"})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        again = http.post("/v2/tasks", json={"model": "tiny", "prompt": "The Lion and the Mouse.",
                                             "max_tokens": 200, "seed": 5, "detach": True},
                          headers={"Idempotency-Key": "resume-test-1"})
        assert again.json()["id"] == job_id and again.json()["existing"] is True
        first = []
        with http.stream("GET", f"/v2/tasks/{job_id}/events") as resp:
            for item in _sse(resp.iter_lines()):
                first.append(item)
                if len(first) == 4:
                    break  # the client goes away mid-stream
        last_id = first[-1][0]
        with http.stream("GET", f"/v2/tasks/{job_id}/events", headers={"Last-Event-ID": last_id}) as resp:
            rest = list(_sse(resp.iter_lines()))
        with http.stream("GET", f"/v2/tasks/{job_id}/events") as resp:
            full = list(_sse(resp.iter_lines()))
        assert rest and rest[-1][1] in ("end", "error")
        assert [i for i, _, _ in first + rest] == [i for i, _, _ in full]
        assert first + rest == full
        assert [int(i) for i, _, _ in full] == list(range(1, len(full) + 1))
        bad = http.get(f"/v2/tasks/{job_id}/events", headers={"Last-Event-ID": "x1"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
        beyond = http.get(f"/v2/tasks/{job_id}/events", headers={"Last-Event-ID": str(len(full) + 5)})
        assert beyond.status_code == 400 and beyond.json()["error"]["code"] == "resume_out_of_range"
        gone = http.delete("/v2/tasks/job-doesnotexist")
        assert gone.status_code == 404
        done = http.delete(f"/v2/tasks/{job_id}")  # cancelling a finished job: its outcome
        assert done.status_code == 200 and done.json()["status"] == "succeeded"


def test_metrics_carry_the_orchestrator_and_the_gateway(stack, client):
    client.completions.create(model="tiny", prompt="the fox", max_tokens=1)
    text = urllib.request.urlopen(stack.base_url + "/metrics", timeout=10).read().decode()
    for name in ("orchd_queue_depth", "orchd_admissions_total", "orchd_scheduling_latency_ms_bucket",
                 "orchd_dispatches_total", "orchd_retries_total"):
        assert name in text, name
    assert 'component="orchestrator"' in text and 'component="gateway"' in text
    assert "job-" not in text  # no job ids as labels


def test_a_detached_stream_outlives_its_client(stack, client):
    stream = client.chat.completions.create(model="tiny", messages=CHAT, stream=True, max_tokens=300,
                                            seed=11, extra_body={"detach": True})
    first = next(iter(stream))
    stream.close()  # the client goes away; a detached job keeps running
    job_id = first.id.removeprefix("chatcmpl-")
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        body = json.loads(urllib.request.urlopen(f"{stack.base_url}/v2/tasks/{job_id}", timeout=10).read())
        status = body["status"]
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert status == "succeeded"


def test_an_idempotency_key_reused_for_another_request_is_refused(stack):
    import httpx
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        a = http.post("/v2/tasks", json={"model": "tiny", "prompt": "the fox", "max_tokens": 2},
                      headers={"Idempotency-Key": "conflict-1"})
        b = http.post("/v2/tasks", json={"model": "tiny", "prompt": "the wolf", "max_tokens": 2},
                      headers={"Idempotency-Key": "conflict-1"})
    assert a.status_code == 202
    assert b.status_code == 409 and b.json()["error"]["code"] == "idempotency_conflict"


def test_every_daemon_keeps_its_start_up_heap_out_of_full_collections(stack, client):
    client.completions.create(model="tiny", prompt="the fox", max_tokens=2)  # a worker runs
    frozen = {json.loads(line)["component"] for line in stack.logs().splitlines()
              if '"code":"runtime.heap_frozen"' in line}
    assert frozen >= {"orchestrator", "gateway", "pool_manager", "worker"}
