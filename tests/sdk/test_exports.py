"""The SDK's surface and packaging, without a stack: the pinned public names, the error
tree's code mapping, the stub copy living beside the server's, and refusals the SDK
makes before sending anything."""

from __future__ import annotations

import inspect
import re
import tomllib
import types
from pathlib import Path

import grpc
import llama_orch_sdk
import pytest
from google.protobuf import descriptor_pool
from llama_orch_sdk import errors
from llama_orch_sdk._gen.google.rpc import error_details_pb2, status_pb2
from llama_orch_sdk._gen.llama_orch.v1 import client_pb2 as sdk_client_pb2
from llama_orch_sdk._gen.llama_orch.v1 import common_pb2 as sdk_common_pb2

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = [
    "LlamaOrch", "AsyncLlamaOrch", "Stream", "AsyncStream",
    "ChatCompletion", "ChatCompletionChunk", "ChatCompletionMessage",
    "ChatCompletionTokenLogprob", "Choice", "ChoiceDelta", "ChoiceLogprobs", "ChunkChoice",
    "Completion", "CompletionChoice", "CompletionUsage", "Logprobs", "Model", "ModelList",
    "TopLogprob",
    "ErrorDetail", "Fact", "Job", "JobEvent", "JobPage", "Worker",
    "LlamaOrchError", "AuthenticationError", "CancelledError", "ConflictError",
    "DeadlineExceededError", "InvalidRequestError", "NotFoundError", "PermissionDeniedError",
    "QuotaExceededError", "RateLimitError", "ServerError", "UnavailableError",
    "UnimplementedError",
    "__version__",
]


def test_all_is_the_pinned_public_surface():
    assert llama_orch_sdk.__all__ == PUBLIC
    exposed = {name for name, value in vars(llama_orch_sdk).items()
               if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert exposed == set(PUBLIC) - {"__version__"}


def test_the_sdk_depends_on_grpcio_and_protobuf_only_at_the_locked_versions():
    project = tomllib.loads((ROOT / "sdk/python/pyproject.toml").read_text())["project"]
    floors = dict(re.match(r"([\w-]+)>=([\d.]+)", d).groups() for d in project["dependencies"])
    locked = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert floors == {"grpcio": locked["grpcio"], "protobuf": locked["protobuf"]}


def test_its_stubs_load_beside_the_servers_in_a_private_pool():
    from google.rpc import error_details_pb2 as google_error_details_pb2  # googleapis' copy
    from llama_orch.v1 import client_pb2, common_pb2  # the server's copy, same .proto names

    assert sdk_client_pb2.DESCRIPTOR.name == client_pb2.DESCRIPTOR.name
    assert sdk_client_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert error_details_pb2.ErrorInfo is not google_error_details_pb2.ErrorInfo
    # Distinct classes, one wire format.
    spec = sdk_common_pb2.JobSpec(model="tiny", prompt="hi")
    spec.sampling.seed = 7
    request = sdk_client_pb2.SubmitRequest(spec=spec, idempotency_key="k")
    theirs = client_pb2.SubmitRequest.FromString(request.SerializeToString())
    assert (theirs.spec.model, theirs.spec.sampling.seed, theirs.idempotency_key) == \
        ("tiny", 7, "k")
    assert isinstance(theirs.spec, common_pb2.JobSpec)


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, details: str, trailers=()):
        self._status, self._details, self._trailers = status, details, tuple(trailers)

    def code(self):
        return self._status

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def rpc_error(status: grpc.StatusCode, reason: str = "", param: str = "",
              domain: str = "llama-orch") -> FakeRpcError:
    """A failed call as the orchestrator sends it (common/errors.py OrchError.to_status)."""
    if not reason:
        return FakeRpcError(status, "plain failure")
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain)
    if param:
        info.metadata["param"] = param
    details = status_pb2.Status(code=status.value[0], message="why")
    details.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo",
                        value=info.SerializeToString())
    return FakeRpcError(status, "why", [("grpc-status-details-bin", details.SerializeToString())])


def malformed_error_info(status: grpc.StatusCode) -> FakeRpcError:
    """A status whose ErrorInfo detail does not decode."""
    details = status_pb2.Status(code=status.value[0], message="why")
    details.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")
    return FakeRpcError(status, "why", [("grpc-status-details-bin", details.SerializeToString())])


S = grpc.StatusCode


@pytest.mark.parametrize("err,cls,code,param", [
    pytest.param(rpc_error(S.NOT_FOUND, "MODEL_NOT_FOUND", "model"), errors.NotFoundError,
                 "MODEL_NOT_FOUND", "model", id="model-not-found"),
    pytest.param(rpc_error(S.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", "messages"),
                 errors.InvalidRequestError, "CONTEXT_LENGTH_EXCEEDED", "messages",
                 id="context-length"),
    pytest.param(rpc_error(S.RESOURCE_EXHAUSTED, "QUOTA_EXHAUSTED"), errors.QuotaExceededError,
                 "QUOTA_EXHAUSTED", "", id="quota"),
    pytest.param(rpc_error(S.ALREADY_EXISTS, "IDEMPOTENCY_CONFLICT"), errors.ConflictError,
                 "IDEMPOTENCY_CONFLICT", "", id="idempotency-conflict"),
    pytest.param(rpc_error(S.UNAVAILABLE, "WORKER_CRASHED"), errors.UnavailableError,
                 "WORKER_CRASHED", "", id="worker-crashed"),
    pytest.param(rpc_error(S.FAILED_PRECONDITION, "MODEL_UNSERVABLE"), errors.ServerError,
                 "MODEL_UNSERVABLE", "", id="model-unservable"),
    pytest.param(rpc_error(S.NOT_FOUND, "SOMETHING_NEWER", "x"), errors.NotFoundError,
                 "SOMETHING_NEWER", "x", id="unknown-code-classed-by-status"),
    pytest.param(rpc_error(S.NOT_FOUND, "MODEL_NOT_FOUND", domain="elsewhere"),
                 errors.NotFoundError, "NOT_FOUND", "", id="foreign-domain-ignored"),
    pytest.param(rpc_error(S.UNIMPLEMENTED), errors.UnimplementedError, "UNIMPLEMENTED", "",
                 id="unimplemented"),
    pytest.param(rpc_error(S.UNAVAILABLE), errors.UnavailableError, "UNAVAILABLE", "",
                 id="connection-refused"),
    pytest.param(rpc_error(S.DATA_LOSS), errors.ServerError, "INTERNAL", "", id="other-status"),
    pytest.param(malformed_error_info(S.NOT_FOUND), errors.NotFoundError, "NOT_FOUND", "",
                 id="malformed-error-info-skipped"),
])
def test_failed_calls_become_typed_errors(err, cls, code, param):
    typed = errors.from_rpc_error(err)
    assert type(typed) is cls
    assert (typed.code, typed.param) == (code, param)
    assert isinstance(typed, errors.LlamaOrchError) and typed.message


def test_retryable_follows_the_code():
    assert errors.error_for("WORKER_CRASHED", "x").retryable
    assert not errors.error_for("MODEL_NOT_FOUND", "x").retryable
    assert str(errors.error_for("INVALID_ARGUMENT", "bad", param="n")) == \
        "INVALID_ARGUMENT: bad (param: n)"


def test_every_stable_code_is_placed_in_the_tree():
    """A code added to errors.proto needs a decision here (and in the errors.py drawing)."""
    from llama_orch_sdk._gen.llama_orch.v1 import errors_pb2
    names = errors_pb2.ErrorCode.DESCRIPTOR.values_by_name
    codes = {n.removeprefix("ERROR_CODE_") for n in names} - {"UNSPECIFIED"}
    assert codes <= set(errors.CLASS_OF_CODE)
    drawing = errors.__doc__
    assert all(re.search(rf"\b{code}\b", drawing) for code in errors.CLASS_OF_CODE)
    classes = {code: type(errors.error_for(code, "x")) for code in codes}
    assert classes["CANCELLED"] is errors.CancelledError
    assert classes["DEADLINE_EXCEEDED"] is errors.DeadlineExceededError
    assert classes["UNAUTHENTICATED"] is errors.AuthenticationError
    assert classes["RATE_LIMITED"] is errors.RateLimitError


# Nothing listens on port 1: these must fail before any call is made.
@pytest.mark.parametrize("call,code,param", [
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[], tools=[{}]),
                 "UNSUPPORTED_PARAMETER", "tools", id="tools"),
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[],
                                                     stream_options={"include_usage": True}),
                 "INVALID_ARGUMENT", "stream_options", id="stream-options-without-stream"),
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[], top_logprobs=2),
                 "INVALID_ARGUMENT", "top_logprobs", id="top-logprobs-without-logprobs"),
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[],
                                                     priority="urgent"),
                 "INVALID_ARGUMENT", "priority", id="priority"),
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[],
                                                     temperature="hot"),
                 "INVALID_ARGUMENT", "temperature", id="temperature-type"),
    pytest.param(lambda c: c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
                 "UNSUPPORTED_PARAMETER", "messages[0].content", id="image-part"),
    pytest.param(lambda c: c.completions.create(model="tiny", prompt=[1, 2, 3]),
                 "UNSUPPORTED_PARAMETER", "prompt", id="token-prompt"),
    pytest.param(lambda c: c.jobs.submit(model="tiny"), "INVALID_ARGUMENT", "prompt",
                 id="submit-without-input"),
    pytest.param(lambda c: c.jobs.stream("job-x", from_seq=0), "INVALID_ARGUMENT", "from_seq",
                 id="from-seq-zero"),
    pytest.param(lambda c: c.facts.watch(kinds=["job.exploded"]), "INVALID_ARGUMENT", "kinds",
                 id="unknown-fact-code"),
    pytest.param(lambda c: c.completions.create(model="tiny", prompt="x", echo=0),
                 "UNSUPPORTED_PARAMETER", "echo", id="unsupported-with-a-falsy-value"),
    pytest.param(lambda c: c.completions.create(model="tiny", prompt="x", logprobs=True),
                 "INVALID_ARGUMENT", "logprobs", id="legacy-logprobs-is-a-count"),
    pytest.param(lambda c: c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": [{"type": "text"}]}]),
                 "INVALID_ARGUMENT", "messages[0].content", id="text-part-without-text"),
    # Wrong types: protobuf would raise a raw TypeError/ValueError, or coerce them.
    *[pytest.param(call, "INVALID_ARGUMENT", param, id=name) for name, call, param in [
        ("message-name", lambda c: c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x", "name": 5}]),
         "messages[0].name"),
        ("stop-int", lambda c: c.chat.completions.create(model="tiny", messages=[], stop=5),
         "stop"),
        ("stream-options-list", lambda c: c.chat.completions.create(
            model="tiny", messages=[], stream=True, stream_options=["include_usage"]),
         "stream_options"),
        ("user-int", lambda c: c.chat.completions.create(model="tiny", messages=[], user=5),
         "user"),
        ("idempotency-key-int", lambda c: c.chat.completions.create(
            model="tiny", messages=[], idempotency_key=5), "idempotency_key"),
        ("detach-str", lambda c: c.chat.completions.create(model="tiny", messages=[],
                                                           detach="no"), "detach"),
        ("get-none", lambda c: c.jobs.get(None), "job_id"),
        ("cancel-int", lambda c: c.jobs.cancel(5), "job_id"),
        ("stream-none", lambda c: c.jobs.stream(None), "job_id"),
        ("retrieve-none", lambda c: c.models.retrieve(None), "model"),
        ("page-size-negative", lambda c: c.jobs.list(page_size=-1), "page_size"),
        ("page-size-str", lambda c: c.jobs.list(page_size="10"), "page_size"),
        ("deadline-negative", lambda c: c.jobs.submit(model="tiny", prompt="x", deadline_ms=-5),
         "deadline_ms"),
        ("deadline-str", lambda c: c.jobs.submit(model="tiny", prompt="x", deadline_ms="5"),
         "deadline_ms"),
        ("keep-output-str", lambda c: c.jobs.submit(model="tiny", prompt="x",
                                                    keep_output="yes"), "keep_output"),
        ("after-id-negative", lambda c: c.facts.watch(after_id=-1), "after_id"),
        ("watch-job-id-int", lambda c: c.facts.watch(job_id=5), "job_id"),
        ("kinds-none", lambda c: c.facts.watch(kinds=None), "kinds"),
        ("credit-str", lambda c: c.admin.add_credit("t-1", "5"), "tokens"),
        ("device-ids-str", lambda c: c.admin.pin_model("tiny", device_ids="gpu0"), "device_ids"),
    ]],
])
def test_the_sdk_refuses_what_it_cannot_send(call, code, param):
    with llama_orch_sdk.LlamaOrch("127.0.0.1:1") as client, \
            pytest.raises(llama_orch_sdk.InvalidRequestError) as err:
        call(client)
    assert (err.value.code, err.value.param) == (code, param)


def test_no_op_values_of_unsupported_parameters_are_accepted():
    from llama_orch_sdk.resources import _spec
    _spec.refuse_unsupported({"tools": None, "tool_choice": "none", "logit_bias": {},
                              "response_format": {"type": "text"}, "store": False},
                             _spec.CHAT_UNSUPPORTED)
    _spec.refuse_unsupported({"echo": False, "best_of": 1, "suffix": None},
                             _spec.TEXT_UNSUPPORTED)
    chat = _spec.chat([{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                         {"type": "text", "text": "b"}]}])
    assert (chat.messages[0].role, chat.messages[0].content) == ("system", "ab")


def test_an_unreachable_orchestrator_is_unavailable():
    with llama_orch_sdk.LlamaOrch("127.0.0.1:1", timeout=5) as client, \
            pytest.raises(llama_orch_sdk.UnavailableError) as err:
        client.models.list()
    assert err.value.code == "UNAVAILABLE" and err.value.retryable


def test_address_and_api_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLAMA_ORCH_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("LLAMA_ORCH_API_KEY", "sk-test")
    with llama_orch_sdk.LlamaOrch() as client:
        assert client.address == "127.0.0.1:1"
        assert ("authorization", "Bearer sk-test") in client._transport.settings.metadata
    monkeypatch.delenv("LLAMA_ORCH_ADDRESS")
    with llama_orch_sdk.LlamaOrch(api_key="") as client:
        assert client.address == "127.0.0.1:9100"
        assert not client._transport.settings.metadata


@pytest.mark.parametrize("call", [
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[], temprature=0),
                 id="typo-with-a-falsy-value"),
    pytest.param(lambda c: c.chat.completions.create(model="tiny", messages=[], echo=False),
                 id="a-completions-only-parameter"),
    pytest.param(lambda c: c.completions.create(model="tiny", prompt="x", tools=None),
                 id="a-chat-only-parameter"),
])
def test_a_parameter_openai_does_not_know_is_a_type_error(call):
    # As openai's own create(): a misspelt name must not pass as an ignored one.
    with llama_orch_sdk.LlamaOrch("127.0.0.1:1") as client, \
            pytest.raises(TypeError, match="unexpected keyword argument"):
        call(client)


def test_metadata_is_a_dict_or_pairs_with_keys_sent_lower_case():
    for metadata in ({"X-Correlation-Id": "abc"}, [("X-Correlation-Id", "abc")]):
        with llama_orch_sdk.LlamaOrch("127.0.0.1:1", api_key="", metadata=metadata) as client:
            assert client._transport.settings.metadata == (("x-correlation-id", "abc"),)


@pytest.mark.parametrize("kwargs,param", [
    pytest.param(dict(metadata=[("x-n", 5)]), "metadata", id="int-value"),
    pytest.param(dict(metadata=["x-n"]), "metadata", id="not-a-pair"),
    pytest.param(dict(metadata={"x-n": "a\nb"}), "metadata", id="newline-in-value"),
    pytest.param(dict(metadata={"x n": "a"}), "metadata", id="space-in-key"),
    pytest.param(dict(api_key="secret\n"), "api_key", id="newline-in-api-key"),
])
def test_metadata_grpc_cannot_send_is_refused_at_construction(kwargs, param):
    # grpc would refuse it only at the first call, as an opaque INTERNAL error.
    with pytest.raises(llama_orch_sdk.InvalidRequestError) as err:
        llama_orch_sdk.LlamaOrch("127.0.0.1:1", **kwargs)
    assert (err.value.code, err.value.param) == ("INVALID_ARGUMENT", param)


class RecordingTransport:
    """Stands in for SyncTransport under Admin: records each call's rpc and timeout."""

    def __init__(self):
        self.admin = self
        self.calls = []

    def __getattr__(self, rpc):
        return rpc

    def unary(self, method, request, then, *, timeout=None):
        self.calls.append((method, timeout))


def test_every_admin_call_takes_its_own_timeout():
    from llama_orch_sdk.resources.admin import Admin
    methods = [m for name, m in vars(Admin).items()
               if callable(m) and not name.startswith("_")]
    for method in methods:
        param = inspect.signature(method).parameters.get("timeout")
        assert param is not None and param.kind is param.KEYWORD_ONLY, method.__name__
        assert param.default is None, method.__name__
    transport = RecordingTransport()
    admin = Admin(transport)
    admin.start_worker("tiny", timeout=600)
    admin.preload_model("tiny")
    assert transport.calls == [("StartWorker", 600), ("PreloadModel", None)]
