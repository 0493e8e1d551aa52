"""The worker as a real process on the embedded tiny model, seen from a real callback
server, like the pool manager and the orchestrator see it.

Two workers start once for the module (concurrently); most tests share the first.
Long jobs use a prompt/seed that runs to max_tokens (checked, not assumed), so busy
and cancel tests have a stream that is still going when they act on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.errors import OrchError, code_name
from llama_orch.v1 import common_pb2, worker_callback_pb2, worker_pb2, worker_pb2_grpc
from tests.worker.conftest import Callbacks, callback_server

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "tiny"
START_TIMEOUT_S = 120
pytestmark = pytest.mark.asyncio(loop_scope="module")

# Runs to max_tokens without meeting </s> on the tiny model (the busy/cancel tests
# assert that, so a rebuilt model that breaks it fails loudly, not flakily).
LONG = dict(prompt="Once upon a time", temperature=1.5, seed=15, max_tokens=480)
_job_ids = itertools.count()


@dataclass
class Worker:
    worker_id: str
    proc: asyncio.subprocess.Process
    stderr: Path
    ready: worker_callback_pb2.ReportReadyRequest | None = None
    channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)

    async def stop(self) -> int:
        if self.channel is not None:
            await self.channel.close()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def spawn(callbacks: Callbacks, folder: Path, worker_id: str, *extra: str,
                model_ref: str = f"file:{MODEL}", env: dict[str, str] | None = None) -> Worker:
    stderr = folder / f"{worker_id}.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "--worker-id", worker_id, "--model-ref", model_ref,
            "--engine", "hf", "--devices", "cpu", "--callback", callbacks.address,
            "--listen", "127.0.0.1:0", "--threads", "1", *extra,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env={**os.environ, **(env or {})})
    return Worker(worker_id, proc, stderr)


async def wait_ready(callbacks: Callbacks, worker: Worker) -> Worker:
    async with asyncio.timeout(START_TIMEOUT_S):
        while not callbacks.arrived[worker.worker_id].is_set():
            if worker.proc.returncode is not None:
                pytest.fail(f"{worker.worker_id} exited: {worker.stderr.read_text()}")
            await asyncio.sleep(0.05)
    worker.ready = callbacks.ready[worker.worker_id]
    worker.channel = grpc.aio.insecure_channel(worker.ready.endpoint)
    return worker


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def callbacks():
    async with callback_server() as cb:  # module-scoped: the workers outlive one test
        yield cb


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(callbacks, tmp_path_factory):
    """Two workers on the same model, started concurrently."""
    folder = tmp_path_factory.mktemp("workers")
    workers = [await spawn(callbacks, folder, name) for name in ("w-main", "w-peer")]
    try:
        yield await asyncio.gather(*(wait_ready(callbacks, w) for w in workers))
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


@pytest.fixture
def worker(pair) -> Worker:
    return pair[0]


def request(prompt: str = "Once upon a time", *, job_id: str = "", max_tokens: int = 24,
            stop=(), **sampling) -> worker_pb2.ExecuteRequest:
    return worker_pb2.ExecuteRequest(
        job_id=job_id or f"job-{next(_job_ids)}", prompt=prompt,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, stop=list(stop), **sampling))


async def collect(stub, req) -> list[worker_pb2.ExecuteResponse]:
    return [event async for event in stub.Execute(req)]


async def read_rest(call) -> list[worker_pb2.ExecuteResponse]:
    """The remaining events of a call already read with read() (APIs cannot be mixed)."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def text(events, choice: int = 0) -> str:
    return "".join(e.tokens.text for e in events
                   if e.HasField("tokens") and e.tokens.choice_index == choice)


def token_ids(events, choice: int = 0) -> list[int]:
    return [t for e in events if e.HasField("tokens") and e.tokens.choice_index == choice
            for t in e.tokens.token_ids]


def error_code(event) -> str:
    return code_name(event.error.code)


# ---- startup ---------------------------------------------------------------------


async def test_ready_comes_after_the_server_serves(callbacks, worker):
    assert callbacks.health_at_ready[worker.worker_id] == health_pb2.HealthCheckResponse.SERVING


async def test_ready_report_describes_the_worker(worker):
    ready = worker.ready
    weights = hashlib.sha256((MODEL / "model.safetensors").read_bytes()).hexdigest()
    assert ready.endpoint.startswith("127.0.0.1:")
    assert (ready.engine, ready.context_length, ready.slots) == ("hf", 512, 1)
    assert ready.model_ref == f"file:{MODEL}"
    assert ready.model_digest == weights
    assert ready.pid == worker.proc.pid
    assert ready.device_bytes["cpu"] > 0
    assert "transformers" in ready.engine_version and "torch" in ready.engine_version
    assert ready.load_ms > 0


async def test_reflection_lists_the_worker_service(worker):
    stub = reflection_pb2_grpc.ServerReflectionStub(worker.channel)
    replies = [r async for r in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"llama_orch.v1.WorkerService", "grpc.health.v1.Health"} <= names


async def test_get_status_when_idle(worker):
    status = await worker.stub.GetStatus(worker_pb2.GetStatusRequest())
    assert status.worker.state == common_pb2.WORKER_STATE_READY
    assert (status.context_length, list(status.running_job_ids)) == (512, [])
    assert status.worker.model_digest == worker.ready.model_digest


@pytest.mark.parametrize("args,model_ref,code,needle", [
    ((), "file:/nonexistent/tiny", "INVALID_MODEL_REF", "/nonexistent/tiny"),
    ((), "hf:org/repo@main", "INVALID_MODEL_REF", "hf:org/repo@main"),
    (("--option", "bogus=1"), f"file:{MODEL}", "ENGINE_OPTION_REJECTED", "bogus"),
    (("--option", "dtype=int3"), f"file:{MODEL}", "ENGINE_OPTION_REJECTED", "dtype"),
    (("--devices", "GPU-0,GPU-1"), f"file:{MODEL}", "ENGINE_OPTION_REJECTED", "GPU-0"),
    (("--engine", "nope"), f"file:{MODEL}", "ENGINE_UNAVAILABLE", "nope"),
    ((), "not-a-model", "ENGINE_ERROR", "cannot load"),
    (("--devices", "GPU-0"), f"file:{MODEL}", "ENGINE_UNAVAILABLE", "GPU-0"),
], ids=["missing-folder", "not-a-file-ref", "unknown-option", "bad-option-value",
        "multi-gpu-mask", "unknown-engine", "folder-without-model", "no-cuda-for-a-gpu"])
async def test_startup_failure_is_reported_in_one_line(callbacks, tmp_path, args, model_ref,
                                                       code, needle):
    if model_ref == "not-a-model":
        (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": "x"}')
        model_ref = f"file:{tmp_path}"
    worker_id = f"w-fail-{next(_job_ids)}"
    # An empty mask hides any GPU this machine may have, as the pool manager would.
    proc = await spawn(callbacks, tmp_path, worker_id, *args, model_ref=model_ref,
                       env={"CUDA_VISIBLE_DEVICES": ""})
    assert await asyncio.wait_for(proc.proc.wait(), START_TIMEOUT_S) == 2
    lines = proc.stderr.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"worker: {code}: ") and needle in lines[0]
    failure = callbacks.failures[worker_id].error
    assert (code_name(failure.code), worker_id in callbacks.ready) == (code, False)


async def test_busy_port_is_reported_in_one_line(callbacks, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await spawn(callbacks, tmp_path, "w-busy-port", "--listen", f"127.0.0.1:{port}")
        assert await asyncio.wait_for(proc.proc.wait(), START_TIMEOUT_S) == 2
    lines = proc.stderr.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worker: CONFIG_INVALID: cannot bind")
    assert code_name(callbacks.failures["w-busy-port"].error.code) == "CONFIG_INVALID"


async def test_bad_arguments_exit_with_one_line(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--model-ref", f"file:{MODEL}", "--threads", "0",
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().count("\n") == 1 and err.startswith(b"worker: CONFIG_INVALID: ")


# ---- the stream --------------------------------------------------------------------


async def test_event_order_and_end(worker):
    events = await collect(worker.stub, request(temperature=0.0, seed=1))
    order = kinds(events)
    assert order[0] == "started" and order[-2:] == ["metrics", "end"]
    assert set(order[1:-2]) == {"tokens"}
    started, metrics, end = events[0].started, events[-2].metrics, events[-1].end
    ids = token_ids(events)
    assert (started.prompt_tokens, started.seed, started.model_ref) == (5, 1, f"file:{MODEL}")
    assert end.finish_reason == "length" and len(ids) == 24
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (5, 24)
    assert metrics.generated_tokens == 24 and metrics.tokens_per_second > 0
    assert end.proof.token_hash == hashlib.sha256(struct.pack("<24I", *ids)).hexdigest()
    assert (end.proof.token_count, end.proof.seed, end.proof.engine) == (24, 1, "hf")
    assert end.proof.model_digest == worker.ready.model_digest


async def test_same_seed_same_tokens_in_both_processes(pair):
    main, peer = pair
    req = request("The", temperature=1.0, seed=42, max_tokens=40)
    runs = [await collect(main.stub, req), await collect(main.stub, req),
            await collect(peer.stub, req)]
    assert len({tuple(token_ids(r)) for r in runs}) == 1
    assert len({text(r) for r in runs}) == 1
    assert len({r[-1].end.proof.token_hash for r in runs}) == 1


async def test_different_seed_different_tokens(worker):
    first = await collect(worker.stub, request("The", temperature=1.0, seed=0, max_tokens=16))
    second = await collect(worker.stub, request("The", temperature=1.0, seed=1, max_tokens=16))
    assert token_ids(first) != token_ids(second)


async def test_eos_ends_with_stop(worker):
    events = await collect(worker.stub, request(temperature=1.0, seed=2, max_tokens=480))
    assert events[-1].end.finish_reason == "stop"
    assert len(token_ids(events)) < 480


async def test_stop_string_truncates_the_text(worker):
    full = await collect(worker.stub, request(temperature=0.0, max_tokens=40))
    words = text(full).split()
    stop = f" {words[4]} {words[5]}"
    cut = await collect(worker.stub, request(temperature=0.0, max_tokens=40, stop=[stop]))
    assert text(cut) == text(full)[:text(full).index(stop)]
    assert cut[-1].end.finish_reason == "stop"
    assert token_ids(full)[:len(token_ids(cut))] == token_ids(cut)


async def test_text_is_utf8_without_replacement_characters(worker):
    events = await collect(worker.stub, request("The", temperature=2.0, seed=9, max_tokens=200))
    out = text(events)
    assert out and "\ufffd" not in out
    assert out.encode("utf-8").decode("utf-8") == out


async def test_chat_messages_use_the_model_template(worker):
    messages = [common_pb2.ChatMessage(role="user", content="Tell me a story.")]
    chat = await collect(worker.stub, worker_pb2.ExecuteRequest(
        job_id="chat", messages=messages, sampling=common_pb2.SamplingParams(
            temperature=0.0, max_tokens=20)))
    rendered = await collect(worker.stub, request(
        "<s><|user|> Tell me a story. <|end|> <|assistant|>", temperature=0.0, max_tokens=20))
    assert chat[0].started.prompt_tokens == rendered[0].started.prompt_tokens
    assert token_ids(chat) == token_ids(rendered) and text(chat)


async def test_prompt_token_ids_are_authoritative(worker):
    by_text = await collect(worker.stub, request(temperature=0.0))
    by_ids = await collect(worker.stub, worker_pb2.ExecuteRequest(
        job_id="ids", prompt="ignored words", prompt_token_ids=[2, 9, 10],
        sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=8)))
    assert by_ids[0].started.prompt_tokens == 3
    assert token_ids(by_ids) != token_ids(by_text)[:8]


async def test_n_choices_run_in_turn_with_seed_plus_index(worker):
    events = await collect(worker.stub, request("The", temperature=1.0, seed=5, n=2,
                                                max_tokens=12))
    ends = [e.end for e in events if e.HasField("end")]
    assert kinds(events).count("started") == 1 and kinds(events)[-1] == "end"
    assert [(e.choice_index, e.proof.seed) for e in ends] == [(0, 5), (1, 6)]
    alone = await collect(worker.stub, request("The", temperature=1.0, seed=6, max_tokens=12))
    assert token_ids(events, choice=1) == token_ids(alone)


async def test_logprobs_come_with_top_alternatives(worker):
    events = await collect(worker.stub, request(temperature=0.0, logprobs=True, top_logprobs=3))
    tokens = [e.tokens for e in events if e.HasField("tokens")]
    assert all(len(t.logprobs) == len(t.token_ids) for t in tokens)
    first = tokens[0].logprobs[0]
    assert len(first.top) == 3 and first.logprob <= 0
    assert first.top[0].logprob == pytest.approx(first.logprob)  # greedy took the best
    assert "".join(lp.token for t in tokens for lp in t.logprobs) == text(events)


@pytest.mark.parametrize("req,code", [
    (worker_pb2.ExecuteRequest(job_id="empty", sampling=common_pb2.SamplingParams()),
     "INVALID_ARGUMENT"),
    (worker_pb2.ExecuteRequest(job_id="long", prompt_token_ids=[10] * 500,
                               sampling=common_pb2.SamplingParams(max_tokens=100)),
     "CONTEXT_LENGTH_EXCEEDED"),
    (worker_pb2.ExecuteRequest(job_id="huge", prompt_token_ids=[10] * 600,
                               sampling=common_pb2.SamplingParams()),
     "CONTEXT_LENGTH_EXCEEDED"),
    (request(top_p=0.0), "INVALID_ARGUMENT"),
    (worker_pb2.ExecuteRequest(job_id="oov", prompt_token_ids=[999_999],
                               sampling=common_pb2.SamplingParams()), "INVALID_ARGUMENT"),
], ids=["empty-prompt", "prompt-plus-max-tokens", "prompt-alone", "bad-top-p", "unknown-token"])
async def test_refused_requests_get_a_lone_error(worker, req, code):
    events = await collect(worker.stub, req)
    assert kinds(events) == ["error"] and error_code(events[0]) == code


async def test_deadline_ends_the_stream(worker):
    events = await collect(worker.stub, _long(deadline_ms=1))
    assert kinds(events)[-1] == "error" and error_code(events[-1]) == "DEADLINE_EXCEEDED"
    assert "end" not in kinds(events)


def _long(**fields) -> worker_pb2.ExecuteRequest:
    req = request(**LONG)
    for name, value in fields.items():
        setattr(req, name, value)
    return req


# ---- one slot, cancel ----------------------------------------------------------------


async def test_busy_worker_refuses_and_the_running_job_finishes(worker):
    req = _long()
    first = worker.stub.Execute(req)
    assert (await first.read()).HasField("started")
    status = await worker.stub.GetStatus(worker_pb2.GetStatusRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(worker.stub, request())
    rest = await read_rest(first)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert OrchError.from_rpc_error(refused.value).code == "WORKER_BUSY"
    assert status.worker.state == common_pb2.WORKER_STATE_BUSY
    assert list(status.running_job_ids) == [req.job_id]
    assert kinds(rest)[-1] == "end" and rest[-1].end.finish_reason == "length"
    assert kinds(rest).count("end") == 1


async def test_cancel_mid_stream_then_serve_the_next_job(worker):
    req = _long()
    call = worker.stub.Execute(req)
    assert (await call.read()).HasField("started")
    assert (await call.read()).HasField("tokens")
    first = await worker.stub.Cancel(worker_pb2.CancelRequest(job_id=req.job_id))
    rest = await read_rest(call)
    again = await worker.stub.Cancel(worker_pb2.CancelRequest(job_id=req.job_id))
    assert first.was_running and not again.was_running
    assert kinds(rest)[-1] == "error" and error_code(rest[-1]) == "CANCELLED"
    assert "end" not in kinds(rest) and len(token_ids(rest)) < LONG["max_tokens"]
    after = await collect(worker.stub, request())
    assert kinds(after)[-1] == "end"


async def test_cancel_of_an_unknown_job_is_a_no_op(worker):
    reply = await worker.stub.Cancel(worker_pb2.CancelRequest(job_id="never-seen"))
    assert not reply.was_running


async def test_caller_going_away_frees_the_slot(worker):
    call = worker.stub.Execute(_long())
    assert (await call.read()).HasField("started")
    call.cancel()
    async with asyncio.timeout(30):
        while (await worker.stub.GetStatus(worker_pb2.GetStatusRequest())).running_job_ids:
            await asyncio.sleep(0.01)
    assert kinds(await collect(worker.stub, request()))[-1] == "end"


async def test_sigterm_cancels_the_running_job_and_exits_zero(callbacks, tmp_path):
    fresh = await wait_ready(callbacks, await spawn(callbacks, tmp_path, "w-sigterm"))
    try:
        call = fresh.stub.Execute(_long())
        assert (await call.read()).HasField("started")
        fresh.proc.send_signal(signal.SIGTERM)
        rest = await read_rest(call)
        assert kinds(rest)[-1] == "error" and error_code(rest[-1]) == "CANCELLED"
        assert await asyncio.wait_for(fresh.proc.wait(), 30) == 0
    finally:
        await fresh.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its reaping is pending


async def test_worker_stops_when_its_parent_dies(callbacks, tmp_path):
    # An intermediate shell plays the pool manager, then dies by SIGKILL.
    cmd = (f"{sys.executable} -m worker --worker-id w-orphan --model-ref file:{MODEL} "
           f"--callback {callbacks.address} --listen 127.0.0.1:0 2>{tmp_path}/err & wait")
    parent = await asyncio.create_subprocess_exec("sh", "-c", cmd)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await callbacks.arrived["w-orphan"].wait()
        pid = callbacks.ready["w-orphan"].pid
        parent.kill()
        await parent.wait()
        async with asyncio.timeout(30):
            while _alive(pid):
                await asyncio.sleep(0.1)
    finally:
        if parent.returncode is None:
            parent.kill()
        if "w-orphan" in callbacks.ready and _alive(callbacks.ready["w-orphan"].pid):
            os.kill(callbacks.ready["w-orphan"].pid, signal.SIGKILL)
