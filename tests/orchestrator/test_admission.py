"""Admission: bad input gets a stable code and param; good input is resolved and seeded."""

import pytest

from common.config import OrchestratorConfig
from common.errors import InvalidInput
from llama_orch.v1 import common_pb2 as C
from orchestrator.admission import admit
from orchestrator.catalog import Catalog
from orchestrator.types import Priority

CAT = Catalog.from_config({})
CFG = OrchestratorConfig()


def chat(*msgs, **sampling):
    return C.JobSpec(model="tiny", chat=C.ChatMessages(messages=[C.ChatMessage(role=r, content=t)
                                                                 for r, t in msgs]),
                     sampling=C.SamplingParams(**sampling))


def test_chat_is_rendered_resolved_and_seeded():
    a = admit(chat(("user", "tell me a story"), max_tokens=10), CAT, CFG)
    assert a.model.name == "tiny" and a.model.ref.startswith("file:/")
    assert a.prompt.startswith("<s><|user|> tell me a story")
    assert a.prompt_ids[0] == 2 and a.sampling.max_tokens == 10 and a.sampling.n == 1
    assert a.sampling.HasField("seed") and a.seed == a.sampling.seed
    assert a.priority is Priority.INTERACTIVE and a.deadline_ms == CFG.default_deadline_ms


def test_client_seed_is_kept_and_an_unset_max_tokens_is_the_rest_of_the_context():
    # As OpenAI: no cap unless the client sets one (it was 256, which cut off the
    # answers of clients that send none, such as LangChain's by default).
    a = admit(C.JobSpec(model="tiny", prompt="the fox", sampling=C.SamplingParams(seed=7),
                        priority=C.PRIORITY_BATCH), CAT, CFG)
    assert a.seed == 7 and a.priority is Priority.BATCH
    assert a.sampling.max_tokens == 512 - len(a.prompt_ids)


def test_an_operator_cap_applies_to_requests_that_set_no_max_tokens():
    capped = OrchestratorConfig(default_max_tokens=100)
    a = admit(C.JobSpec(model="tiny", prompt="the fox"), CAT, capped)
    assert a.sampling.max_tokens == 100
    b = admit(C.JobSpec(model="tiny", prompt="the fox",
                        sampling=C.SamplingParams(max_tokens=300)), CAT, capped)
    assert b.sampling.max_tokens == 300  # the client's own limit stands


LONG = "fox " * 600


@pytest.mark.parametrize("spec,code,param", [
    pytest.param(C.JobSpec(prompt="x"), "INVALID_ARGUMENT", "model", id="no-model"),
    pytest.param(C.JobSpec(model="tiny"), "INVALID_ARGUMENT", "messages", id="no-input"),
    pytest.param(chat(), "INVALID_ARGUMENT", "messages", id="empty-messages"),
    pytest.param(chat(("wizard", "hi")), "INVALID_ARGUMENT", "messages[0].role", id="bad-role"),
    pytest.param(chat(("user", "hi"), temperature=2.5), "INVALID_ARGUMENT", "temperature", id="temperature"),
    pytest.param(chat(("user", "hi"), temperature=float("nan")), "INVALID_ARGUMENT", "temperature", id="nan"),
    pytest.param(chat(("user", "hi"), top_p=0.0), "INVALID_ARGUMENT", "top_p", id="top-p-zero"),
    pytest.param(chat(("user", "hi"), top_k=-1), "INVALID_ARGUMENT", "top_k", id="top-k"),
    pytest.param(chat(("user", "hi"), presence_penalty=3), "INVALID_ARGUMENT", "presence_penalty", id="presence"),
    pytest.param(chat(("user", "hi"), n=9), "INVALID_ARGUMENT", "n", id="n-too-big"),
    pytest.param(chat(("user", "hi"), stop=["a"] * 5), "INVALID_ARGUMENT", "stop", id="too-many-stops"),
    pytest.param(chat(("user", "hi"), stop=[""]), "INVALID_ARGUMENT", "stop", id="empty-stop"),
    pytest.param(chat(("user", "hi"), top_logprobs=21), "INVALID_ARGUMENT", "top_logprobs", id="top-logprobs"),
    pytest.param(C.JobSpec(model="tiny", prompt="x", deadline_ms=31 * 60_000), "INVALID_ARGUMENT",
                 "deadline_ms", id="deadline-over-max"),
    pytest.param(C.JobSpec(model="nope", prompt="x"), "MODEL_NOT_FOUND", "model", id="unknown-model"),
    pytest.param(chat(("user", LONG)), "CONTEXT_LENGTH_EXCEEDED", "messages", id="long-chat"),
    pytest.param(C.JobSpec(model="tiny", prompt="the fox", sampling=C.SamplingParams(max_tokens=600)),
                 "CONTEXT_LENGTH_EXCEEDED", "prompt", id="max-tokens-over-context"),
    pytest.param(C.JobSpec(model="tiny", prompt="x" * 1_000_001), "INVALID_ARGUMENT", "prompt",
                 id="oversized-prompt"),
])
def test_bad_input(spec, code, param):
    with pytest.raises(InvalidInput) as err:
        admit(spec, CAT, CFG)
    assert (err.value.code, err.value.param) == (code, param)
