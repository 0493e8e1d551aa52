"""What /v2/admin accepts: the bodies of the operator's actions (docs/UI.md).

Each body is its AdminService request, field for field; like every gateway body the
types are strict (`"true"` is not a boolean), unknown fields are ignored, and a bad
field is a 400 with `param` naming it. An optional field may be absent, null or
empty, all meaning what the empty field means to the RPC ("" pool: every pool, or
the freest, as the RPC says). Where the RPC needs a field, so does the body (`model`,
and `pool_id` of a pin).

    PinRequest          model, pool_id, device_ids ([]: every device of the pool)
    PreloadRequest      pool_id                          (the body may be empty)
    EvictRequest        pool_id, from_disk                (the body may be empty)
    StartWorkerRequest  model, pool_id, device_ids, engine, engine_options
    DrainRequest        drain (default true; false undrains) (the body may be empty)
    PolicySource        source: Lua, for policy:validate and policy:dry-run
    ActivateRequest     exactly one of source, version, builtin: true
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.openai.protocol import MAX_UINT32, Text

# Model refs ("hf:org/repo@rev::file=path") and ids are short; the bounds only keep
# nonsense from travelling to the orchestrator.
Name = Annotated[Text, Field(min_length=1, max_length=1024)]
Id = Annotated[Text, Field(max_length=256)]
DeviceIds = Annotated[list[Annotated[Text, Field(min_length=1, max_length=256)]],
                      Field(max_length=1024)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class PinRequest(_Body):
    """POST /v2/admin/pins: AdminService.PinModel."""

    model: Name
    pool_id: Annotated[Text, Field(min_length=1, max_length=256)]
    device_ids: DeviceIds | None = None


class PreloadRequest(_Body):
    """POST /v2/admin/models/{model}:preload: AdminService.PreloadModel."""

    pool_id: Id | None = None


class EvictRequest(_Body):
    """POST /v2/admin/models/{model}:evict: AdminService.EvictModel."""

    pool_id: Id | None = None
    from_disk: bool | None = None


class StartWorkerRequest(_Body):
    """POST /v2/admin/workers: AdminService.StartWorker."""

    model: Name
    pool_id: Id | None = None
    device_ids: DeviceIds | None = None
    engine: Id | None = None
    engine_options: Annotated[dict[Text, Text], Field(max_length=256)] | None = None


class DrainRequest(_Body):
    """POST /v2/admin/pools/{pool_id}:drain: AdminService.DrainPool."""

    drain: bool | None = None


class PolicySource(_Body):
    """POST /v2/admin/policy:validate and :dry-run."""

    source: Text


def _given(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [field], "properties": {field: schema}}


class ActivateRequest(_Body):
    """POST /v2/admin/policy:activate: new `source`, a `version` to roll back to, or
    `builtin: true`; exactly one of them."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        _given("source", {"type": "string"}), _given("version", {"type": "integer"}),
        _given("builtin", {"const": True})]})

    # Empty Lua is no policy, and on the wire the same as no source at all.
    source: Annotated[Text, Field(min_length=1)] | None = None
    version: Annotated[int, Field(ge=1, le=MAX_UINT32)] | None = None
    builtin: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ActivateRequest:
        given = [self.source is not None, self.version is not None, self.builtin is True]
        if sum(given) != 1:
            raise ValueError("give exactly one of source, version or builtin: true")
        return self
