"""The one chokepoint for calls: channel, metadata, deadlines, error mapping, streams.

Resources (chat, jobs, admin, ...) are written once, against the `Transport` interface
below. `SyncTransport` returns each call's result; `AsyncTransport` returns an
awaitable of the same result. So `client.jobs.get(id)` and
`await aclient.jobs.get(id)` run the same resource code, and every gRPC failure leaves
here as a typed `LlamaOrchError`, never as a grpc exception.

Streams: a `Renderer` turns the messages of one or more server-streaming calls into
the items a caller sees (JobEvents, ChatCompletionChunks, ...). The calls of one stream
all start at once (a list of prompts runs concurrently) and are read in order.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc
import grpc.aio

from llama_orch_sdk import errors
from llama_orch_sdk._gen.llama_orch.v1 import admin_pb2_grpc, client_pb2_grpc

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_ADDRESS = "127.0.0.1:9100"
DEFAULT_TIMEOUT_S = 60.0
ADDRESS_ENV = "LLAMA_ORCH_ADDRESS"
API_KEY_ENV = "LLAMA_ORCH_API_KEY"


class Renderer(Protocol[T]):
    """Turns stream messages into items. `feed` gets the index of the call (the prompt)
    the message came from; `finish` runs once every call has ended normally."""

    def feed(self, index: int, message: Any) -> Iterable[T]: ...
    def finish(self) -> Iterable[T]: ...


class Each(Generic[T]):
    """The renderer of a native stream: one item per message."""

    def __init__(self, convert: Callable[[Any], T]):
        self._convert = convert

    def feed(self, index: int, message: Any) -> Iterable[T]:
        return (self._convert(message),)

    def finish(self) -> Iterable[T]:
        return ()


class Settings:
    """What every call carries: where to, credentials, metadata and the unary deadline."""

    def __init__(self, address: str | None, api_key: str | None, *, timeout: float | None,
                 credentials: grpc.ChannelCredentials | None,
                 metadata: Sequence[tuple[str, str]], channel_options: Sequence[tuple[str, Any]]):
        self.address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        pairs = list(metadata)
        if key:
            pairs.append(("authorization", f"Bearer {key}"))
        self.metadata = tuple(pairs)
        self.timeout = timeout
        self.credentials = credentials
        self.channel_options = tuple(channel_options)


# ---- sync ----------------------------------------------------------------------------


class Stream(Generic[T]):
    """The items of a streaming call; iterate it. `close()` (or leaving a `with` block)
    ends the call early; for a generation that cancels the job unless it was detached.
    A failure mid-stream raises its typed LlamaOrchError from the iteration."""

    def __init__(self, calls: list[Any], renderer: Renderer[T]):
        self._calls = calls
        self._firsts: list[Any] = []
        self._closed = False
        self._items = self._run(renderer)

    def _prime(self) -> None:
        """Read each call's first message now, so refusals (a bad parameter, an unknown
        model) raise from the call that opened the stream, as a non-streaming call does."""
        try:
            self._firsts = [next(call, None) for call in self._calls]
        except grpc.RpcError as err:
            self.close()
            raise errors.from_rpc_error(err) from None

    def _run(self, renderer: Renderer[T]) -> Iterator[T]:
        try:
            for index, call in enumerate(self._calls):
                first = self._firsts[index] if index < len(self._firsts) else None
                if first is not None and not self._closed:
                    yield from renderer.feed(index, first)
                for message in call:
                    yield from renderer.feed(index, message)
            yield from renderer.finish()
        except grpc.RpcError as err:
            if not self._closed:
                raise errors.from_rpc_error(err) from None
        finally:
            self.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._closed = True
        for call in self._calls:
            call.cancel()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncTransport:
    def __init__(self, settings: Settings):
        self.settings = settings
        s = settings
        self.channel = (grpc.secure_channel(s.address, s.credentials, s.channel_options)
                        if s.credentials else grpc.insecure_channel(s.address, s.channel_options))
        self.client = client_pb2_grpc.ClientServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def unary(self, method: Any, request: Any, then: Callable[[Any], R], *,
              timeout: float | None = None) -> R:
        try:
            reply = method(request, metadata=self.settings.metadata,
                           timeout=timeout or self.settings.timeout)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err) from None
        return then(reply)

    def gather(self, method: Any, requests: Sequence[Any], then: Callable[[list[list[Any]]], R], *,
               timeout: float | None = None) -> R:
        """Run one streaming call per request, concurrently, each to its end; `then`
        gets their messages, in request order."""
        calls = [method(r, metadata=self.settings.metadata, timeout=timeout) for r in requests]
        try:
            messages = [list(call) for call in calls]
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err) from None
        finally:
            for call in calls:
                call.cancel()  # a no-op for finished calls; stops the rest after a failure
        return then(messages)

    def stream(self, method: Any, requests: Sequence[Any], renderer: Renderer[T], *,
               prime: bool = False, timeout: float | None = None) -> Stream[T]:
        calls = [method(r, metadata=self.settings.metadata, timeout=timeout) for r in requests]
        stream = Stream(calls, renderer)
        if prime:
            stream._prime()
        return stream

    def close(self) -> None:
        self.channel.close()


# ---- asyncio ---------------------------------------------------------------------------


class AsyncStream(Generic[T]):
    """The asyncio twin of Stream: `async for` it; `await close()` ends it early."""

    def __init__(self, calls: list[Any], renderer: Renderer[T]):
        self._calls = calls
        self._firsts: list[Any] = []
        self._closed = False
        self._items = self._run(renderer)

    async def _prime(self) -> None:
        try:
            self._firsts = [await call.read() for call in self._calls]
        except grpc.aio.AioRpcError as err:
            await self.close()
            raise errors.from_rpc_error(err) from None

    async def _run(self, renderer: Renderer[T]) -> AsyncIterator[T]:
        try:
            for index, call in enumerate(self._calls):
                message = self._firsts[index] if index < len(self._firsts) else await call.read()
                while message is not grpc.aio.EOF and not self._closed:
                    for item in renderer.feed(index, message):
                        yield item
                    message = await call.read()
            for item in renderer.finish():
                yield item
        except grpc.aio.AioRpcError as err:
            if not self._closed:
                raise errors.from_rpc_error(err) from None
        finally:
            await self.close()

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        return await anext(self._items)

    async def close(self) -> None:
        self._closed = True
        for call in self._calls:
            call.cancel()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncTransport:
    """Create it (through AsyncLlamaOrch) inside the event loop that will use it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        s = settings
        self.channel = (grpc.aio.secure_channel(s.address, s.credentials, s.channel_options)
                        if s.credentials else
                        grpc.aio.insecure_channel(s.address, s.channel_options))
        self.client = client_pb2_grpc.ClientServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    async def unary(self, method: Any, request: Any, then: Callable[[Any], R], *,
                    timeout: float | None = None) -> R:
        try:
            reply = await method(request, metadata=self.settings.metadata,
                                 timeout=timeout or self.settings.timeout)
        except grpc.aio.AioRpcError as err:
            raise errors.from_rpc_error(err) from None
        return then(reply)

    async def gather(self, method: Any, requests: Sequence[Any],
                     then: Callable[[list[list[Any]]], R], *, timeout: float | None = None) -> R:
        calls = [method(r, metadata=self.settings.metadata, timeout=timeout) for r in requests]
        try:
            messages = [[m async for m in call] for call in calls]
        except grpc.aio.AioRpcError as err:
            raise errors.from_rpc_error(err) from None
        finally:
            for call in calls:
                call.cancel()
        return then(messages)

    async def stream(self, method: Any, requests: Sequence[Any], renderer: Renderer[T], *,
                     prime: bool = False, timeout: float | None = None) -> AsyncStream[T]:
        calls = [method(r, metadata=self.settings.metadata, timeout=timeout) for r in requests]
        stream = AsyncStream(calls, renderer)
        if prime:
            await stream._prime()
        return stream

    async def close(self) -> None:
        await self.channel.close()


Transport = SyncTransport | AsyncTransport
