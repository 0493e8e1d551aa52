"""The gateway follows its client certificate on disk (gateway/identity.py): a renewed,
matching pair moves new calls to a new channel; anything else keeps the current one."""

from __future__ import annotations

import grpc
import pytest

from common import pki, tls
from gateway.identity import IdentityWatch
from gateway.orchestrator_client import OrchestratorClient


@pytest.fixture
def setup(tmp_path):
    ca, _ = pki.CA.init(tmp_path)
    m = tls.Material(tmp_path / "gw.key", tmp_path / "gw.crt", tmp_path / "ca.crt")
    ca.ensure(m.key, m.cert, "client", "gateway", ttl_s=3600)
    return ca, m


def _renew(ca, m: tls.Material) -> None:
    key, cert = ca.issue_new("client", "gateway", ttl_s=3600)
    pki.write_private(m.key, key)
    pki.write_atomic(m.cert, cert + ca.cert_pem)


async def test_unchanged_files_keep_the_channel_and_a_renewal_moves_new_calls(setup):
    ca, m = setup
    first = grpc.aio.insecure_channel("127.0.0.1:9")
    client = OrchestratorClient(first)
    watch = IdentityWatch(client, "127.0.0.1:9", (m, lambda _a: pki.ORCHESTRATOR_NAME))
    try:
        assert not await watch.check() and client.channel is first
        _renew(ca, m)
        assert await watch.check()
        assert client.channel is not first
        assert not await watch.check()  # once per change
    finally:
        await watch.close()
        await client.channel.close()


@pytest.mark.parametrize("damage", ["garbage", "empty", "key of another certificate", "missing"])
async def test_broken_files_keep_the_current_channel_until_a_good_pair_arrives(setup, damage):
    ca, m = setup
    first = grpc.aio.insecure_channel("127.0.0.1:9")
    client = OrchestratorClient(first)
    watch = IdentityWatch(client, "127.0.0.1:9", (m, lambda _a: pki.ORCHESTRATOR_NAME))
    try:
        if damage == "garbage":
            m.cert.write_bytes(b"\x00not a certificate\xff" * 100)
        elif damage == "empty":
            m.key.write_bytes(b"")
        elif damage == "key of another certificate":
            other, _ = ca.issue_new("client", "gateway", ttl_s=3600)
            pki.write_private(m.key, other)
        else:
            m.cert.unlink()
        assert not await watch.check()
        assert client.channel is first
        _renew(ca, m)
        assert await watch.check() and client.channel is not first
    finally:
        await watch.close()
        await client.channel.close()


@pytest.mark.parametrize("value, seconds", [
    (None, tls.CHECK_S), ("2.5", 2.5), ("0", 0.05), ("-3", 0.05), ("soon", tls.CHECK_S),
    ("", tls.CHECK_S), ("nan", tls.CHECK_S), ("inf", tls.CHECK_S), ("1e999", tls.CHECK_S)])
def test_the_check_interval_from_the_environment_is_bounded(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("LLAMA_ORCH_TLS_CHECK_S", raising=False)
    else:
        monkeypatch.setenv("LLAMA_ORCH_TLS_CHECK_S", value)
    assert tls.check_interval_s() == seconds
