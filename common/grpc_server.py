"""Every llama-orch gRPC server is built here, so each one offers grpc.health.v1 and
server reflection and fails to bind with a one-line reason."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import ConfigError

# Token streams are many small messages; keepalives notice dead peers (a pool behind
# a NAT that vanished) without waiting for TCP timeouts.
SERVER_OPTIONS = [
    # gRPC enables SO_REUSEPORT by default, which lets a second daemon "bind" a busy
    # port and silently split traffic; a busy port must be an error instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
CHANNEL_OPTIONS = [
    # Reconnect quickly after a peer restarts (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    # Not grpc.min_reconnect_backoff_ms: gRPC core also uses it as the minimum *connect
    # timeout* (20 s by default), and at 100 ms a loaded machine failed fresh connections
    # to workers ("timed out before receiving SETTINGS frame").
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Server:
    """A grpc.aio server with health and reflection; `services` are full names."""

    def __init__(self, services: Iterable[str],
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = ()):
        self.grpc = grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors) or None)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.services = list(services)
        reflection.enable_server_reflection(
            [*self.services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.grpc)
        self.port = 0

    def bind(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind `host:port` (port 0 = ephemeral) or `unix:/path`; return the port."""
        try:
            if credentials is None:
                port = self.grpc.add_insecure_port(address)
            else:
                port = self.grpc.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot bind {address}: {exc}", param="address") from None
        if port == 0 and not address.startswith("unix:"):
            raise ConfigError(f"cannot bind {address}: address in use or unavailable",
                              param="address")
        self.port = port
        return port

    async def start(self) -> None:
        await self.grpc.start()
        for name in ["", *self.services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)


def channel(address: str, credentials: grpc.ChannelCredentials | None = None, *,
            target_name: str = "") -> grpc.aio.Channel:
    """A channel to `address`. Without credentials it dials with the process's installed
    TLS identity when there is one (common/tls.py: the orchestrator's, for its workers;
    LLAMA_ORCH_TLS_* for a gateway or CLI), else plaintext. `target_name` is the name
    the server's certificate must carry, whatever host `address` names."""
    if credentials is None:
        from common import tls
        ident = tls.installed()
        if ident is None:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        material, name_for = ident
        credentials, target_name = tls.channel_credentials(material), name_for(address)
    options = list(CHANNEL_OPTIONS)
    if target_name:
        options.append(("grpc.ssl_target_name_override", target_name))
    return grpc.aio.secure_channel(address, credentials, options=options)
