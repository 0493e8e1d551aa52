"""llama-orch's Python SDK: an OpenAI-shaped facade and the native job API, over gRPC.

    from llama_orch_sdk import LlamaOrch

    with LlamaOrch() as client:          # $LLAMA_ORCH_ADDRESS or 127.0.0.1:9100
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}])
        print(answer.choices[0].message.content)

The public names are exactly __all__ (pinned by tests/sdk/test_exports.py).
"""

from llama_orch_sdk._client import AsyncLlamaOrch, LlamaOrch
from llama_orch_sdk._transport import AsyncStream, Stream
from llama_orch_sdk.errors import (
    AuthenticationError,
    CancelledError,
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    LlamaOrchError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    UnavailableError,
    UnimplementedError,
)
from llama_orch_sdk.records import ErrorDetail, Fact, Job, JobEvent, JobPage, Worker
from llama_orch_sdk.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionUsage,
    Logprobs,
    Model,
    ModelList,
    TopLogprob,
)

__version__ = "0.1.0"

__all__ = [
    # clients and streams
    "LlamaOrch",
    "AsyncLlamaOrch",
    "Stream",
    "AsyncStream",
    # OpenAI-shaped results
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionTokenLogprob",
    "Choice",
    "ChoiceDelta",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionUsage",
    "Logprobs",
    "Model",
    "ModelList",
    "TopLogprob",
    # native records
    "ErrorDetail",
    "Fact",
    "Job",
    "JobEvent",
    "JobPage",
    "Worker",
    # errors
    "LlamaOrchError",
    "AuthenticationError",
    "CancelledError",
    "ConflictError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "UnavailableError",
    "UnimplementedError",
    "__version__",
]
