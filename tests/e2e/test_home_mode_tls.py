"""End to end: `llama-orch up` in home mode with security.tls = true, as real processes.

`up` makes the CA and the gateway's client certificate before it starts anything; the
gateway dials the orchestrator over mTLS with it, and a chat completion comes back
through the official openai client. The orchestrator refuses plaintext meanwhile, so
the completion can only have come over TLS.
"""

from __future__ import annotations

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import pki
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("home-tls"), extra_config="[security]\ntls = true\n")
    s.start()
    yield s
    s.stop()


def test_up_announces_mtls(stack):
    assert "(home mode, mTLS)" in stack.logs()


def test_a_chat_completion_is_served_over_mtls(stack):
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "tell me a story about a fox"}],
        max_tokens=8, seed=7)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_the_gateway_holds_a_client_certificate_of_the_local_ca(stack):
    dir = stack.root / "data" / "pki"
    ca = pki.load_cert((dir / "ca.crt").read_bytes())
    cert = pki.load_cert((dir / "client-gateway.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert str(pki.identity_of(cert)) == "llama-orch://client/gateway"
    assert (dir / "client-gateway.key").stat().st_mode & 0o077 == 0


def test_the_orchestrator_refuses_plaintext(stack):
    with grpc.insecure_channel(stack.orchestrator) as ch, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
