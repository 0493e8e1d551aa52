"""client.models.list() / client.models.retrieve(id): the orchestrator's catalogue."""

from __future__ import annotations

from llama_orch_sdk._gen.llama_orch.v1 import client_pb2, common_pb2
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource
from llama_orch_sdk.types import Model, ModelList

_OWNER = "llama-orch"


def model(info: common_pb2.ModelInfo) -> Model:
    return Model(id=info.id, created=info.created.seconds, owned_by=info.owned_by or _OWNER,
                 ref=info.ref, aliases=list(info.aliases), context_length=info.context_length,
                 engine=info.engine, size_bytes=info.size_bytes,
                 supports_logprobs=info.supports_logprobs)


class Models(Resource):
    def list(self, *, timeout: float | None = None) -> ModelList:
        """Every model clients can name."""
        return self._t.unary(self._t.client.ListModels, client_pb2.ListModelsRequest(),
                             lambda r: ModelList(data=[model(m) for m in r.models]),
                             timeout=timeout)

    def retrieve(self, model_id: str, *, timeout: float | None = None) -> Model:
        """One model by alias or canonical ref; NotFoundError (MODEL_NOT_FOUND) if none."""
        request = client_pb2.GetModelRequest(model=_spec.checked("model", model_id, str))
        return self._t.unary(self._t.client.GetModel, request, lambda r: model(r.model),
                             timeout=timeout)
