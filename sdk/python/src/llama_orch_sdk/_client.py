"""LlamaOrch and AsyncLlamaOrch: one channel to the orchestrator and the resources on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc

from llama_orch_sdk._transport import (
    DEFAULT_TIMEOUT_S,
    AsyncTransport,
    Metadata,
    Settings,
    SyncTransport,
    Transport,
)
from llama_orch_sdk.resources.admin import Admin
from llama_orch_sdk.resources.chat import Chat
from llama_orch_sdk.resources.completions import Completions
from llama_orch_sdk.resources.facts import Facts
from llama_orch_sdk.resources.jobs import Jobs
from llama_orch_sdk.resources.models import Models


class _Client:
    chat: Chat
    completions: Completions
    models: Models
    jobs: Jobs
    facts: Facts
    admin: Admin

    def _attach(self, transport: Transport) -> None:
        self._transport = transport
        self.chat = Chat(transport)
        self.completions = Completions(transport)
        self.models = Models(transport)
        self.jobs = Jobs(transport)
        self.facts = Facts(transport)
        self.admin = Admin(transport)

    @property
    def address(self) -> str:
        return self._transport.settings.address


class LlamaOrch(_Client):
    """A client of the llama-orch orchestrator's gRPC API.

    address: "host:port" of the orchestrator; default $LLAMA_ORCH_ADDRESS, else
        127.0.0.1:9100 (home mode).
    api_key: sent as "authorization: Bearer <key>" (lab and platform modes); default
        $LLAMA_ORCH_API_KEY, else none.
    timeout: deadline in seconds for each unary call (lookups, submit, cancel, admin).
        Streams and generations have none unless their call passes `timeout`.
    credentials: grpc.ssl_channel_credentials(...) for TLS; plaintext without.
    metadata: extra metadata sent with every call, e.g. {"x-correlation-id": "abc"}: a
        dict or a sequence of (key, value) pairs; keys are sent lower-case. Values that
        gRPC cannot send raise InvalidRequestError here.
    channel_options: passed to grpc as channel arguments.

    Resources: chat.completions, completions and models (OpenAI-shaped); jobs, facts
    and admin (native). Use it as a context manager, or call close().
    """

    def __init__(self, address: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: Metadata = (),
                 channel_options: Sequence[tuple[str, Any]] = ()):
        self._attach(SyncTransport(Settings(address, api_key, timeout=timeout,
                                            credentials=credentials, metadata=metadata,
                                            channel_options=channel_options)))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LlamaOrch(address={self.address!r})"


class AsyncLlamaOrch(_Client):
    """The asyncio twin of LlamaOrch, with the same arguments and resources: every
    method is a coroutine (`await client.jobs.get(id)`); a streaming call gives an
    AsyncStream to `async for` over. Create it inside the event loop that uses it;
    use it as an async context manager, or `await close()`."""

    def __init__(self, address: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S,
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: Metadata = (),
                 channel_options: Sequence[tuple[str, Any]] = ()):
        self._attach(AsyncTransport(Settings(address, api_key, timeout=timeout,
                                             credentials=credentials, metadata=metadata,
                                             channel_options=channel_options)))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncLlamaOrch(address={self.address!r})"
