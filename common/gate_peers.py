"""Who is behind each connection the TLS gate relays (common/tls_gate.py).

Behind the gate the gRPC server listens in plaintext on 127.0.0.1 and sees every
caller as the gate's relay connection. The gate records, before it relays a byte,

    (relay connection's local host, port) -> the client certificate it verified (PEM)

and removes the entry when that connection closes (before its socket is closed, so
the port cannot be reused by someone else while the entry stands). A servicer finds
its caller's certificate through context.peer() ("ipv4:127.0.0.1:PORT").

`InternalOnly` refuses, UNAUTHENTICATED and audited, every call whose connection has
no entry: another local process that dials the internal port directly gets nothing,
Health, reflection and Join included.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

from common.errors import OrchError

Address = tuple[str, int]


def address_of(peer: str) -> Address | None:
    """(host, port) of a gRPC peer string: "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


class PeerTable:
    """Relay connection -> the client certificate the gate verified for it."""

    def __init__(self) -> None:
        self._pems: dict[Address, bytes] = {}

    def add(self, address: Address, pem: bytes) -> None:
        self._pems[address] = pem

    def remove(self, address: Address) -> None:
        self._pems.pop(address, None)

    def __len__(self) -> int:
        return len(self._pems)

    def pem_for(self, context) -> bytes | None:
        """The certificate of the call's connection; None when the gate relays no such
        connection (b"" never: the gate admits only peers with a certificate)."""
        address = address_of(context.peer())
        return None if address is None else self._pems.get(address)


# principal, action, target, outcome, correlation_id, peer host: the audit hook
Refused = Callable[[str, str, str, str, str, str], None]


class InternalOnly(grpc.aio.ServerInterceptor):
    """Refuse every call on a connection the gate did not open (see the module
    docstring). Interceptors cannot see the peer, so each method handler is wrapped
    (once per method) to look before the servicer runs."""

    def __init__(self, table: PeerTable, target: str, on_refused: Refused):
        self.table = table
        self.target = target  # how the audit log names this port
        self.on_refused = on_refused
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    async def _admit(self, context, method: str) -> None:
        if self.table.pem_for(context) is not None:
            return
        peer = context.peer()
        action = method.rpartition(".")[2]  # "/llama_orch.v1.ClientService/Submit"
        address = address_of(peer)
        self.on_refused("anonymous", action, self.target, "UNAUTHENTICATED", peer,
                        address[0] if address else peer)
        await OrchError("UNAUTHENTICATED", "this port answers only the orchestrator's TLS "
                        "gate; dial the orchestrator's address with a client certificate"
                        ).abort(context)

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = ("stream" if h.request_streaming else "unary") + "_" + \
               ("stream" if h.response_streaming else "unary")
        fn = getattr(h, kind)
        if inspect.isasyncgenfunction(fn):
            async def stream(request, context):
                await self._admit(context, method)
                async for item in fn(request, context):
                    yield item
            return h._replace(**{kind: stream})

        async def call(request, context):
            await self._admit(context, method)
            result = fn(request, context)  # generated base classes' stubs are plain defs
            return await result if inspect.isawaitable(result) else result
        return h._replace(**{kind: call})
