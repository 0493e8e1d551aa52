"""Request bodies: size limit, UTF-8, JSON, then the pydantic model, in that order.

Bodies are read here rather than by FastAPI so that each failure gets OpenAI's
answer: 413 for an oversized body (checked while reading, so a lying or absent
Content-Length does not help), 400 for bytes that are not UTF-8 or not JSON, and 400
with `param` naming the field ("messages[0].role") for a body the model refuses.
Only the first validation error is reported, as OpenAI does.

How long the bytes may take to arrive is bounded by the server (gateway.server); a
client that goes away while sending ends the request as CANCELLED (499), which it
never sees.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from common.errors import InvalidInput, OrchError

M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M], *, optional: bool = False) -> M:
    """The body as `model`; the app's limits (max_n) are the validation context.
    `optional`: no body at all (zero bytes) is the same as `{}`."""
    state = request.app.state
    raw = await read_limited(request, state.max_body_bytes)
    data = {} if optional and not raw else json_object(raw)
    try:
        return model.model_validate(data, context={"max_n": state.max_n})
    except ValidationError as exc:
        raise from_validation_error(exc) from None


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise OrchError("CANCELLED", "the client went away while sending the body") from None
    return b"".join(chunks)


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("INVALID_ARGUMENT",
                           f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput("INVALID_ARGUMENT", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("INVALID_ARGUMENT", "request body must be a JSON object")
    return data


def from_validation_error(exc: ValidationError) -> InvalidInput:
    err = exc.errors(include_url=False)[0]
    param = param_of(err["loc"])
    code = "UNSUPPORTED_PARAMETER" if err["type"] == "unsupported_parameter" else "INVALID_ARGUMENT"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "is required"
    return InvalidInput(code, f"{param}: {message}" if param else message, param=param)


def param_of(loc: tuple[int | str, ...]) -> str:
    """("messages", 0, "role") -> "messages[0].role", as OpenAI names fields."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _too_large(limit: int) -> InvalidInput:
    return InvalidInput("PAYLOAD_TOO_LARGE", f"request body exceeds {limit} bytes")
