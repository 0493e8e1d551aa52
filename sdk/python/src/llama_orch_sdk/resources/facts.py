"""client.facts.watch(...): the fact stream (ClientService.WatchFacts), every state
change of the system as it happens: jobs admitted and finished, workers started and
failed, pools joined, decisions taken. It never ends by itself: break out and close it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llama_orch_sdk._gen.llama_orch.v1 import client_pb2, events_pb2
from llama_orch_sdk._transport import Each, Stream
from llama_orch_sdk.records import Fact
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource


def kind_of(code: str) -> int:
    """"job.finished" -> FACT_KIND_JOB_FINISHED."""
    try:
        return events_pb2.FactKind.Value("FACT_KIND_" + code.replace(".", "_").upper())
    except (ValueError, AttributeError):
        raise _spec.bad(f"unknown fact code {code!r}", "kinds") from None


def _kinds(kinds: Iterable[str]) -> list[int]:
    codes = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(codes, Iterable) or isinstance(codes, Mapping):
        raise _spec.bad(f"kinds must be a fact code or a list of them, got {kinds!r}", "kinds")
    return [kind_of(code) for code in codes]


class Facts(Resource):
    def watch(self, *, kinds: Iterable[str] = (), job_id: str | None = None,
              after_id: int = 0, timeout: float | None = None) -> Stream[Fact]:
        """Facts with id > after_id: the orchestrator's retained ones first (after_id=0:
        all it still holds), then live ones. `kinds` filters by code ("job.finished",
        "worker.failed", ...), `job_id` by job. With `timeout`, the watch ends with
        DeadlineExceededError after that many seconds."""
        request = client_pb2.WatchFactsRequest(
            kinds=_kinds(kinds),
            job_id=_spec.checked("job_id", job_id, str, optional=True) or "",
            after_id=_spec.checked("after_id", after_id, int))
        return self._t.stream(self._t.client.WatchFacts, [request],
                              Each(lambda r: Fact._from_proto(r.fact)), timeout=timeout)
