"""The JSON objects of /v2, built from the contract's messages.

Conventions: field names are the proto's; enum values are lower-case names without
their prefix ("succeeded", "interactive", "worker_failed"); timestamps are ISO 8601
(RFC 3339, UTC, e.g. "2024-05-01T12:00:00.250Z") or null when unset; an empty id or
reason is null; uint64s (seeds, sequence numbers) are plain JSON integers. Errors are
the gateway's error object (`{"message", "type", "param", "code"}`, gateway.errors),
the same as inside every HTTP error body.

    job     id status model model_ref priority seed attempts created (unix seconds)
            created_at updated_at started_at finished_at waiting_reason worker_id
            pool_id finish_reason usage error output proof last_seq correlation_id
            events_url
    event   job_id seq time + the fields of its kind (see `event_object`)
    fact    id time kind code level component correlation_id message job_id pool_id
            worker_id model_ref attributes
    pool    pool_id state inventory workers last_heartbeat address models version
            provider_id (`pool_object`; with its devices, workers and model residency)
    model   id ref aliases context_length engine created owned_by size_bytes
            memory_estimate_bytes device_count pinned_device_ids supports_logprobs
            supports_penalties (the catalog's entry; /v1/models shows less)
    pin, policy version, decision, policy problem: see their functions
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import admin_pb2, common_pb2, errors_pb2, events_pb2

from common.errors import OrchError
from gateway.errors import error_body

_TERMINAL = frozenset({common_pb2.JOB_STATUS_SUCCEEDED, common_pb2.JOB_STATUS_FAILED,
                       common_pb2.JOB_STATUS_CANCELLED})


def iso(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """PRIORITY_BATCH -> "batch"; a value this gateway does not know -> its number."""
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def error_object(detail: errors_pb2.ErrorDetail) -> dict[str, Any]:
    try:
        err = OrchError.from_detail(detail)
    except ValueError:  # a code newer than this gateway's contract
        err = OrchError("INTERNAL", detail.message)
    return error_body(err)["error"]


def usage_object(usage: common_pb2.Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def proof_object(proof: common_pb2.ProofRecord) -> dict[str, Any]:
    return {"seed": proof.seed, "model_ref": proof.model_ref, "model_digest": proof.model_digest,
            "engine": proof.engine, "engine_version": proof.engine_version,
            "device": proof.device, "token_hash": proof.token_hash,
            "token_count": proof.token_count}


def task_url(job_id: str, root_path: str = "") -> str:
    return f"{root_path}/v2/tasks/{quote(job_id, safe='')}"


def job_object(job: common_pb2.Job, root_path: str = "") -> dict[str, Any]:
    """A job as GET /v2/tasks/{id} shows it. `error` is set for failed and cancelled
    jobs, `output` only when the spec asked to keep it and the job has finished."""
    kept = job.spec.keep_output and job.status in _TERMINAL
    return {
        "id": job.job_id,
        "status": enum_name(common_pb2.JobStatus, job.status, "JOB_STATUS_"),
        "model": job.spec.model,
        "model_ref": job.model_ref or None,
        "priority": enum_name(common_pb2.Priority, job.spec.priority or
                              common_pb2.PRIORITY_INTERACTIVE, "PRIORITY_"),
        "seed": job.seed,
        "attempts": job.attempts,
        "created": job.created_at.seconds,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "waiting_reason": job.waiting_reason or None,
        "worker_id": job.worker_id or None,
        "pool_id": job.pool_id or None,
        "finish_reason": job.finish_reason or None,
        "usage": usage_object(job.usage) if job.HasField("usage") else None,
        "error": error_object(job.error) if job.HasField("error") else None,
        "output": job.output if kept else None,
        "proof": proof_object(job.proof) if job.HasField("proof") else None,
        "last_seq": job.last_seq,
        "correlation_id": job.correlation_id or None,
        "events_url": task_url(job.job_id, root_path) + "/events",
    }


def _logprobs(entries: Any) -> list[dict[str, Any]] | None:
    if not entries:
        return None
    return [{"token": e.token, "logprob": e.logprob,
             "top": [{"token": t.token, "logprob": t.logprob} for t in e.top]} for e in entries]


def event_object(ev: events_pb2.JobEvent) -> tuple[str, dict[str, Any]]:
    """(SSE event name, JSON) of one JobEvent; the name is the kind's field name:

        queued      priority reason
        dispatched  worker_id pool_id attempt
        started     prompt_tokens model_ref attempt seed
        tokens      choice_index text token_ids logprobs ([{token logprob top}] | null)
        metrics     time_to_first_token_ms tokens_per_second generated_tokens queue_ms
        divergence  choice_index token_index char_offset message
        retrying    attempt backoff_ms cause (error object | null)
        end         choice_index finish_reason usage proof
        error       error (error object)
    """
    kind = ev.WhichOneof("kind") or "unknown"
    out: dict[str, Any] = {"job_id": ev.job_id, "seq": ev.seq, "time": iso(ev.time)}
    if kind == "queued":
        out.update(priority=enum_name(common_pb2.Priority, ev.queued.priority, "PRIORITY_"),
                   reason=ev.queued.reason or None)
    elif kind == "dispatched":
        d = ev.dispatched
        out.update(worker_id=d.worker_id, pool_id=d.pool_id, attempt=d.attempt)
    elif kind == "started":
        s = ev.started
        out.update(prompt_tokens=s.prompt_tokens, model_ref=s.model_ref, attempt=s.attempt,
                   seed=s.seed)
    elif kind == "tokens":
        t = ev.tokens
        out.update(choice_index=t.choice_index, text=t.text, token_ids=list(t.token_ids),
                   logprobs=_logprobs(t.logprobs))
    elif kind == "metrics":
        m = ev.metrics
        out.update(time_to_first_token_ms=m.time_to_first_token_ms,
                   tokens_per_second=m.tokens_per_second, generated_tokens=m.generated_tokens,
                   queue_ms=m.queue_ms)
    elif kind == "divergence":
        out.update(choice_index=ev.divergence.choice_index, token_index=ev.divergence.token_index,
                   char_offset=ev.divergence.char_offset, message=ev.divergence.message)
    elif kind == "retrying":
        r = ev.retrying
        out.update(attempt=r.attempt, backoff_ms=r.backoff_ms,
                   cause=error_object(r.cause) if r.HasField("cause") else None)
    elif kind == "end":
        e = ev.end
        out.update(choice_index=e.choice_index, finish_reason=e.finish_reason or "stop",
                   usage=usage_object(e.usage),
                   proof=proof_object(e.proof) if e.HasField("proof") else None)
    elif kind == "error":
        out.update(error=error_object(ev.error))
    return kind, out


def fact_object(fact: events_pb2.Fact) -> dict[str, Any]:
    return {
        "id": fact.id,
        "time": iso(fact.time),
        "kind": enum_name(events_pb2.FactKind, fact.kind, "FACT_KIND_"),
        "code": fact.code,
        "level": enum_name(events_pb2.FactLevel, fact.level, "FACT_LEVEL_"),
        "component": fact.component,
        "correlation_id": fact.correlation_id or None,
        "message": fact.message,
        "job_id": fact.job_id or None,
        "pool_id": fact.pool_id or None,
        "worker_id": fact.worker_id or None,
        "model_ref": fact.model_ref or None,
        "attributes": _whole_numbers(json_format.MessageToDict(fact.attributes)),
    }


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; an exit code reads better as 137 than as 137.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


# ---- the cluster (GET /v2/cluster, /v2/admin) -------------------------------------------


def _float(value: float) -> float:
    # float32 on the wire: 37.5 stays 37.5, 0.1 is 0.1 rather than 0.10000000149011612.
    return round(value, 3)


def device_object(d: common_pb2.Device) -> dict[str, Any]:
    return {"id": d.id, "index": d.index,
            "kind": enum_name(common_pb2.DeviceKind, d.kind, "DEVICE_KIND_"), "name": d.name,
            "memory_total_bytes": d.memory_total_bytes,
            "memory_used_bytes": d.memory_used_bytes,
            "memory_free_bytes": d.memory_free_bytes,
            "utilization_percent": _float(d.utilization_percent),
            "temperature_c": _float(d.temperature_c)}


def inventory_object(inv: common_pb2.Inventory) -> dict[str, Any]:
    return {"devices": [device_object(d) for d in inv.devices],
            "nvml_status": inv.nvml_status, "hostname": inv.hostname,
            "cpu_count": inv.cpu_count, "ram_total_bytes": inv.ram_total_bytes,
            "ram_available_bytes": inv.ram_available_bytes, "engines": list(inv.engines),
            "driver_version": inv.driver_version}


def worker_object(w: common_pb2.WorkerInfo) -> dict[str, Any]:
    """`device_bytes`: bytes the worker holds on each device, by device id."""
    return {"worker_id": w.worker_id, "pool_id": w.pool_id, "model_ref": w.model_ref,
            "engine": w.engine, "device_ids": list(w.device_ids),
            "state": enum_name(common_pb2.WorkerState, w.state, "WORKER_STATE_"),
            "endpoint": w.endpoint or None, "device_bytes": dict(w.device_bytes),
            "pid": w.pid, "started_at": iso(w.started_at), "active_jobs": w.active_jobs,
            "slots": w.slots, "engine_version": w.engine_version or None,
            "model_digest": w.model_digest or None, "last_used_at": iso(w.last_used_at)}


def residency_object(r: common_pb2.ModelResidency) -> dict[str, Any]:
    return {"model_ref": r.model_ref, "cached": r.cached, "preloaded": r.preloaded,
            "size_bytes": r.size_bytes, "last_used_at": iso(r.last_used_at)}


def pool_object(p: common_pb2.PoolInfo) -> dict[str, Any]:
    return {"pool_id": p.pool_id,
            "state": enum_name(common_pb2.PoolState, p.state, "POOL_STATE_"),
            "inventory": inventory_object(p.inventory),
            "workers": [worker_object(w) for w in p.workers],
            "last_heartbeat": iso(p.last_heartbeat), "address": p.address or None,
            "models": [residency_object(r) for r in p.models],
            "version": p.version or None, "provider_id": p.provider_id or None}


def model_info_object(m: common_pb2.ModelInfo) -> dict[str, Any]:
    return {"id": m.id, "ref": m.ref, "aliases": list(m.aliases),
            "context_length": m.context_length, "engine": m.engine,
            "created": m.created.seconds, "owned_by": m.owned_by, "size_bytes": m.size_bytes,
            "memory_estimate_bytes": m.memory_estimate_bytes, "device_count": m.device_count,
            "pinned_device_ids": list(m.pinned_device_ids),
            "supports_logprobs": m.supports_logprobs,
            "supports_penalties": m.supports_penalties}


def pin_object(pin: admin_pb2.Pin) -> dict[str, Any]:
    return {"model_ref": pin.model_ref, "pool_id": pin.pool_id,
            "device_ids": list(pin.device_ids), "created_at": iso(pin.created_at)}


# ---- the scheduling policy (/v2/admin/policy) -------------------------------------------


def policy_version_object(v: admin_pb2.PolicyVersion) -> dict[str, Any]:
    """`language` "builtin" (with `source` "") or "lua"."""
    return {"version": v.version, "language": v.language, "source": v.source,
            "created_at": iso(v.created_at), "author": v.author or None, "active": v.active}


def problem_object(p: admin_pb2.PolicyProblem) -> dict[str, Any]:
    """`line` is 1-based; 0 when the problem has no line."""
    return {"line": p.line, "message": p.message}


def decision_object(d: admin_pb2.Decision) -> dict[str, Any]:
    """`rejected` is the validator's refusal of the decision, or null."""
    return {"action": d.action, "job_id": d.job_id or None, "worker_id": d.worker_id or None,
            "pool_id": d.pool_id or None, "model_ref": d.model_ref or None,
            "device_ids": list(d.device_ids), "reason": d.reason or None,
            "rejected": d.rejected or None}
