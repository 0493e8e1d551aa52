"""client.completions.create(...): OpenAI (legacy) text completions over Generate.

`prompt` is a string or a list of strings; a list runs one job per prompt, all at once,
and numbers the choices prompt by prompt (prompt p's choice c is p * n + c), as OpenAI
does. Streamed, the prompts' chunks come one prompt after the other. `logprobs` is the
legacy integer: how many most likely tokens to list per token. Extensions as in chat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_orch_sdk._gen.llama_orch.v1 import client_pb2
from llama_orch_sdk._transport import Stream
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource
from llama_orch_sdk.resources._outcome import TEXT, Chunks, whole
from llama_orch_sdk.resources.chat import include_usage
from llama_orch_sdk.types import Completion


def prompts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise _spec.bad("a prompt of token ids is not supported by llama-orch", "prompt",
                        "UNSUPPORTED_PARAMETER")
    raise _spec.bad("prompt must be a string or a non-empty list of strings", "prompt")


class Completions(Resource):
    def create(self, *, model: str, prompt: str | Sequence[str], max_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None, stop: str | Sequence[str] | None = None,
               n: int | None = None, stream: bool = False,
               stream_options: Mapping[str, Any] | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               user: str | None = None, priority: str = "interactive", detach: bool = False,
               top_k: int | None = None, idempotency_key: str | None = None,
               timeout: float | None = None,
               **unsupported: Any) -> Completion | Stream[Completion]:
        """Complete a prompt (or each of a list of prompts); with stream=True, a Stream
        of Completion chunks. Refusals raise from this call; see chat for `timeout`."""
        _spec.refuse_unsupported(unsupported, _spec.TEXT_UNSUPPORTED)
        usage = include_usage(stream, stream_options)
        texts = prompts(prompt)
        # The legacy logprobs is a count (of most likely tokens per token), not a flag.
        _spec.checked("logprobs", logprobs, int, optional=True)
        key = _spec.checked("idempotency_key", idempotency_key, str, optional=True)
        if key and len(texts) > 1:
            raise _spec.bad("idempotency_key needs a single prompt (one job)", "idempotency_key")
        params = _spec.sampling(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            stop=stop, n=n, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logprobs=logprobs is not None,
            top_logprobs=logprobs)
        requests = [client_pb2.GenerateRequest(
            spec=_spec.job_spec(model, params, priority=priority, detach=detach, user=user,
                                prompt=text),
            idempotency_key=key or "") for text in texts]
        choices, want_logprobs = n or 1, logprobs is not None
        if stream:
            return self._t.stream(
                self._t.client.Generate, requests,
                Chunks(TEXT, model=model, n=choices, logprobs=want_logprobs, include_usage=usage),
                prime=True, timeout=timeout)
        return self._t.gather(
            self._t.client.Generate, requests,
            lambda responses: whole(TEXT, responses, model=model, n=choices,
                                    logprobs=want_logprobs),
            timeout=timeout)
