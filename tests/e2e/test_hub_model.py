"""An `hf:` model end to end, from a local server that speaks the Hub's protocol.

The orchestrator fetches only the model's prompt files (to count tokens); the pool
manager fetches the weights when a worker needs them, pinned to the commit the branch
points at, and reports it (MODEL_CACHED with resolved_revision). A later preload of the
same model serves it from the cache: no file is downloaded twice. The real
huggingface_hub client does every request (HF_ENDPOINT points at the fake Hub).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest

from llama_orch.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, events_pb2 as E
from orchestrator.catalog import TINY_PATH
from tests.pool_manager.hub_server import FakeHub
from tests.stack import Stack

pytestmark = pytest.mark.e2e
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "generation_config.json", "model.safetensors")


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.commit = h.add_commit("llama-orch/tiny", {f: (TINY_PATH / f).read_bytes() for f in FILES})
        yield h


def test_an_hf_model_is_fetched_pinned_cached_and_served(tmp_path: Path, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # other test modules set it for the session
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    stack = Stack(tmp_path, extra_config='[models.hubtiny]\nref = "hf:llama-orch/tiny@main"\n')
    stack.start()
    try:
        with grpc.insecure_channel(stack.orchestrator) as ch:
            call = client_pb2_grpc.ClientServiceStub(ch).WatchFacts(client_pb2.WatchFactsRequest(
                kinds=[E.FACT_KIND_MODEL_CACHED, E.FACT_KIND_MODEL_PRELOADED,
                       E.FACT_KIND_MODEL_DOWNLOADING]), timeout=120)
            facts = (r.fact for r in call)
            body = {"model": "hubtiny", "messages": [{"role": "user", "content": "the fox"}],
                    "max_tokens": 5, "seed": 3}
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=stack.base_url, timeout=120) as http:
                while True:  # the orchestrator fetches the prompt files just after start
                    resp = http.post("/v1/chat/completions", json=body)
                    if resp.status_code == 200 or time.monotonic() > deadline:
                        break
                    assert "not fetched" in resp.text, resp.text
                    time.sleep(0.3)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"]

            cached = next(f for f in facts if f.kind == E.FACT_KIND_MODEL_CACHED)
            assert cached.model_ref == "hf:llama-orch/tiny@main"
            assert cached.attributes["resolved_revision"] == hub.commit
            weights = hub.counts["get"]
            assert weights >= len(FILES)  # the pool fetched the files (the orchestrator some)

            admin = admin_pb2_grpc.AdminServiceStub(ch)
            admin.PreloadModel(admin_pb2.PreloadModelRequest(model="hubtiny"), timeout=60)
            preloaded = next(f for f in facts if f.kind != E.FACT_KIND_MODEL_DOWNLOADING
                             and f.attributes["phase"] == "preloaded")
            assert preloaded.model_ref == "hf:llama-orch/tiny@main"
            assert hub.counts["get"] == weights  # served from the cache: nothing downloaded
            call.cancel()
    finally:
        stack.stop()
