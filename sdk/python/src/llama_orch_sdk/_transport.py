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

import asyncio
import os
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
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


Metadata = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]]


def metadata_pairs(metadata: Metadata, api_key: str) -> tuple[tuple[str, str | bytes], ...]:
    """The pairs every call sends, checked now: grpc would refuse a bad one only when a
    call is made, as an opaque INTERNAL "Invalid metadata". Keys are lower-cased (gRPC
    keys are case-insensitive, and HTTP/2 sends them lower-case)."""
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    pairs = []
    for pair in items:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and isinstance(pair[0], str) and _valid(pair[0].lower(), pair[1])):
            raise errors.InvalidRequestError(
                "INVALID_ARGUMENT", f"metadata must be (key, value) strings, got {pair!r}",
                param="metadata")
        pairs.append((pair[0].lower(), pair[1]))
    if api_key:
        if not _valid("authorization", api_key):
            raise errors.InvalidRequestError(
                "INVALID_ARGUMENT", "api_key must be printable ASCII", param="api_key")
        pairs.append(("authorization", f"Bearer {api_key}"))
    return tuple(pairs)


def _valid(key: str, value: Any) -> bool:
    if not re.fullmatch(r"[0-9a-z_.-]+", key):
        return False
    if key.endswith("-bin"):  # binary metadata: any bytes
        return isinstance(value, bytes)
    return isinstance(value, str) and value.isascii() and value.isprintable()


class Settings:
    """What every call carries: where to, credentials, metadata and the unary deadline."""

    def __init__(self, address: str | None, api_key: str | None, *, timeout: float | None,
                 credentials: grpc.ChannelCredentials | None, metadata: Metadata,
                 channel_options: Sequence[tuple[str, Any]]):
        self.address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.metadata = metadata_pairs(metadata, key)
        self.timeout = timeout
        self.credentials = credentials
        self.channel_options = tuple(channel_options)


class _Calls:
    """The calls of one stream, their primed first messages, and whether it was closed.
    A stream's item generator and its finalizer hold this, never the stream itself: a
    generator holding the stream would be a reference cycle, and a stream dropped
    mid-way (a `break` without close) would then cancel its job only when the cyclic
    GC ran, not at once."""

    def __init__(self, calls: list[Any]):
        self.calls = calls
        self.firsts: list[Any] = []
        self.closed = False

    def first(self, index: int) -> Any:
        return self.firsts[index] if index < len(self.firsts) else None

    def cancel(self) -> None:
        self.closed = True
        for call in self.calls:
            call.cancel()  # a no-op for a finished call


def _finalizer(stream: object, state: _Calls) -> weakref.finalize:
    """Cancel the calls once `stream` is gone (or when this is called, by close()).
    Not at interpreter exit: the process ending ends the calls, and an asyncio one's
    loop may be closed by then."""
    cancel = weakref.finalize(stream, state.cancel)
    cancel.atexit = False
    return cancel


# ---- sync ----------------------------------------------------------------------------


def _items(state: _Calls, renderer: Renderer[T]) -> Iterator[T]:
    try:
        for index, call in enumerate(state.calls):
            first = state.first(index)
            if first is not None and not state.closed:
                yield from renderer.feed(index, first)
            for message in call:
                yield from renderer.feed(index, message)
        yield from renderer.finish()
    except grpc.RpcError as err:
        if not state.closed:  # close() cancels the calls: that is the end, not a failure
            raise errors.from_rpc_error(err) from None
    finally:
        state.cancel()


class Stream(Generic[T]):
    """The items of a streaming call; iterate it. `close()` (or leaving a `with` block)
    ends the call early, and so does dropping the stream; for a generation that cancels
    the job unless it was detached. A failure mid-stream raises its typed
    LlamaOrchError from the iteration."""

    def __init__(self, calls: list[Any], renderer: Renderer[T]):
        self._state = _Calls(calls)
        self._items = _items(self._state, renderer)
        self._cancel = _finalizer(self, self._state)

    def _prime(self) -> None:
        """Read each call's first message now, so refusals (a bad parameter, an unknown
        model) raise from the call that opened the stream, as a non-streaming call does."""
        try:
            self._state.firsts = [next(call, None) for call in self._state.calls]
        except grpc.RpcError as err:
            self.close()
            raise errors.from_rpc_error(err) from None

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._cancel()

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


async def _aitems(state: _Calls, renderer: Renderer[T]) -> AsyncIterator[T]:
    try:
        for index, call in enumerate(state.calls):
            message = state.firsts[index] if index < len(state.firsts) else await call.read()
            while message is not grpc.aio.EOF and not state.closed:
                for item in renderer.feed(index, message):
                    yield item
                if state.closed:  # closed while the caller held an item: read no more
                    return
                message = await call.read()
        for item in renderer.finish():
            yield item
    except grpc.aio.AioRpcError as err:
        if not state.closed:
            raise errors.from_rpc_error(err) from None
    except asyncio.CancelledError:
        # close() from another task cancels the call under a pending read: that is the
        # end of the stream. A cancellation of the reading task itself goes on up.
        if not state.closed or asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
    finally:
        state.cancel()


class AsyncStream(Generic[T]):
    """The asyncio twin of Stream: `async for` it; `await close()` (from any task of
    the loop), leaving an `async with` block, or dropping it ends it early, and the
    `async for` then ends quietly."""

    def __init__(self, calls: list[Any], renderer: Renderer[T]):
        self._state = _Calls(calls)
        self._items = _aitems(self._state, renderer)
        self._cancel = _finalizer(self, self._state)

    async def _prime(self) -> None:
        try:
            self._state.firsts = [await call.read() for call in self._state.calls]
        except grpc.aio.AioRpcError as err:
            await self.close()
            raise errors.from_rpc_error(err) from None

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        return await anext(self._items)

    async def close(self) -> None:
        self._cancel()

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
