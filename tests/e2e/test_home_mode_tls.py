"""End to end: `llama-orch up` in home mode with security.tls = true, as real processes.

`up` makes the CA and the gateway's client certificate before it starts anything; the
gateway dials the orchestrator over mTLS with it, and a chat completion comes back
through the official openai client. The orchestrator refuses plaintext meanwhile, so
the completion can only have come over TLS.
"""

from __future__ import annotations

import time

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import pki
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Certificates are looked at every half second here (30 s by default).
    s = Stack(tmp_path_factory.mktemp("home-tls"), extra_config="[security]\ntls = true\n",
              env={"LLAMA_ORCH_TLS_CHECK_S": "0.5"})
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


def _serial(dir) -> int:
    return pki.load_cert((dir / "client-gateway.crt").read_bytes()).serial_number


def _chat(stack) -> str:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0,
                           timeout=30)
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the fox"}], max_tokens=2,
        seed=1).choices[0].message.content


def test_an_expiring_gateway_certificate_is_renewed_and_used_without_a_restart(stack):
    """`up` reissues the gateway's certificate when it is due, and the gateway moves new
    requests to it. Shown by revoking every certificate it held before: the requests
    still served afterwards can only have used the renewed one."""
    dir = stack.root / "data" / "pki"
    original = _serial(dir)
    assert _chat(stack)
    # An already expired certificate over the files, as if the gateway had run for weeks.
    ca = pki.CA.load(dir)
    key, cert = ca.issue_new("client", "gateway", ttl_s=1)
    time.sleep(1.5)
    pki.write_private(dir / "client-gateway.key", key)
    pki.write_atomic(dir / "client-gateway.crt", cert + ca.cert_pem)
    expired = _serial(dir)
    deadline = time.monotonic() + 60
    while _serial(dir) == expired:  # `up` looks every LLAMA_ORCH_TLS_CHECK_S
        assert time.monotonic() < deadline, "up did not renew the gateway's certificate"
        time.sleep(0.2)
    renewed = _serial(dir)
    assert renewed not in (original, expired)
    assert pki.remaining_fraction(pki.load_cert((dir / "client-gateway.crt").read_bytes())) > 0.9
    ca.revoke(original)
    ca.revoke(expired)
    deadline, last = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        try:
            assert _chat(stack)
            break
        except openai.APIError as err:  # until the gateway's next look at its files
            last = err
            time.sleep(0.5)
    else:
        raise AssertionError(f"no request served with the renewed certificate: {last!r}")
    logs = stack.logs()
    assert "renewed the gateway's client certificate" in logs
    assert '"code":"tls.identity_renewed"' in logs
