"""client.chat.completions.create(...): OpenAI chat completions over ClientService.Generate.

The call shapes and results are the `openai` package's. Extensions: `priority`
("interactive" | "batch"), `detach` (a stream that is closed early does not cancel the
job), `top_k`, and `idempotency_key` (a repeat returns the earlier job's events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_orch_sdk._gen.llama_orch.v1 import client_pb2
from llama_orch_sdk._transport import Stream
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource
from llama_orch_sdk.resources._outcome import CHAT, Chunks, whole
from llama_orch_sdk.types import ChatCompletion, ChatCompletionChunk


def include_usage(stream: bool, stream_options: Mapping[str, Any] | None) -> bool:
    # As OpenAI: stream_options without stream is a mistake worth saying out loud.
    if stream_options is None:
        return False
    if not stream:
        raise _spec.bad("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(stream_options, Mapping):
        raise _spec.bad(f"stream_options must be a dict, got {stream_options!r}",
                        "stream_options")
    return _spec.checked("stream_options.include_usage", stream_options.get("include_usage"),
                         bool, optional=True) or False


class ChatCompletions(Resource):
    def create(self, *, model: str, messages: Sequence[Any], max_tokens: int | None = None,
               max_completion_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None,
               stop: str | Sequence[str] | None = None, n: int | None = None,
               stream: bool = False, stream_options: Mapping[str, Any] | None = None,
               logprobs: bool | None = None, top_logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               user: str | None = None, priority: str = "interactive", detach: bool = False,
               top_k: int | None = None, idempotency_key: str | None = None,
               timeout: float | None = None,
               **unsupported: Any) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Generate a chat answer; with stream=True, a Stream of ChatCompletionChunk.

        `timeout` bounds the whole call (seconds); by default only the job's own
        deadline does. Refusals (an unknown model, a parameter out of range) raise
        from this call, streamed or not; a job that fails later raises from the stream.
        """
        _spec.refuse_unsupported(unsupported, _spec.CHAT_UNSUPPORTED)
        usage = include_usage(stream, stream_options)
        logprobs = bool(_spec.checked("logprobs", logprobs, bool, optional=True))
        if top_logprobs and not logprobs:
            raise _spec.bad("logprobs must be true when top_logprobs is used", "top_logprobs")
        params = _spec.sampling(
            max_tokens=max_completion_tokens or max_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, seed=seed, stop=stop, n=n, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logprobs=logprobs, top_logprobs=top_logprobs)
        spec = _spec.job_spec(model, params, priority=priority, detach=detach, user=user,
                              messages=_spec.chat(messages))
        key = _spec.checked("idempotency_key", idempotency_key, str, optional=True)
        request = client_pb2.GenerateRequest(spec=spec, idempotency_key=key or "")
        choices, want_logprobs = n or 1, logprobs
        if stream:
            return self._t.stream(
                self._t.client.Generate, [request],
                Chunks(CHAT, model=model, n=choices, logprobs=want_logprobs, include_usage=usage),
                prime=True, timeout=timeout)
        return self._t.gather(
            self._t.client.Generate, [request],
            lambda responses: whole(CHAT, responses, model=model, n=choices,
                                    logprobs=want_logprobs),
            timeout=timeout)


class Chat(Resource):
    """client.chat: `completions` is the OpenAI chat completions resource."""

    def __init__(self, transport: Any):
        super().__init__(transport)
        self.completions = ChatCompletions(transport)
