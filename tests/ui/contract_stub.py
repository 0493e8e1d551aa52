"""An in-process stand-in for the gateway's side of docs/UI.md, for the UI's browser
tests: the contract's endpoints with canned state, and a fact stream that shows each
operator action's fact, as the real gateway will.

It is a reference for the contract's shapes, not a model of the scheduler: actions
change its state just enough for the UI to show their facts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

from tests.ui.servers import Request

GiB = 1024 ** 3
TINY = "file:/models/tiny"
BIG = "hf:org/big@main::file=model.safetensors"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _device(i: int, kind: str, total: int, used: int, util: float) -> dict[str, Any]:
    return {"id": f"GPU-{i}aaaa-bbbb" if kind == "gpu" else f"cpu-{i}", "index": i, "kind": kind,
            "name": "NVIDIA H200" if kind == "gpu" else "CPU", "memory_total_bytes": total,
            "memory_used_bytes": used, "memory_free_bytes": total - used,
            "utilization_percent": util, "temperature_c": 41.0 if kind == "gpu" else 0.0}


def _job(job_id: str, status: str, priority: str, model_ref: str, *, reason: str | None = None,
          worker: str | None = None, pool: str | None = None) -> dict[str, Any]:
    t = now_iso()
    return {"id": job_id, "status": status, "model": "tiny", "model_ref": model_ref,
            "priority": priority, "seed": 42, "attempts": 0 if status == "queued" else 1,
            "created": int(time.time()), "created_at": t, "updated_at": t,
            "started_at": t if status == "running" else None, "finished_at": None,
            "waiting_reason": reason, "worker_id": worker, "pool_id": pool,
            "finish_reason": None, "usage": None, "error": None, "output": None, "proof": None,
            "last_seq": 1, "correlation_id": None, "events_url": f"/v2/tasks/{job_id}/events"}


class ContractStub:
    def __init__(self, mode: str = "home"):
        self.mode = mode
        self.lock = threading.Condition()
        self.facts: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.closed = False
        self.stream_generation = 0  # drop_streams() ends the open fact streams
        self.resumes: list[str | None] = []  # Last-Event-ID of each fact stream request
        self.policy_versions = [{"version": 1, "language": "builtin", "source": "",
                                 "created_at": now_iso(), "author": "system", "active": True}]
        gpu0 = _device(0, "gpu", 140 * GiB, 60 * GiB, 37.0)
        gpu1 = _device(1, "gpu", 140 * GiB, 2 * GiB, 0.0)
        self.pools: dict[str, dict[str, Any]] = {
            "local": {
                "pool_id": "local", "state": "available",
                "inventory": {"devices": [gpu0, gpu1], "nvml_status": "ok", "hostname": "box-1",
                              "cpu_count": 16, "ram_total_bytes": 128 * GiB,
                              "ram_available_bytes": 90 * GiB, "engines": ["hf", "sim"],
                              "driver_version": "570.1"},
                "workers": [{
                    "worker_id": "w-1", "pool_id": "local", "model_ref": TINY, "engine": "hf",
                    "device_ids": [gpu0["id"]], "state": "busy", "endpoint": "unix:/run/w-1",
                    "device_bytes": {gpu0["id"]: 52 * GiB}, "pid": 4242, "started_at": now_iso(),
                    "active_jobs": 1, "slots": 4, "engine_version": "4.56.0",
                    "model_digest": "abc", "last_used_at": now_iso()}],
                "last_heartbeat": now_iso(), "address": "127.0.0.1:9200",
                "models": [{"model_ref": TINY, "cached": True, "preloaded": True,
                            "size_bytes": 2 * GiB, "last_used_at": now_iso()},
                           {"model_ref": BIG, "cached": True, "preloaded": False,
                            "size_bytes": 80 * GiB, "last_used_at": None}],
                "version": "0.1.0", "provider_id": None},
            "edge": {
                "pool_id": "edge", "state": "draining",
                "inventory": {"devices": [_device(0, "cpu", 32 * GiB, 4 * GiB, 12.0)],
                              "nvml_status": "NVML library not found", "hostname": "edge-1",
                              "cpu_count": 4, "ram_total_bytes": 32 * GiB,
                              "ram_available_bytes": 20 * GiB, "engines": ["sim"],
                              "driver_version": ""},
                "workers": [], "last_heartbeat": now_iso(), "address": "127.0.0.1:9201",
                "models": [], "version": "0.1.0", "provider_id": None},
        }
        self.models = [
            {"id": "tiny", "ref": TINY, "aliases": [], "context_length": 2048, "engine": "hf",
             "created": 1700000000, "owned_by": "llama-orch", "size_bytes": 2 * GiB,
             "memory_estimate_bytes": 4 * GiB, "device_count": 1, "pinned_device_ids": [gpu0["id"]],
             "supports_logprobs": True, "supports_penalties": True},
            {"id": "big", "ref": BIG, "aliases": [], "context_length": 8192, "engine": "hf",
             "created": 1700000000, "owned_by": "llama-orch", "size_bytes": 80 * GiB,
             "memory_estimate_bytes": 120 * GiB, "device_count": 1, "pinned_device_ids": [],
             "supports_logprobs": True, "supports_penalties": True},
        ]
        self.pins = [{"model_ref": TINY, "pool_id": "local", "device_ids": [gpu0["id"]],
                      "created_at": now_iso()}]
        self.jobs: dict[str, dict[str, Any]] = {j["id"]: j for j in [
            _job("job-q1", "queued", "interactive", BIG, reason="no free memory on any device"),
            _job("job-q2", "queued", "batch", TINY, reason="quota"),
            _job("job-r1", "running", "interactive", TINY, worker="w-1", pool="local"),
        ]}
        # History: the feed shows these (before the snapshot's fact_id).
        self.publish("component.started", "listening on 127.0.0.1:50051", component="orchestrator",
                     mode=mode)
        self.publish("pool.joined", "2 devices", pool_id="local")
        self.publish("worker.ready", "ready in 812 ms", pool_id="local", worker_id="w-1",
                     model_ref=TINY)
        self.publish("job.admitted", "admitted for tiny", job_id="job-r1", model_ref=TINY,
                     priority="interactive")
        self.publish("job.dispatched", "free slot", job_id="job-r1", worker_id="w-1",
                     pool_id="local", model_ref=TINY, attempt=1, running=1, slots=4)
        self.snapshot_fact_id = self.facts[-1]["id"]

    # ---- facts ---------------------------------------------------------------------

    def publish(self, code: str, message: str = "", *, level: str = "info",
                job_id: str | None = None, pool_id: str | None = None,
                worker_id: str | None = None,
                model_ref: str | None = None, correlation_id: str | None = None,
                component: str = "orchestrator", **attributes: Any) -> dict[str, Any]:
        with self.lock:
            fact = {"id": len(self.facts) + 1, "time": now_iso(), "kind": code.replace(".", "_"),
                    "code": code, "level": level, "component": component,
                    "correlation_id": correlation_id, "message": message, "job_id": job_id,
                    "pool_id": pool_id, "worker_id": worker_id, "model_ref": model_ref,
                    "attributes": attributes}
            self.facts.append(fact)
            self.lock.notify_all()
            return fact

    def drop_streams(self) -> None:
        """End every open fact stream, as an orchestrator restart or a slow-subscriber
        drop would; clients are expected to reconnect with Last-Event-ID."""
        with self.lock:
            self.stream_generation += 1
            self.lock.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def _stream_facts(self, req: Request) -> None:
        position = req.header("Last-Event-ID") or req.query.get("after", ["0"])[0]
        after = int(position.strip() or "0")
        if after > len(self.facts):
            req.send_error(400, "resume_out_of_range", "past the last fact", "Last-Event-ID")
            return
        self.resumes.append(req.header("Last-Event-ID"))
        req.start_sse()
        sent = after
        generation = self.stream_generation
        while True:
            with self.lock:
                if self.closed or self.stream_generation != generation:
                    return
                pending = self.facts[sent:]
                if not pending:
                    self.lock.wait(1.0)
                    if self.stream_generation != generation:
                        return
                    pending = self.facts[sent:]
            if not pending:
                if not req.write(": keep-alive\n\n"):
                    return
                continue
            frames = "".join(f"id: {f['id']}\nevent: {f['code']}\ndata: {json.dumps(f)}\n\n"
                             for f in pending)
            sent += len(pending)
            if not req.write(frames):
                return

    # ---- the contract ------------------------------------------------------------------

    def handle(self, req: Request) -> bool:  # noqa: C901 - one router, read top to bottom
        m, p = req.method, req.path
        cid = req.header("X-Correlation-Id")
        body = req.json() if req.body_bytes else {}
        self.calls.append((m, p, body))
        if m == "GET" and p == "/v2/info":
            req.send_json({"mode": self.mode, "version": "0.1.0",
                           "policy_editable": self.mode != "platform"})
        elif m == "GET" and p == "/v2/cluster":
            with self.lock:
                req.send_json({
                    "fact_id": self.snapshot_fact_id, "time": now_iso(), "mode": self.mode,
                    "pools": list(self.pools.values()),
                    "queue": [{"priority": "interactive", "depth": 1},
                              {"priority": "batch", "depth": 1}],
                    "models": self.models, "pins": self.pins,
                    "active_jobs": [j for j in self.jobs.values()
                                    if j["status"] in ("queued", "dispatched", "running")]})
        elif m == "GET" and p == "/v2/events":
            self._stream_facts(req)
        elif m == "GET" and p == "/v2/tasks":
            req.send_json({"data": list(self.jobs.values()), "next_page_token": None})
        elif (match := re.fullmatch(r"/v2/tasks/([^/]+)/events", p)) and m == "GET":
            self._job_events(req, match.group(1))
        elif match := re.fullmatch(r"/v2/tasks/([^/]+)", p):
            job = self.jobs.get(match.group(1))
            if job is None:
                req.send_error(404, "not_found", f"no job {match.group(1)!r}", "job_id")
            elif m == "GET":
                req.send_json(job)
            elif m == "DELETE":
                req.send_json(job)
                job["status"] = "cancelled"
                self.publish("job.cancelled", "cancelled by the client", job_id=job["id"],
                             model_ref=job["model_ref"], correlation_id=cid, error_code="CANCELLED")
            else:
                return False
        elif m == "POST" and p == "/v2/admin/pins":
            pool = self.pools[body["pool_id"]]
            devices = body.get("device_ids") or [d["id"] for d in pool["inventory"]["devices"]]
            ref = self._ref(body["model"])
            pin = {"model_ref": ref, "pool_id": pool["pool_id"], "device_ids": devices,
                   "created_at": now_iso()}
            self.pins = [x for x in self.pins
                         if (x["model_ref"], x["pool_id"]) != (ref, pool["pool_id"])] + [pin]
            req.send_json({"pin": pin})
            self.publish("model.pinned", f"pinned to {', '.join(devices)}", pool_id=pool["pool_id"],
                         model_ref=ref, correlation_id=cid, device_ids=devices)
        elif m == "DELETE" and (match := re.fullmatch(r"/v2/admin/pins/(.+)", p)):
            ref = self._ref(match.group(1))
            pool_id = req.query.get("pool_id", [""])[0]
            gone = [x for x in self.pins
                    if x["model_ref"] == ref and (not pool_id or x["pool_id"] == pool_id)]
            self.pins = [x for x in self.pins if x not in gone]
            req.send_json({})
            for x in gone:
                self.publish("model.unpinned", "unpinned", pool_id=x["pool_id"], model_ref=ref,
                             correlation_id=cid, device_ids=x["device_ids"])
        elif m == "POST" and (match := re.fullmatch(r"/v2/admin/models/(.+):(preload|evict)", p)):
            ref = self._ref(match.group(1))
            pool_id = body.get("pool_id") or "local"
            pinned = any((x["model_ref"], x["pool_id"]) == (ref, pool_id) for x in self.pins)
            if match.group(2) == "evict" and pinned:
                req.send_error(409, "model_pinned",
                               f"the model is pinned on {pool_id}; unpin it first", "model")
                return True
            req.send_json({})
            code = "model.preloaded" if match.group(2) == "preload" else "model.evicted"
            self.publish(code, f"{ref}: {code.split('.')[1]}", pool_id=pool_id, model_ref=ref,
                         correlation_id=cid, phase=code.split(".")[1],
                         from_disk=bool(body.get("from_disk")) or None)
        elif m == "POST" and p == "/v2/admin/workers":
            pool_id = body.get("pool_id") or "local"
            pool = self.pools[pool_id]
            devices = body.get("device_ids") or [pool["inventory"]["devices"][-1]["id"]]
            worker = {"worker_id": f"w-{len(self.facts) + 100}", "pool_id": pool_id,
                      "model_ref": self._ref(body["model"]), "engine": "hf", "device_ids": devices,
                      "state": "starting", "endpoint": None, "device_bytes": {}, "pid": 0,
                      "started_at": now_iso(), "active_jobs": 0, "slots": 0, "engine_version": None,
                      "model_digest": None, "last_used_at": None}
            req.send_json({"worker": worker}, 201)
            self.publish("worker.starting", "start commanded", pool_id=pool_id,
                         worker_id=worker["worker_id"], model_ref=worker["model_ref"],
                         correlation_id=cid, device_ids=devices)

            def ready() -> None:
                time.sleep(0.3)
                self.publish("worker.ready", "ready in 300 ms", pool_id=pool_id,
                             worker_id=worker["worker_id"], model_ref=worker["model_ref"],
                             device_bytes={d: 3 * GiB for d in devices}, slots=4, pid=777)
            threading.Thread(target=ready, daemon=True).start()
        elif m == "DELETE" and (match := re.fullmatch(r"/v2/admin/workers/([^/]+)", p)):
            wid = match.group(1)
            req.send_json({})
            self.publish("worker.stopped", "stopped", pool_id="local", worker_id=wid,
                         correlation_id=cid)
        elif m == "POST" and (match := re.fullmatch(r"/v2/admin/pools/([^/]+):drain", p)):
            pool = self.pools[match.group(1)]
            drain = body.get("drain", True)
            pool["state"] = "draining" if drain else "available"
            req.send_json({"pool": pool})
            self.publish("pool.draining", "draining" if drain else "undrained",
                         pool_id=pool["pool_id"], correlation_id=cid, draining=drain)
        elif p.startswith("/v2/admin/policy"):
            return self._policy(req, m, p, body, cid)
        elif m == "GET" and p == "/v1/models":
            req.send_json({"object": "list", "data": [
                {"id": x["id"], "object": "model", "created": x["created"],
                 "owned_by": "llama-orch"}
                for x in self.models]})
        elif m == "POST" and p == "/v1/chat/completions":
            self._chat(req, body)
        else:
            return False
        return True

    def _ref(self, model: str) -> str:
        return next((x["ref"] for x in self.models if model in (x["id"], x["ref"])), model)

    def _policy(self, req: Request, m: str, p: str, body: Any, cid: str | None) -> bool:
        editable = self.mode != "platform"
        active = next(v for v in self.policy_versions if v["active"])
        if m == "GET" and p == "/v2/admin/policy":
            req.send_json({"active": active, "editable": editable, "mode": self.mode})
        elif m == "GET" and p == "/v2/admin/policy/versions":
            req.send_json({"versions": self.policy_versions})
        elif m == "POST" and p == "/v2/admin/policy:validate":
            problems = self._problems(body.get("source", ""))
            req.send_json({"ok": not problems, "problems": problems})
        elif m == "POST" and p == "/v2/admin/policy:dry-run":
            problems = self._problems(body.get("source", ""))
            wait = {"action": "wait", "job_id": "job-q1", "worker_id": None, "pool_id": None,
                    "model_ref": BIG, "device_ids": [], "reason": "no free memory on any device",
                    "rejected": None}
            start = {"action": "start_worker", "job_id": None, "worker_id": None,
                     "pool_id": "local",
                     "model_ref": BIG, "device_ids": ["GPU-1aaaa-bbbb"], "reason": "lua: start one",
                     "rejected": None}
            req.send_json({"policy_decisions": [] if problems else [start],
                           "builtin_decisions": [wait], "problems": problems,
                           "policy_ms": 0.42, "builtin_ms": 0.05})
        elif m == "POST" and p == "/v2/admin/policy:activate":
            if not editable:
                req.send_error(403, "policy_forbidden",
                               "platform mode runs the built-in policy only")
                return True
            if "version" in body:
                chosen = next((v for v in self.policy_versions
                               if v["version"] == body["version"]), None)
                if chosen is None:
                    req.send_error(404, "not_found", f"no policy version {body['version']}",
                                   "version")
                    return True
                language, source = chosen["language"], chosen["source"]
            elif body.get("builtin"):
                language, source = "builtin", ""
            else:
                if problems := self._problems(body.get("source", "")):
                    req.send_error(400, "policy_invalid", problems[0]["message"], "source")
                    return True
                language, source = "lua", body["source"]
            for v in self.policy_versions:
                v["active"] = False
            new = {"version": len(self.policy_versions) + 1, "language": language, "source": source,
                   "created_at": now_iso(), "author": "admin", "active": True}
            self.policy_versions.append(new)
            req.send_json({"active": new})
            self.publish("policy.changed", f"version {new['version']} ({language}) active",
                         correlation_id=cid, version=new["version"], language=language)
        else:
            return False
        return True

    @staticmethod
    def _problems(source: str) -> list[dict[str, Any]]:
        for i, line in enumerate(source.splitlines(), 1):
            if "syntax error" in line:
                return [{"line": i, "message": "'=' expected near 'error'"}]
        return []

    def _job_events(self, req: Request, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            req.send_error(404, "not_found", f"no job {job_id!r}", "job_id")
            return
        req.start_sse()
        t = now_iso()
        events = [("queued", {"priority": job["priority"], "reason": None}),
                  ("dispatched", {"worker_id": "w-1", "pool_id": "local", "attempt": 1}),
                  ("started", {"prompt_tokens": 5, "model_ref": job["model_ref"], "attempt": 1,
                               "seed": 42})]
        for i, text in enumerate(["Once", " upon", " a time"]):
            events.append(("tokens", {"choice_index": 0, "text": text, "token_ids": [i + 1],
                                      "logprobs": None}))
        if job["status"] in ("running", "queued"):
            events = events[:1] if job["status"] == "queued" else events
        else:
            events.append(("end", {"choice_index": 0, "finish_reason": "stop",
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 4,
                                             "total_tokens": 9},
                                   "proof": None}))
        for seq, (kind, data) in enumerate(events, 1):
            frame = {"job_id": job_id, "seq": seq, "time": t, **data}
            if not req.write(f"id: {seq}\nevent: {kind}\ndata: {json.dumps(frame)}\n\n"):
                return
        # A live job's stream stays open (until the test ends).
        while job["status"] in ("running", "queued") and not self.closed:
            time.sleep(0.2)
            if not req.write(": keep-alive\n\n"):
                return

    def _chat(self, req: Request, body: Any) -> None:
        if not any(x["id"] == body.get("model") for x in self.models):
            req.send_error(404, "model_not_found", f"no model {body.get('model')!r}", "model")
            return
        req.start_sse()
        cid = "chatcmpl-job-chat1"
        words = ["Hello", " from", " the", " stub", "."]
        chunks = [{"role": "assistant", "content": ""}] + [{"content": w} for w in words]
        for delta in chunks + [{"content": " More"}] * (40 if body.get("max_tokens") == 999 else 0):
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": 1,
                     "model": body["model"], "usage": None,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if not req.write(f"data: {json.dumps(chunk)}\n\n"):
                return
            time.sleep(0.1)
        end = {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}
        usage = {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                 "choices": [],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
        req.write(f"data: {json.dumps(end)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n")
